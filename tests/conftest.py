"""Shared fixtures: the edgekit CLI run as a user runs it, and one real digits build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DIGITS_APP = REPO / "sample_apps" / "digits"

# Every build in the suite quantizes and exports for real: a step reused from the user's cache would
# make a test's result depend on what ran before it. The cache's own tests turn it on, in a temp dir.
os.environ["EDGEKIT_STEP_CACHE"] = "off"

# Under pytest-xdist (`make test` runs two workers), each worker and every edgekit process it starts
# gets one intra-op thread: two workers with a thread per core each would spin-wait against each
# other (seen here: a 34 s float reference took 762 s beside another torch process on 2 cores).
# A test that sets --threads itself still gets what it asks for.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)  # before -m selects: `not slow` must leave heavy tests out too
def pytest_collection_modifyitems(items):
    """A heavy test is a slow one (pyproject's markers): marked once, kept out of the default run."""
    for item in items:
        if item.get_closest_marker("heavy") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def run_edgekit(*args: str, cwd: Path | None = None, timeout: float = 300, columns: int = 200) -> subprocess.CompletedProcess:
    """`python -m edgekit ARGS` in a child process: exit codes and output as a user sees them
    (piped; `columns`: the width rich lays out for, by default wide enough that it never wraps)."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def app_toml(name: str, shape: list[int], task: str = "embedding") -> str:
    """edgekit.toml of a test app: model.py's make(), one float32 input x, calib.npz and eval.npz."""
    return (f'name = "{name}"\n[model]\nfactory = "model:make"\ntask = "{task}"\n'
            f'[[inputs]]\nname = "x"\nshape = {list(shape)}\n[data]\ncalib = "calib.npz"\neval = "eval.npz"\n')


def write_app(root: Path, model_source: str, toml: str, **data: dict) -> Path:
    """An app dir from a test's own sources: model.py, edgekit.toml and one NAME.npz per `data`
    entry (NAME={"x": array, ...})."""
    import numpy as np

    (root / "model.py").write_text(model_source)
    (root / "edgekit.toml").write_text(toml)
    for name, arrays in data.items():
        np.savez(root / f"{name}.npz", **arrays)
    return root


SENSOR = 1e4  # an unscaled input feature: any int8 range that holds it rounds the 0..1 pixels to zero


def with_sensor(x):
    """Digits images (N, 1, 8, 8) flattened, with a 65th feature fixed at SENSOR."""
    import numpy as np

    flat = x.reshape(len(x), 64)
    return np.concatenate([flat, np.full((len(x), 1), SENSOR, np.float32)], axis=1).astype(np.float32)


SENSOR_MLP = """
import torch
from torch import nn

WIDTHS = {widths!r}


class SensorMlp(nn.Module):
    \"\"\"65 inputs (64 pixels and the sensor) -> embed -> hidden layers -> head (10 classes).\"\"\"

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(65, WIDTHS[0])
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(WIDTHS, WIDTHS[1:]))
        self.head = nn.Linear(WIDTHS[-1], 10)

    def forward(self, x):
        x = torch.relu(self.embed(x))
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def make():
    return SensorMlp()
"""
SENSOR_TOML = """
name = "sensor"
[model]
factory = "model:make"
weights = "weights.pt"
[[inputs]]
name = "x"
shape = [1, 65]
[data]
calib = "calib.npz"
eval = "eval.npz"
"""


def sensor_app(root: Path, widths: tuple[int, ...], digits_app: Path, eval_labels: bool, steps: int,
               lr: float) -> Path:
    """An app of the digits data with the sensor feature: an MLP (embed to widths[0], hidden
    layers through `widths`, head) trained full batch to ignore the sensor (zero weights on it)."""
    import numpy as np
    import torch

    train, calib, evaluation = (np.load(digits_app / f"{n}.npz") for n in ("train", "calib", "eval"))
    eval_arrays = {"x": with_sensor(evaluation["x"]), **({"y": evaluation["y"]} if eval_labels else {})}
    model_source = SENSOR_MLP.format(widths=tuple(widths))
    write_app(root, model_source, SENSOR_TOML, calib={"x": with_sensor(calib["x"])}, eval=eval_arrays)
    namespace: dict = {}
    exec(model_source, namespace)
    torch.manual_seed(0)
    model = namespace["make"]()
    with torch.no_grad():
        model.embed.weight[:, 64] = 0  # the model ignores the sensor feature
    x, y = torch.from_numpy(with_sensor(train["x"])), torch.from_numpy(train["y"])
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        model.embed.weight.grad[:, 64] = 0
        opt.step()
    torch.save(model.state_dict(), root / "weights.pt")
    return root


def require_litert() -> None:
    """Skip without the litert extra, except in CI: there `make install` installs it, so its absence is a failure."""
    from edgekit.formats import get_format

    why = get_format("litert").available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"litert: {why}: CI installs the litert extra (make install), its tests must run")
        pytest.skip(f"litert: {why} (make install installs it; or pip install -c constraints.txt -e '.[test,litert]')")


@pytest.fixture(scope="session")
def run_cli():
    """The CLI runner as a fixture, so test modules need no imports from this file."""
    return run_edgekit


@pytest.fixture(scope="session")
def digits_app() -> Path:
    return DIGITS_APP


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory) -> dict:
    """The bundled sample built for rpi4 through the CLI, once per test session."""
    out = tmp_path_factory.mktemp("builds") / "digits-rpi4"
    proc = run_edgekit("build", str(DIGITS_APP), "--target", "rpi4", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    return {"dir": out, "manifest": manifest, "stderr": proc.stderr}


@pytest.fixture(scope="session")
def ssh_device(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 playing the device, for the whole session (see tests/sshd.py)."""
    from sshd import SshServer, sshd_available

    if not sshd_available():
        message = "sshd is not installed (Debian: apt-get install openssh-server; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the deploy tests, not skip them")
        pytest.skip(message)
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def build_copy(digits_build, tmp_path) -> Path:
    """A private copy of the digits rpi4 build: deploys and benches write their records into it."""
    import shutil

    copy = tmp_path / "digits-rpi4"
    shutil.copytree(digits_build["dir"], copy)
    return copy


# A test that writes a broken manifest on purpose (to see it refused) leaves this file beside it.
DELIBERATELY_INVALID = ".deliberately-invalid"


@pytest.fixture(scope="session", autouse=True)
def every_manifest_is_strict_json(tmp_path_factory):
    """After the session: every manifest.json and device-run record the suite's builds wrote parses
    as strict JSON (NaN and Infinity refused), as `edgekit report --json` consumers need."""
    yield
    from edgekit.manifest import loads_strict

    base = tmp_path_factory.getbasetemp()
    bad = []
    for path in [*base.rglob("manifest.json"), *base.rglob("device_runs/*.json")]:
        if (path.parent / DELIBERATELY_INVALID).exists() or (path.parent.parent / DELIBERATELY_INVALID).exists():
            continue
        try:
            loads_strict(path.read_text())
        except ValueError as e:
            bad.append(f"{path}: {e}")
    assert not bad, "not strict JSON:\n" + "\n".join(bad)
