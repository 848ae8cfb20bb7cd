"""The device runner (edgekit/runtime/runner.py), run as a device runs it: a separate
python process on a copied file, with the real runtimes."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime import RUNNER_PATH
from edgekit.runtime.runner import cpu_from_cpuinfo, percentile, summarize

DIGITS_EVAL = Path(__file__).resolve().parent.parent / "sample_apps" / "digits" / "eval.npz"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python: no torch, executorch or onnxruntime


def run_runner(artifact: Path, *args: str, python: str = sys.executable, timeout: float = 120):
    """Copy the runner beside the artifact (as deploy does) and run it; returns (process, JSON or None)."""
    runner = artifact.parent / "runner.py"
    shutil.copyfile(RUNNER_PATH, runner)
    proc = subprocess.run([python, str(runner), str(artifact), *args], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    return proc, (json.loads(lines[-1]) if lines else None)


def device_dir(tmp_path: Path, artifact: Path, inputs: list[dict]) -> Path:
    """A directory laid out as deploy lays it out on a device: artifact + inputs.json (with the runtime)."""
    copy = tmp_path / artifact.name
    shutil.copyfile(artifact, copy)
    write_spec(tmp_path, inputs, copy)
    return copy


def write_spec(directory: Path, inputs: list[dict], artifact: Path) -> None:
    """inputs.json as deploy writes it: the inputs, and the runtime the artifact's format names."""
    from edgekit.formats import for_artifact

    (directory / "inputs.json").write_text(json.dumps({"inputs": inputs, "runtime": for_artifact(artifact).DEVICE_RUNTIME}))


def test_runner_imports_nothing_of_edgekit():
    """It is copied to devices alone: an edgekit import would fail there."""
    tree = ast.parse(RUNNER_PATH.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [n for n in names if n.split(".")[0] == "edgekit"]


def test_runner_times_the_digits_artifact_on_real_inputs(digits_build, tmp_path):
    m = digits_build["manifest"]
    artifact = device_dir(tmp_path, digits_build["dir"] / m["artifact"]["file"], m["model"]["inputs"])
    proc, doc = run_runner(artifact, "--threads", "2", "--warmup", "2", "--runs", "25", "--inputs", str(DIGITS_EVAL))
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True
    assert doc["runtime"] == {"name": "executorch", "version": m["versions"]["executorch"]}
    assert doc["threads"] == 2 and doc["threads_applied"] is True  # the XNNPACK threadpool reads back 2
    assert doc["runs"] == 25 and len(doc["samples_ms"]) == 25
    assert 0 < doc["min"] <= doc["p50"] <= doc["p90"] <= doc["p99"] <= doc["max"]
    assert doc["load_ms"] > 0 and doc["first_ms"] > 0 and doc["peak_rss_kb"] > 0
    assert doc["outputs"] == [{"shape": [1, 10], "dtype": "torch.float32"}]
    assert doc["machine"] == __import__("platform").machine()
    assert doc["device"]["cores"] >= 1 and doc["device"]["cpu_model"]


def test_runner_runs_onnx_with_onnxruntime(tmp_path):
    """The runtime is the one the spec file names: a tiny ONNX graph (made with onnx.helper) runs in onnxruntime."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones((4, 3), np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    write_spec(tmp_path, [{"name": "x", "shape": [2, 4], "dtype": "float32"}], tmp_path / "model.onnx")
    proc, doc = run_runner(tmp_path / "model.onnx", "--threads", "1", "--runs", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert doc["runtime"]["name"] == "onnxruntime" and doc["threads_applied"] is True
    assert doc["outputs"][0]["shape"] == [2, 3] and doc["runs"] == 5


def test_runner_reports_a_corrupt_artifact_as_json(tmp_path):
    """The runtime's own error comes back in the JSON (onnxruntime here: it loads fast; the path is shared)."""
    pytest.importorskip("onnxruntime")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not a protobuf" * 64)
    write_spec(tmp_path, [{"name": "x", "shape": [1, 4]}], artifact)
    proc, doc = run_runner(artifact, "--check")
    assert proc.returncode == 1
    assert doc["ok"] is False and doc["error_kind"] == "load_failed" and "model.onnx" in doc["error"]


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="needs a python without the runtimes")
def test_runner_names_the_missing_runtime(tmp_path):
    artifact = tmp_path / "model.pte"
    artifact.write_bytes(b"\0" * 16)
    write_spec(tmp_path, [{"name": "x", "shape": [1, 4]}], artifact)
    proc, doc = run_runner(artifact, python=SYSTEM_PYTHON)
    assert proc.returncode == 3
    assert doc["error_kind"] == "runtime_missing" and doc["package"] == "executorch"


def test_runner_rejects_a_bad_input_spec_before_importing_anything(tmp_path):
    artifact = tmp_path / "model.pte"
    artifact.write_bytes(b"\0")
    (tmp_path / "inputs.json").write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, -3]}]}))
    proc, doc = run_runner(artifact, timeout=30)
    assert proc.returncode == 2 and doc["error_kind"] == "usage" and "inputs.json" in doc["error"]


def test_runner_past_its_timeout_is_killed_by_sigalrm(digits_build, tmp_path):
    """The deadline holds even inside native code: the kernel delivers SIGALRM with its default action."""
    m = digits_build["manifest"]
    artifact = device_dir(tmp_path, digits_build["dir"] / m["artifact"]["file"], m["model"]["inputs"])
    proc, doc = run_runner(artifact, "--min-seconds", "600", "--timeout", "1")
    assert proc.returncode == -signal.SIGALRM
    assert doc is None  # killed, not exited: the host side turns this into "ran past --timeout"


def test_statistics():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # numpy's default (linear) method
    assert percentile([5.0], 99) == 5.0
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s["min"], s["p50"], s["max"]) == (1.0, 3.0, 10.0)
    assert s["mean"] == 4.0 and s["std"] == pytest.approx(3.5355, abs=1e-4)
    assert s["p99"] == pytest.approx(9.76)


def test_cpu_model_from_cpuinfo_text():
    """Sample /proc/cpuinfo text in the documented formats: a Raspberry Pi 4 (64-bit kernel), an x86 host, a big.LITTLE phone."""
    pi4 = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n" * 4
    pi4 += "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert cpu_from_cpuinfo(pi4) == {"cpu_model": "4x Cortex-A72", "board": "Raspberry Pi 4 Model B Rev 1.4"}
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 49\nmodel name\t: AMD EPYC 7B12\n"
    assert cpu_from_cpuinfo(x86) == {"cpu_model": "AMD EPYC 7B12", "board": None}
    phone = "".join(f"processor\t: {i}\nCPU part\t: {'0xd05' if i < 6 else '0xd0b'}\n\n" for i in range(8))
    assert cpu_from_cpuinfo(phone)["cpu_model"] == "6x Cortex-A55 + 2x Cortex-A76"


def test_memory_read_bandwidth_reads_a_buffer_past_the_largest_cache(monkeypatch):
    """A text-generation run's decode limit comes from this figure: a buffer 4x the largest cache (64 MB at least),
    read by every core, in GB/s; none where the buffer would take over 1/8 of the available memory."""
    from edgekit.runtime import runner

    monkeypatch.setattr(runner, "_largest_cache_bytes", lambda: 32 << 20)
    measured = runner.memory_read_bandwidth(passes=2)
    assert measured["buffer_mb"] == 128 and measured["threads"] == (os.cpu_count() or 1) and measured["passes"] == 2
    assert 0.1 < measured["read_gbs"] < 10_000  # GB/s: a real machine's memory, not a unit slip
    monkeypatch.setattr(runner, "_largest_cache_bytes", lambda: 0)
    monkeypatch.setattr(runner, "_available_memory_bytes", lambda: 256 << 20)  # a 64 MB buffer is 1/4 of it
    small = runner.memory_read_bandwidth()
    assert small["read_gbs"] is None and "64 MB" in small["why"] and "256 MB available" in small["why"]


def test_largest_cache_is_read_from_sysfs_sizes(tmp_path):
    """The kernel's cache sizes, as this machine's VM printed them: L1d, L1i, L2, a shared 480 MB L3."""
    from edgekit.runtime.runner import _largest_cache_bytes

    for i, size in enumerate(["48K", "64K", "2048K", "491520K"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    assert _largest_cache_bytes(str(tmp_path / "index*" / "size")) == 491520 * 1024
    assert _largest_cache_bytes(str(tmp_path / "none*" / "size")) == 0
