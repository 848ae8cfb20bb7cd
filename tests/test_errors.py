"""Each user mistake: exit code 2, a message naming the thing and the fix, no traceback,
and no build directory left behind (or an older one left intact)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

GOOD_NET = "from torch import nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))\n"


def _assert_user_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def _no_build_left(root) -> None:
    """Neither a finished-looking build nor a staging dir may remain."""
    assert not (root / "out").exists()
    assert [p.name for p in root.iterdir() if ".partial" in p.name] == []


def test_unknown_target_lists_the_known_ones(run_cli, tmp_path):
    proc = run_cli("build", "sample_apps/digits", "--target", "rpi9", "--out", str(tmp_path / "out"))
    _assert_user_error(proc, "unknown target 'rpi9'", "rpi4", "rpi5", "pi-zero2", "android-arm64")
    _no_build_left(tmp_path)


def test_missing_app_dir(run_cli, tmp_path):
    proc = run_cli("build", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    _assert_user_error(proc, "nope", "does not exist", "--model")
    _no_build_left(tmp_path)


def test_model_module_that_does_not_import(run_cli, tmp_path):
    proc = run_cli("build", "--model", "not_a_module_xyz:make", "--input-shape", "1,4", "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "not_a_module_xyz", "cannot import", "PYTHONPATH")
    _no_build_left(tmp_path)


def test_model_module_with_a_broken_import(run_cli, tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('half-finished edit')\n")
    proc = run_cli("build", "--model", "broken:make", "--input-shape", "1,4", "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "broken", "half-finished edit")
    _no_build_left(tmp_path)


def test_factory_missing_from_module(run_cli, tmp_path):
    (tmp_path / "nets.py").write_text(GOOD_NET)
    proc = run_cli("build", "--model", "nets:does_not_exist", "--input-shape", "1,3,4", "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "no callable 'does_not_exist'")
    _no_build_left(tmp_path)


def test_input_shape_the_model_rejects(run_cli, tmp_path):
    (tmp_path / "nets.py").write_text(GOOD_NET)  # takes 12 features after flatten
    proc = run_cli("build", "--model", "nets:make", "--input-shape", "1,3,5", "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "rejected inputs", "(1, 3, 5)", "--input-shape")
    _no_build_left(tmp_path)


def test_model_without_input_shape(run_cli, tmp_path):
    (tmp_path / "nets.py").write_text(GOOD_NET)
    proc = run_cli("build", "--model", "nets:make", "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "--input-shape")


def test_calibration_file_of_the_wrong_shape(run_cli, tmp_path):
    (tmp_path / "nets.py").write_text(GOOD_NET)
    np.savez(tmp_path / "calib.npz", x=np.zeros((10, 3, 5), np.float32))
    proc = run_cli("build", "--model", "nets:make", "--input-shape", "1,3,4", "--calib", "calib.npz",
                   "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "--calib", "calib.npz", "(10, 3, 5)", "(3, 4)")
    _no_build_left(tmp_path)


@pytest.mark.slow  # a build (~20 s)
def test_eval_file_without_labels_is_judged_against_float(run_cli, tmp_path):
    """Unlabelled evaluation data is real data: the artifact is compared with the float model on it."""
    (tmp_path / "nets.py").write_text(GOOD_NET)
    x = np.random.default_rng(0).normal(size=(10, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calib.npz", x=x[::-1])
    proc = run_cli("build", "--model", "nets:make", "--input-shape", "1,3,4", "--calib", "calib.npz",
                   "--eval", "eval.npz", "--out", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)["metrics"]
    assert m["data"] == {"source": str(tmp_path / "eval.npz"), "samples": 10, "held_out": True, "labels": False}
    assert m["accuracy_float"] is None and m["cosine"] > 0.99 and m["top1_agreement"] is not None


def test_weights_of_another_model(run_cli, digits_app, tmp_path):
    (tmp_path / "nets.py").write_text(GOOD_NET)
    proc = run_cli("build", "--model", "nets:make", "--input-shape", "1,3,4", "--weights",
                   str(digits_app / "weights.pt"), "--out", "out", cwd=tmp_path)
    _assert_user_error(proc, "weights.pt", "does not match the model")
    _no_build_left(tmp_path)


def test_bad_input_option(run_cli):
    proc = run_cli("build", "--model", "m:f", "--input", "ids-1x16")
    _assert_user_error(proc, "--input", "NAME:SHAPE")


def test_failure_after_staging_leaves_the_old_build_intact(run_cli, tmp_path):
    """The model can't be captured by torch.export, which is found only inside quantize:
    by then the staging dir exists. It must vanish, and an earlier build must survive."""
    (tmp_path / "dyn.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn
        class DataDependent(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
            def forward(self, x):
                n = int(x.sum().item() > 0) + 1   # shape depends on the data
                return self.fc(x).repeat(n, 1)
        def make():
            return DataDependent()
        """
    ))
    old = tmp_path / "out"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"marker": "older build"}))
    proc = run_cli("build", "--model", "dyn:make", "--input-shape", "1,4", "--out", "out", cwd=tmp_path)
    assert proc.returncode in (1, 2), proc.stderr  # whatever the cause, it is reported, not crashed through
    assert "Traceback" not in proc.stderr
    assert json.loads((old / "manifest.json").read_text()) == {"marker": "older build"}
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_the_traceback(run_cli, tmp_path, flag):
    proc = run_cli(flag, "build", "--model", "not_a_module_xyz:make", "--input-shape", "1,4", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
