"""An emulated arm64 board takes `make deploy` end to end: ARM code on every step.

The board is the rootfs's own Debian sshd running under qemu-user on 127.0.0.1
(edgekit/emulator/board.py), started here with a throwaway host key and client
key. Needs `make emulator` (marker `emulator`, run by `make test-emulator`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_litert
from emulator_fixture import start_board
from sshd import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = start_board(tmp_path_factory.mktemp("board"), "cortex-a72")
    yield b
    b.stop()


def make_deploy(board, build: Path, *extra: str) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    args = ["--ssh-config", str(board.client_config), "--runs", "5", "--warmup", "1", "--timeout", "600", *extra]
    return subprocess.run(
        ["make", "-o", f"{venv}/.installed-stamp", "deploy", f"VENV={venv}", f"DEVICE={board.address}",
         f"BUILD={build}", "DEPLOY_ARGS=" + " ".join(args)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})


def test_make_deploy_runs_the_pte_with_the_native_runner_on_the_emulated_board(board, build_copy, run_cli):
    proc = make_deploy(board, build_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((build_copy / "manifest.json").read_text())
    [run] = manifest["device_runs"]
    # No --allow-arch-mismatch: the board is aarch64, as the rpi4 build wants.
    assert run["arch_mismatch"] is False and run["machine"] == "aarch64"
    # A .pte on a Linux aarch64 board gets edgekit-et-runner (no torch there) once `make emulator` built it.
    assert run["runner"] == "edgekit-et-runner" and run["runtime"] == "executorch-native"
    assert run["emulated"] == {"by": "qemu-user", "cpu": "cortex-a72"}
    record = json.loads((build_copy / run["file"]).read_text())
    assert record["bench"]["device"]["cpu_model"].endswith("Cortex-A72")
    assert record["bench"]["runs"] == 5 and len(record["bench"]["samples_ms"]) == 5
    pushed = sorted(p["file"] for p in record["pushed"])
    assert "edgekit-et-runner" in pushed and "libexecutorch.so" in pushed and "model.pte" in pushed

    report = run_cli("report", str(build_copy), "--json")
    assert report.returncode == 0, report.stderr
    [shown] = json.loads(report.stdout)["runs"]
    assert shown["emulated"]
    table = run_cli("report", str(build_copy))
    assert "emulated: not latency" in table.stdout


def test_make_deploy_runs_an_onnx_build_in_the_boards_onnxruntime(board, run_cli, digits_app, tmp_path):
    out = tmp_path / "digits-onnx"
    assert run_cli("build", str(digits_app), "--target", "rpi4", "--format", "onnx", "--out", str(out)).returncode == 0
    proc = make_deploy(board, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run] = json.loads((out / "manifest.json").read_text())["device_runs"]
    assert run["runner"] == "python" and run["runtime"] == "onnxruntime" and run["machine"] == "aarch64"
    assert run["emulated"]["cpu"] == "cortex-a72"


def test_make_deploy_runs_a_tflite_build_in_the_boards_ai_edge_litert(board, run_cli, digits_app, tmp_path):
    """The board's ai-edge-litert is the aarch64 1.4.0 wheel: it reads what the host's converter wrote."""
    require_litert()
    out = tmp_path / "digits-litert"
    assert run_cli("build", str(digits_app), "--target", "rpi4", "--format", "litert", "--out", str(out)).returncode == 0
    proc = make_deploy(board, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run] = json.loads((out / "manifest.json").read_text())["device_runs"]
    assert run["runner"] == "python" and run["runtime"] == "litert" and run["machine"] == "aarch64"
    assert run["emulated"]["cpu"] == "cortex-a72"


def test_a_deploy_without_bench_runs_the_native_runner_once(board, build_copy):
    """The check stage loads the .pte and runs it once on the board, not only `test -x`."""
    from edgekit import api

    [record] = api.deploy(build_copy, [board.address], ssh_config=str(board.client_config))
    assert record["ok"] and record["runner"] == "edgekit-et-runner" and not record.get("bench")
    check = record["check"]
    assert check["first_ms"] > 0 and check["load_ms"] > 0 and check["machine"] == "aarch64"
    assert record["emulated"]["cpu"] == "cortex-a72"


def test_deploy_serve_runs_the_server_on_the_emulated_board(board, run_cli, digits_app, tmp_path):
    """The server itself (uvicorn, starlette, onnxruntime: ARM code under qemu) as a service of the board,
    which has no systemd: supervised, answering /healthz from the host, started again after a SIGKILL,
    predicting what onnxruntime on the host predicts; then removed."""
    import signal
    import urllib.request

    import numpy as np
    from test_serve_deploy import healthz, port_closed, predict

    from edgekit.runtime.runner import runtime_for

    out = tmp_path / "digits-onnx"
    assert run_cli("build", str(digits_app), "--target", "rpi4", "--format", "onnx", "--out", str(out)).returncode == 0
    port = free_port()
    common = ["--device", board.address, "--ssh-config", str(board.client_config), "--port", str(port)]
    proc = run_cli("deploy", str(out), *common, "--serve", "--serve-wait", "900", "--threads", "1", "--json", timeout=1800)
    try:
        assert proc.returncode == 0, proc.stderr
        [record] = json.loads(proc.stdout)
        assert record["service"]["manager"] == "supervisor" and record["arch"]["device"] == "aarch64"
        first = healthz(port, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as r:
            model = json.load(r)
        assert model["runtime"]["name"] == "onnxruntime" and model["machine"] == "aarch64"  # ARM code serving

        x = np.load(REPO / "sample_apps" / "digits" / "eval.npz")["x"][:3]
        rt = runtime_for("onnxruntime")
        rt.set_threads(1)
        rt.load(str(out / "model.onnx"))
        expected = np.concatenate([rt.run([x[i:i + 1]])[0] for i in range(3)])
        np.testing.assert_allclose(predict(port, x), expected, atol=1e-5)

        os.kill(first["pid"], signal.SIGKILL)  # a guest process: qemu-aarch64 running python
        again = healthz(port, timeout=900, not_pid=first["pid"])
        assert again["sha256"] == first["sha256"]
    finally:
        stop = run_cli("deploy", str(out), *common, "--serve", "stop", timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert port_closed(port)
