"""`edgekit validate --emulate`: the artifact on an emulated ARM core (qemu-user).

Tests marked `emulator` need `make emulator` (see tests/emulator_fixture.py);
the others check the parts that need no emulator: the refusal when it is not
built, the comparison, and the cpuinfo text.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pytest

from conftest import require_litert
from emulator_fixture import require_emulator


def test_emulate_without_the_emulator_is_a_usage_error(digits_build, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "empty-cache"))
    before = (digits_build["dir"] / "manifest.json").read_bytes()
    proc = run_cli("validate", str(digits_build["dir"]), "--emulate", "--check", "parity")
    assert proc.returncode == 2, proc.stderr
    assert "emulator is not built" in proc.stderr and "make emulator" in proc.stderr
    assert (digits_build["dir"] / "manifest.json").read_bytes() == before  # refused before any check ran


def test_emulate_refuses_a_non_arm_target(digits_build, run_cli):
    proc = run_cli("validate", str(digits_build["dir"]), "--emulate", "--target", "host", "--check", "parity")
    assert proc.returncode == 2
    assert "target host is x86_64" in proc.stderr and "--target rpi4" in proc.stderr


def test_comparison_flags_a_kernel_that_computes_something_else():
    from edgekit.emulator.check import compare

    rng = np.random.default_rng(0)
    host = [[rng.normal(size=(1, 10)).astype(np.float32)] for _ in range(20)]
    same = [[h[0].copy()] for h in host]
    assert compare(host, same)["failures"] == []
    off = [[h[0] + 0.5 * np.float32(np.ptp(h[0]))] for h in host]  # every logit shifted by half the range
    assert any("output steps" in f for f in compare(host, off)["failures"])


@pytest.mark.parametrize("cpu,part", [("cortex-a72", "0xd08"), ("cortex-a76", "0xd0b"), ("cortex-a53", "0xd03")])
def test_cpuinfo_names_the_emulated_core(cpu, part):
    from edgekit.emulator.cpus import cpuinfo_text
    from edgekit.runtime.runner import cpu_from_cpuinfo

    text = cpuinfo_text(cpu, 2)
    assert text.count("processor\t:") == 2 and f"CPU part\t: {part}" in text
    assert cpu_from_cpuinfo(text)["cpu_model"].lower().endswith(cpu.replace("cortex-", "cortex-"))
    assert ("asimddp" in text) == (cpu == "cortex-a76")  # dot product: A76 (ARMv8.2) only


# ------------------------------------------------------------------ with the emulator


def _mounts() -> str:
    return open("/proc/self/mounts").read()


@pytest.mark.emulator
def test_validate_emulate_runs_the_pte_on_the_emulated_core(build_copy, run_cli):
    paths = require_emulator()
    before = _mounts().count(str(paths.rootfs))
    proc = run_cli("validate", str(build_copy), "--emulate", "--check", "parity", "--samples", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    emulated = json.loads(proc.stdout)["formats"]["executorch"]["emulated"]
    assert emulated["ran"] and emulated["cpu"] == "cortex-a72" and emulated["samples"] == 16
    assert emulated["runtime"]["name"] == "executorch-native"
    out = emulated["outputs"][0]
    assert out["top1_agreement"] == 100.0 and out["failures"] == []
    # A deterministic count, and int8 executes fewer instructions than the float .pte.
    assert emulated["instructions"] > 100_000
    assert emulated["float_instructions"] > emulated["instructions"]
    assert 0 < emulated["planned_memory_bytes"] < 1_000_000  # the digits CNN's activations: KBs, not MBs
    assert "not latency" in proc.stderr and " ms" not in proc.stderr.split("emulated")[1].split("\n")[0]
    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert "emulate" in manifest["validation"]["checks"]
    assert _mounts().count(str(paths.rootfs)) == before  # the private namespace took its mounts with it


@pytest.mark.emulator
def test_instruction_counts_are_deterministic(digits_build, tmp_path):
    from edgekit.emulator.check import EmulatedCore, run_native_pte

    paths = require_emulator()
    sample = [[np.full((1, 1, 8, 8), 0.5, np.float32)]]
    counts, outputs = [], []
    for i in range(2):
        work = tmp_path / str(i)
        work.mkdir()
        out, count, _ = run_native_pte(EmulatedCore(paths, "cortex-a72", work), digits_build["dir"] / "model.pte", sample, "m")
        counts.append(count)
        outputs.append(out[0][0])
    assert counts[0] == counts[1] > 0
    assert np.array_equal(outputs[0], outputs[1])


@pytest.mark.emulator
def test_validate_emulate_onnx_in_the_guest_onnxruntime(run_cli, digits_app, tmp_path):
    require_emulator()
    out = tmp_path / "digits-onnx"
    assert run_cli("build", str(digits_app), "--target", "rpi5", "--format", "onnx", "--out", str(out)).returncode == 0
    proc = run_cli("validate", str(out), "--emulate", "--check", "parity", "--samples", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    emulated = json.loads(proc.stdout)["formats"]["onnx"]["emulated"]
    assert emulated["cpu"] == "cortex-a76" and emulated["outputs"][0]["top1_agreement"] == 100.0
    assert emulated["instructions"] > 100_000 and "float_instructions" not in emulated


@pytest.mark.emulator
def test_validate_emulate_tflite_in_the_guest_ai_edge_litert(run_cli, digits_app, tmp_path):
    """The aarch64 ai-edge-litert (1.4.0) on an emulated Cortex-A76 computes what the host's 2.3 computed."""
    require_emulator()
    require_litert()
    out = tmp_path / "digits-litert"
    assert run_cli("build", str(digits_app), "--target", "rpi5", "--format", "litert", "--out", str(out)).returncode == 0
    proc = run_cli("validate", str(out), "--emulate", "--check", "parity", "--samples", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    emulated = json.loads(proc.stdout)["formats"]["litert"]["emulated"]
    assert emulated["cpu"] == "cortex-a76" and emulated["outputs"][0]["top1_agreement"] == 100.0
    assert emulated["instructions"] > 10_000


@pytest.mark.emulator
def test_the_guest_is_arm_and_sees_the_targets_core(tmp_path):
    from edgekit.emulator.check import EmulatedCore

    core = EmulatedCore(require_emulator(), "cortex-a53", tmp_path)
    done = core.guest.run(["sh", "-c", "uname -m; grep -m1 'CPU part' /proc/cpuinfo; echo $QEMU_CPU"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["aarch64", "CPU part\t: 0xd03", "cortex-a53"]
    assert subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() == "x86_64"


@pytest.mark.emulator
def test_the_rpi_classifier_app_runs_on_the_emulated_board(run_cli, digits_app, tmp_path):
    """sample_apps/rpi_classifier with only the board's numpy + onnxruntime (no Pillow, no torch, no edgekit)."""
    from pathlib import Path

    from edgekit.emulator.check import EmulatedCore

    paths = require_emulator()
    build = tmp_path / "digits-onnx"
    assert run_cli("build", str(digits_app), "--target", "rpi4", "--format", "onnx", "--out", str(build)).returncode == 0
    app = Path(__file__).resolve().parent.parent / "sample_apps" / "rpi_classifier"
    (tmp_path / "work").mkdir()
    core = EmulatedCore(paths, "cortex-a72", tmp_path / "work")
    guest = dataclasses.replace(core.guest, binds=core.guest.binds + ((app, "/mnt/app"), (build, "/mnt/build")))
    samples = sorted(p.name for p in (app / "samples").glob("*.pgm"))
    done = guest.run(["/opt/edgekit/venv/bin/python", "/mnt/app/classify.py", "/mnt/build",
                      *[f"/mnt/app/samples/{s}" for s in samples], "--json"], timeout=600)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["runtime"]["name"] == "onnxruntime"
    results = doc["results"]
    assert len(results) == len(samples) == 10
    for name, r in zip(samples, results):
        assert str(r["top"][0]["label"]) == name.split("-")[1], (name, r)
