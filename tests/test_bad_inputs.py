"""Bad input and faults, as a careless or hostile user would bring them, one row each.

Every row runs the CLI as a user does and checks the documented exit code, a phrase the message
must contain (naming the file or flag and the fix), that no traceback leaks, and what must (not) be
on disk afterwards. Exit codes: 2 usage, input or environment error; 3 a gate failed; 4 a device.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import DIGITS_APP

NET = "from torch import nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))\n"
NAN_NET = textwrap.dedent("""
    import torch
    from torch import nn
    class Nan(nn.Module):
        def forward(self, x):
            return x.flatten(1) * float("nan")
    def make():
        return Nan()
""")
MARKER = "PWNED-marker"


@dataclass
class Case:
    id: str
    setup: Callable[[Path, "Env"], list[str]]  # writes its files under tmp; returns the argv after `edgekit`
    code: int
    phrases: tuple[str, ...]
    after: Callable[[Path, "Env"], None] | None = None  # what must (not) be on disk afterwards
    absent: tuple[str, ...] = ()  # phrases that must NOT appear (dangerous advice, internals)
    root: bool = False  # needs root (mounts)


@dataclass
class Env:
    tmp: Path
    build: Path  # a private copy of the digits rpi4 build
    device_dir: Path = field(default=None)  # where `--device local` deploys go
    proc: subprocess.CompletedProcess | None = None  # the run, for checks afterwards

    def manifest(self) -> dict:
        return json.loads((self.build / "manifest.json").read_text())

    def write_manifest(self, doc) -> None:
        from conftest import DELIBERATELY_INVALID

        (self.build / DELIBERATELY_INVALID).write_text("this test writes a broken manifest on purpose\n")
        (self.build / "manifest.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


# ---------------------------------------------------------------- helpers the rows share


def _net(t: Path, text: str = NET, name: str = "nets") -> None:
    (t / f"{name}.py").write_text(text)


def _npz(t: Path, name: str, **arrays) -> str:
    np.savez(t / name, **arrays)
    return name


def _model(*extra: str) -> list[str]:
    return ["build", "--model", "nets:make", "--input-shape", "1,3,4", "--out", "out", *extra]


def _digits(*extra: str) -> list[str]:
    return ["build", str(DIGITS_APP), "--out", "out", *extra]


def _x(n=8, shape=(1, 8, 8)):
    return np.random.default_rng(0).random((n, *shape)).astype(np.float32)


def _nan_calib(t, e):
    x = _x()
    x[3, 0, 2, 5] = np.nan
    return _digits("--calib", _npz(t, "calib.npz", x=x))


def _inf_calib(t, e):
    x = _x()
    x[1, 0, 0, 0] = np.inf
    return _digits("--calib", _npz(t, "calib.npz", x=x))


def _nan_eval(t, e):
    x = _x()
    x[0, 0, 7, 7] = np.nan
    return _digits("--eval", _npz(t, "eval.npz", x=x, y=np.zeros(8, np.int64)))


def _labels(y):
    return lambda t, e: _digits("--eval", _npz(t, "eval.npz", x=_x(len(y)), y=np.array(y, dtype=np.int64)))


def _weights(make):
    def setup(t, e):
        _net(t)
        make(t / "w.pt")
        return _model("--weights", "w.pt")
    return setup


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _app(toml: str, files: dict | None = None):
    def setup(t, e):
        app = t / "app"
        app.mkdir()
        (app / "edgekit.toml").write_text(toml)
        (app / "model.py").write_text(NET)
        for name, content in (files or {}).items():
            (app / name).write_bytes(content) if isinstance(content, bytes) else (app / name).write_text(content)
        return ["build", str(app), "--out", "out"]
    return setup


APP_TOML = 'name = "a"\n[model]\nfactory = "model:make"\n[[inputs]]\nname = "x"\nshape = [1, 3, 4]\n'


def _manifest_edit(change):
    def setup(t, e):
        doc = e.manifest()
        change(doc, e)
        e.write_manifest(doc)
        return ["validate", str(e.build), "--check", "parity"]
    return setup


def _set_artifact(path: str, real_file: Path | None = None, only_top: bool = False):
    """Point the manifest's artifact entries at `path`, with the real sha256 of the file it reaches."""
    from edgekit.manifest import sha256_file

    def change(doc, e):
        target = real_file or Path(path)
        digest = sha256_file(target) if target.is_file() else "0" * 64
        records = [doc["artifact"]] + ([] if only_top else [doc["formats"]["executorch"]["artifact"]])
        for rec in records:
            rec.update(file=path, sha256=digest)
    return change


def _secret(t: Path) -> Path:
    secret = t / "secret.txt"
    secret.write_text("the host's secret\n")
    return secret


def _symlinked_artifact(t, e):
    secret = _secret(t)
    (e.build / "model.pte").unlink()
    (e.build / "model.pte").symlink_to(secret)
    from edgekit.manifest import sha256_file

    doc = e.manifest()
    for rec in (doc["artifact"], doc["formats"]["executorch"]["artifact"]):
        rec["sha256"] = sha256_file(secret)
    e.write_manifest(doc)
    return ["deploy", str(e.build), "--device", "local", "--remote-dir", str(e.device_dir)]


def _escape_for(command: str, rel: str):
    def setup(t, e):
        secret = _secret(t)
        _set_artifact(rel, secret)(doc := e.manifest(), e)
        e.write_manifest(doc)
        if command == "deploy":
            return ["deploy", str(e.build), "--device", "local", "--remote-dir", str(e.device_dir)]
        if command == "report":
            return ["report", str(e.build), "--no-html"]
        return ["validate", str(e.build)]
    return setup


def _nothing_sent(t, e):
    assert not e.device_dir.exists() or not any(e.device_dir.rglob("*")), list(e.device_dir.rglob("*"))


def _manifest_unchanged(t, e):
    assert "validation" not in e.manifest() or e.manifest()["validation"].get("by") == "build"


def _no_build(t, e):
    assert not (t / "out").exists()
    assert [p.name for p in t.iterdir() if ".partial" in p.name] == []


def _runs_inputs(make):
    def setup(t, e):
        make(t)
        return ["deploy", str(e.build), "--device", "local", "--remote-dir", str(e.device_dir), "--bench",
                "--runs", "1", "--warmup", "0", "--inputs", str(t / "inputs.npz")]
    return setup


def _disk_full(t, e):
    """The build dir on a 64 KB tmpfs: the 100 KB artifact does not fit."""
    mount = t / "small"
    mount.mkdir()
    return ["__mount__", "size=64k", str(mount), "build", str(DIGITS_APP), "--out", str(mount / "out")]


def _read_only(t, e):
    mount = t / "ro"
    mount.mkdir()
    return ["__mount__", "ro,size=64k", str(mount), "build", str(DIGITS_APP), "--out", str(mount / "out")]


def _mount_left_empty(t, e):
    """Listed inside the namespace before it went away: no staging dir, no temp file, no build."""
    left = e.proc.stdout.rsplit("LEFT:", 1)[1].split()
    assert left == [], left


CASES = [
    # --- what to build
    Case("nothing-to-build", lambda t, e: ["build"], 2, ("nothing to build", "--model")),
    Case("app-dir-missing", lambda t, e: ["build", str(t / "nope"), "--out", "out"], 2, ("does not exist",), _no_build),
    Case("app-dir-without-toml", lambda t, e: (t.joinpath("empty").mkdir(), ["build", str(t / "empty")])[1], 2,
         ("has no edgekit.toml",)),
    Case("toml-invalid", _app("name = [\n"), 2, ("not valid TOML",), _no_build),
    Case("toml-unknown-key", _app("colour = 'red'\n" + APP_TOML), 2, ("unknown key 'colour'",), _no_build),
    Case("toml-missing-factory", _app('[model]\nweights = "w.pt"\n[[inputs]]\nshape = [1, 4]\n'), 2,
         ("missing 'model.factory'",)),
    Case("toml-bad-task", _app(APP_TOML.replace('factory = "model:make"', 'factory = "model:make"\ntask = "vibes"')), 2,
         ("unknown task 'vibes'",)),
    Case("toml-calib-missing-names-the-key", _app(APP_TOML + '[data]\ncalib = "calib.npz"\n'), 2,
         ("data.calib in", "edgekit.toml", "does not exist"), _no_build, absent=("--calib:",)),
    Case("model-spec-without-colon", lambda t, e: ["build", "--model", "nocolon", "--input-shape", "1,4"], 2,
         ("is not MODULE:FACTORY",)),
    Case("model-module-missing", lambda t, e: _model()[:2] + ["xyz_nope:make"] + _model()[3:], 2, ("cannot import",)),
    Case("factory-returns-non-module", lambda t, e: (_net(t, "def make():\n    return 42\n"), _model())[1], 2,
         ("not a torch.nn.Module",)),
    Case("factory-raises", lambda t, e: (_net(t, "def make():\n    raise ValueError('no GPU')\n"), _model())[1], 2,
         ("raised ValueError: no GPU",)),
    Case("input-shape-x-typo", lambda t, e: ["build", "--model", "m:f", "--input-shape", "1,x,1,8,8"], 2,
         ("'1,x,1,8,8' is not a shape",)),
    Case("input-shape-x-short", lambda t, e: ["build", "--model", "m:f", "--input-shape", "1,x,8"], 2, ("is not a shape",)),
    Case("input-shape-zero", lambda t, e: ["build", "--model", "m:f", "--input-shape", "0,3"], 2, ("is not a shape",)),
    Case("input-shape-spaces", lambda t, e: ["build", "--model", "m:f", "--input-shape", "1 3 4"], 2, ("is not a shape",)),
    Case("input-bad-form", lambda t, e: ["build", "--model", "m:f", "--input", "ids-1x16"], 2, ("NAME:SHAPE",)),
    Case("input-bad-dtype", lambda t, e: ["build", "--model", "m:f", "--input", "ids:1x16:int7"], 2, ("unknown dtype 'int7'",)),
    Case("input-shape-and-input", lambda t, e: ["build", "--model", "m:f", "--input-shape", "1,4", "--input", "a:1x4"], 2,
         ("were both given",)),
    Case("input-name-twice", lambda t, e: ["build", "--model", "m:f", "--input", "a:1x4", "--input", "a:1x4"], 2,
         ("given twice",)),
    Case("shape-the-model-rejects", lambda t, e: (_net(t), ["build", "--model", "nets:make", "--input-shape", "1,3,5"])[1],
         2, ("rejected inputs", "--input-shape")),
    # --- weights
    Case("weights-missing", lambda t, e: (_net(t), _model("--weights", "nope.pt"))[1], 2, ("does not exist",)),
    Case("weights-random-bytes", _weights(lambda p: p.write_bytes(os.urandom(4096))), 2,
         ("is not a file torch.save wrote", "torch.save(model.state_dict(), path)"), _no_build,
         absent=("weights_only=False", "refused to unpickle")),
    Case("weights-empty-file", _weights(lambda p: p.write_bytes(b"")), 2, ("is not a file torch.save wrote",)),
    Case("weights-whole-model", _weights(lambda p: torch.save(torch.nn.Linear(12, 3), p)), 2,
         ("holds a whole pickled model (torch.nn.modules.linear.Linear)", "state_dict"), absent=("weights_only=False",)),
    Case("weights-code-running-pickle", _weights(lambda p: torch.save({"a": _Evil()}, p)), 2,
         ("pickled Python object", "nothing in the file ran"),
         lambda t, e: (_no_build(t, e), _assert_absent(t / MARKER)), absent=("weights_only=False",)),
    Case("weights-of-another-model", lambda t, e: (_net(t), _model("--weights", str(DIGITS_APP / "weights.pt")))[1], 2,
         ("does not match the model",)),
    # --- data
    Case("calib-missing", lambda t, e: _digits("--calib", "nope.npz"), 2, ("--calib: ", "does not exist"), _no_build),
    Case("calib-not-npz", lambda t, e: ((t / "c.npz").write_text("x,y\n1,2\n"), _digits("--calib", "c.npz"))[1], 2,
         ("not a readable .npz",)),
    Case("calib-no-such-array", lambda t, e: _digits("--calib", _npz(t, "c.npz", images=_x())), 2, ("has no array 'x'",)),
    Case("calib-wrong-shape", lambda t, e: _digits("--calib", _npz(t, "c.npz", x=_x(shape=(1, 9, 9)))), 2, ("has shape",)),
    Case("calib-nan", _nan_calib, 2, ("non-finite", "index [3, 0, 2, 5]", "calib.npz"), _no_build),
    Case("calib-inf", _inf_calib, 2, ("non-finite", "inf"), _no_build),
    Case("calib-object-array", lambda t, e: _digits("--calib", _npz(t, "c.npz", x=np.array([{"a": 1}] * 8, dtype=object))), 2,
         ("not a readable .npz",)),
    Case("eval-nan", _nan_eval, 2, ("--eval", "non-finite", "index [0, 0, 7, 7]"), _no_build),
    Case("eval-label-too-big", _labels([0, 1, 99, 2, 3, 4, 5, 6]), 2, ("outside 0..9", "99 at sample 2"), _no_build),
    Case("eval-label-negative", _labels([0, -3, 1, 2, 3, 4, 5, 6]), 2, ("outside 0..9", "-3 at sample 1")),
    Case("eval-labels-float", lambda t, e: _digits("--eval", _npz(t, "e.npz", x=_x(), y=np.zeros(8))), 2,
         ("must be 1-D integer class labels",)),
    Case("eval-count-mismatch", lambda t, e: _digits("--eval", _npz(t, "e.npz", x=_x(), y=np.zeros(5, np.int64))), 2,
         ("different numbers of samples",)),
    Case("eval-empty", lambda t, e: _digits("--eval", _npz(t, "e.npz", x=_x(0))), 2, ("holds no samples",)),
    Case("float-model-computes-nan", lambda t, e: (_net(t, NAN_NET), _model())[1], 2, ("non-finite values",), _no_build),
    # --- options
    Case("format-unknown", lambda t, e: _digits("--format", "coreml"), 2, ("'coreml' is not one of",)),
    Case("fp16-on-rpi4", lambda t, e: _digits("--quant", "fp16"), 2, ("no fp16 arithmetic",)),
    Case("calibration-ptl-percentile", lambda t, e: _digits("--format", "torchscript-lite", "--calibration", "percentile"),
         2, ("torchscript-lite offers",)),
    Case("calib-samples-zero", lambda t, e: _digits("--calib-samples", "0"), 2, ("must be a positive number",)),
    Case("max-drop-negative", lambda t, e: _digits("--max-accuracy-drop", "-1"), 2, ("0 or more points",)),
    Case("max-drop-without-labels", lambda t, e: _digits("--eval", _npz(t, "e.npz", x=_x()), "--max-accuracy-drop", "1"), 2,
         ("needs labelled evaluation data",)),
    Case("min-cosine-out-of-range", lambda t, e: _digits("--min-cosine", "2"), 2, ("between -1 and 1",)),
    Case("min-agreement-out-of-range", lambda t, e: _digits("--min-agreement", "150"), 2, ("between 0 and 100",)),
    Case("task-unknown", lambda t, e: _digits("--task", "vibes"), 2, ("'vibes' is not one of",)),
    Case("target-unknown", lambda t, e: _digits("--target", "rpi9"), 2, ("unknown target 'rpi9'", "rpi4")),
    Case("target-file-invalid", lambda t, e: ((t / "b.toml").write_text("cores = 'four'\n"), _digits("--target", "b.toml"))[1],
         2, ("b.toml",)),
    Case("out-is-a-file", lambda t, e: ((t / "out").write_text("x"), _digits())[1], 2, ("'--out': Directory 'out' is a file",)),
    Case("distill-without-train", lambda t, e: (_net(t), _model("--distill"))[1], 2, ("needs training data",)),
    Case("nproc-without-training", lambda t, e: _digits("--nproc", "2", "--quality", "fast"), 2, ("applies to training",)),
    Case("disk-full", _disk_full, 2, ("no space left writing", "small/out", "MB free in", "free some space there"),
         _mount_left_empty, root=True),
    Case("read-only-out", _read_only, 2, ("read-only file system", "--out"), _mount_left_empty, root=True),
    # --- build directories received from elsewhere: validate
    Case("validate-not-a-build", lambda t, e: ["validate", str(t)], 2, ("is not a build directory",)),
    Case("validate-invalid-json", lambda t, e: (e.write_manifest("{not json"), ["validate", str(e.build)])[1], 2,
         ("invalid JSON",)),
    Case("validate-json-list", lambda t, e: (e.write_manifest("[1, 2]"), ["validate", str(e.build)])[1], 2,
         ("'the document' must be an object",)),
    Case("validate-json-empty-object", lambda t, e: (e.write_manifest("{}"), ["validate", str(e.build)])[1], 2,
         ("'name' must be a string",)),
    Case("validate-nan-in-manifest", lambda t, e: (e.write_manifest(json.dumps(e.manifest()).replace('"cosine": 0.', '"cosine": NaN, "x": 0.', 1)),
                                                   ["validate", str(e.build)])[1], 2, ("NaN is not JSON",)),
    Case("validate-artifact-absolute", _escape_for("validate", "/etc/passwd"), 2, ("leaves the build directory",),
         _manifest_unchanged),
    Case("validate-artifact-dotdot", _escape_for("validate", "../../secret.txt"), 2, ("leaves the build directory",),
         _manifest_unchanged),
    Case("validate-top-artifact-escape", _manifest_edit(_set_artifact("../../../../etc/passwd", Path("/etc/passwd"), only_top=True)), 2,
         ("artifact.file", "leaves the build directory"), _manifest_unchanged, absent=("✓ sha256",)),
    Case("validate-sha-mismatch", _manifest_edit(lambda d, e: d["formats"]["executorch"]["artifact"].update(sha256="0" * 64)),
         2, ("does not match its sha256",)),
    Case("validate-artifact-missing", lambda t, e: ((e.build / "model.pte").unlink(), ["validate", str(e.build)])[1], 2,
         ("is missing",)),
    Case("validate-code-inside-build", _manifest_edit(lambda d, e: d["model"].update(source=str(e.build / "edgekit.toml"))),
         2, ("inside the build directory", "--app")),
    Case("validate-unknown-check", lambda t, e: ["validate", str(e.build), "--check", "vibes"], 2, ("no such check",)),
    Case("validate-unknown-format", lambda t, e: ["validate", str(e.build), "--format", "onnx"], 2, ("has no such artifact",)),
    Case("validate-emulate-x86-target", lambda t, e: ["validate", str(e.build), "--emulate", "--target", "host"], 2,
         ("target host is x86_64",)),
    # --- report
    Case("report-not-a-build", lambda t, e: ["report", str(t)], 2, ("is not a build directory",)),
    Case("report-empty-object", lambda t, e: (e.write_manifest("{}"), ["report", str(e.build)])[1], 2,
         ("not an edgekit manifest",)),
    Case("report-json-list", lambda t, e: (e.write_manifest("[1]"), ["report", str(e.build)])[1], 2, ("must be an object",)),
    Case("report-artifact-escape", _escape_for("report", "/etc/passwd"), 2, ("leaves the build directory",)),
    Case("report-run-record-escape",
         lambda t, e: (e.write_manifest({**e.manifest(), "device_runs": [{"device": "pi", "file": "/etc/passwd"}]}),
                       ["report", str(e.build)])[1], 2, ("device_runs[0].file", "leaves the build directory")),
    # --- deploy and bench
    Case("deploy-no-device", lambda t, e: ["deploy", str(e.build)], 2, ("no device given",)),
    Case("deploy-bad-device", lambda t, e: ["deploy", str(e.build), "--device", "pi@"], 2, ("pi@",)),
    Case("deploy-device-twice", lambda t, e: ["deploy", str(e.build), "--device", "local", "--device", "local"], 2,
         ("device given twice",)),
    Case("deploy-artifact-escape", _escape_for("deploy", "../../secret.txt"), 2, ("leaves the build directory",),
         _nothing_sent),
    Case("deploy-artifact-absolute", _escape_for("deploy", "/etc/passwd"), 2, ("leaves the build directory",),
         _nothing_sent),
    Case("deploy-artifact-symlink-out", _symlinked_artifact, 2, ("outside the build directory",), _nothing_sent),
    Case("deploy-inputs-missing", lambda t, e: ["deploy", str(e.build), "--device", "local", "--bench", "--inputs",
                                                str(t / "nope.npz")], 2, ("--inputs", "not found")),
    Case("deploy-inputs-wrong-shape", _runs_inputs(lambda t: np.savez(t / "inputs.npz", x=np.zeros((1, 3, 32, 32), np.float32))),
         2, ("inputs.npz", "has shape [1, 3, 32, 32], the model takes [1, 1, 8, 8]"), _nothing_sent),
    Case("deploy-inputs-wrong-name", _runs_inputs(lambda t: np.savez(t / "inputs.npz", input_ids=np.zeros((1, 16)))), 2,
         ("inputs.npz", "no array named 'x'"), _nothing_sent),
    Case("deploy-inputs-not-numpy", _runs_inputs(lambda t: (t / "inputs.npz").write_text("hello")), 2,
         ("inputs.npz", "cannot load"), _nothing_sent),
    Case("deploy-threads-zero", lambda t, e: ["deploy", str(e.build), "--device", "local", "--bench", "--threads", "0"], 2,
         ("--threads must be at least 1",)),
    Case("deploy-native-runner-missing", lambda t, e: ["deploy", str(e.build), "--device", "local", "--native-runner",
                                                       str(t / "executor_runner")], 2, ("no such file",)),
    Case("deploy-format-not-built", lambda t, e: ["deploy", str(e.build), "--device", "local", "--format", "onnx"], 2,
         ("has no onnx artifact",)),
    Case("bench-not-a-build", lambda t, e: ["bench", str(t)], 2, ("is not a build directory",)),
    Case("bench-inputs-wrong-shape", lambda t, e: (np.savez(t / "in.npz", x=np.zeros((2, 5))),
                                                   ["bench", str(e.build), "--inputs", str(t / "in.npz")])[1], 2,
         ("in.npz", "the model takes [1, 1, 8, 8]")),
    Case("targets-show-unknown", lambda t, e: ["targets", "show", "pdp11"], 2, ("unknown target 'pdp11'",)),
]


def _assert_absent(path: Path) -> None:
    assert not path.exists(), f"{path} exists: code in the weights file ran"


def test_the_table_has_at_least_sixty_rows():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}
    if argv[0] == "__mount__":  # a private mount namespace: the tmpfs goes away with the process
        options, mount, rest = argv[1], argv[2], argv[3:]
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "edgekit", *rest])
        script = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(mount)} || exit 99; {command}; rc=$?; "
                  f"echo LEFT: $(ls -A {shlex.quote(mount)}); exit $rc")
        return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
    return subprocess.run([sys.executable, "-m", "edgekit", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, digits_build, tmp_path):
    if case.root and (os.geteuid() != 0 or not shutil.which("unshare")):
        message = "needs root and unshare(1) to mount a small tmpfs (CI runs as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    build = tmp_path / "build"
    shutil.copytree(digits_build["dir"], build)
    env = Env(tmp_path, build, tmp_path / "device")
    argv = case.setup(tmp_path, env)
    proc = env.proc = _run(argv, tmp_path)
    out = proc.stderr + proc.stdout
    assert proc.returncode == case.code, (proc.returncode, out)
    assert "Traceback" not in out and "internal error" not in out, out
    for phrase in case.phrases:
        assert phrase in out, (phrase, out)
    for phrase in case.absent:
        assert phrase not in out, (phrase, out)
    if case.after:
        case.after(tmp_path, env)
