"""The bar on the digits sample: prune 0.5 + distill, int8, through the CLI;
then the saved pruned model reloads in a fresh process and exports again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

UNPRUNED_FLOAT_ACCURACY = 99.17  # the committed digits weights on eval.npz (README table)


@pytest.fixture(scope="module")
def pruned_build(run_cli, digits_app, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pruned") / "digits-rpi4"
    proc = run_cli("build", str(digits_app), "--target", "rpi4", "--prune", "0.5", "--distill",
                   "--distill-epochs", "6", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    manifest["_stderr"], manifest["_out"] = proc.stderr, out
    return manifest


def _step(manifest: dict, stage: str) -> dict:
    return next(s for s in manifest["steps"] if s["stage"] == stage)


def test_prune_distill_cuts_macs_and_keeps_int8_accuracy(pruned_build):
    before, pruned, distilled = (_step(pruned_build, s) for s in ("measure", "prune", "distill"))
    assert pruned["macs"] <= 0.55 * before["macs"]  # >= 45 % of the MACs gone
    assert pruned["params"] < before["params"]
    assert pruned["config"]["round_to"] == pruned_build["target_profile"]["round_to"] == 8
    assert before["accuracy_float"] == pytest.approx(UNPRUNED_FLOAT_ACCURACY, abs=0.01)
    # pruning alone hurts; distillation from the unpruned teacher brings it back
    assert distilled["accuracy_float"] > pruned["accuracy_float"]
    assert distilled["result"]["processes"] == 1 and distilled["result"]["history"]
    assert pruned_build["metrics"]["accuracy_artifact"] >= UNPRUNED_FLOAT_ACCURACY - 1.5
    # the artifact was made from the pruned model: parity is measured against it
    assert pruned_build["metrics"]["accuracy_float"] == distilled["accuracy_float"]
    assert "MACs 2,409,738 -> " in pruned_build["_stderr"]
    # half the channels is three quarters of the MACs here, and the build says so
    removed = round(100 * (1 - pruned["macs"] / before["macs"]))
    assert pruned["macs_removed"] == pytest.approx(1 - pruned["macs"] / before["macs"], abs=1e-4) and removed > 70
    said = " ".join(pruned_build["_stderr"].split())
    assert f"--prune 0.5: 50 % of channels -> {removed} % of MACs removed" in said
    assert "--prune-macs 0.5 would keep 50 % of them" in said


@pytest.mark.slow  # a second build in a fresh process (~30 s); the pruned build itself runs by default
def test_pruned_model_reloads_in_a_fresh_process_and_exports_again(pruned_build, digits_app, tmp_path):
    """float_model.pt2 needs no model code; float_model.pt is rebuilt through the app's factory."""
    out = pruned_build["_out"]
    script = textwrap.dedent(f"""
        import json, numpy as np, torch
        from edgekit.model.app import build_module, load_app
        from edgekit.formats import get_format
        from edgekit.formats.base import QuantConfig
        from edgekit.model.data import batches, load_npz
        from edgekit.model.saved import load_transformed

        spec = load_app({str(digits_app)!r})
        program = torch.export.load({str(out / 'float_model.pt2')!r}).module()
        rebuilt = load_transformed(build_module(spec), {str(out / 'float_model.pt')!r})
        x = torch.from_numpy(np.load({str(digits_app / 'eval.npz')!r})["x"][:16])
        # the program keeps the build's static batch of 1
        same = all(torch.allclose(program(x[i:i + 1]), rebuilt(x[i:i + 1]), atol=1e-5) for i in range(len(x)))
        backend = get_format("executorch")
        calib = load_npz(spec.calib, spec.inputs, "--calib", need_labels=False).take(32)
        cfg = QuantConfig(input_names=("x",))
        q = backend.quantize(program, (x[:1],), batches(calib, spec.inputs), cfg)
        backend.export(q, (x[:1],), {str(tmp_path / 'again.pte')!r})
        runner = backend.load({str(tmp_path / 'again.pte')!r})
        y = runner.run([x[:1].numpy()])[0]
        print(json.dumps({{"same": same, "convs": [m.out_channels for m in rebuilt.modules()
                          if isinstance(m, torch.nn.Conv2d)], "shape": list(y.shape),
                          "agree": int(y.argmax(-1)[0]) == int(program(x[:1]).argmax(-1)[0])}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"] and result["agree"]
    assert result["shape"] == [1, 10]
    assert result["convs"] == [16, 32, 64]  # the pruned widths, not the factory's 32/64/128
