"""`edgekit deploy` / `make deploy` against a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The "device" is this machine (x86_64) reached through sshd; its python is the
venv's, which has ExecuTorch. The digits build targets rpi4 (aarch64), so the
happy paths pass --allow-arch-mismatch: that is the honest way to run an ARM
build on an x86 box, and the record says so ("arch_mismatch": true), so nobody
mistakes these numbers for a Pi's. Without the flag the deploy is refused (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sshd import free_port

from edgekit.runtime import RUNNER_PATH

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's own python: no torch, no executorch


def device_args(server, device_root: Path, python: str = sys.executable) -> list[str]:
    """How the tests point edgekit at the sshd: a client config (keys, port, known_hosts), the device's python,
    and a base directory under tmp instead of the login directory."""
    return ["--ssh-config", str(server.client_config), "--python", python, "--remote-dir", str(device_root)]


def snapshot(build: Path) -> dict[str, str]:
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest() for p in build.rglob("*") if p.is_file()}


def only_new_file_is_a_failed_record(build: Path, before: dict[str, str]) -> dict:
    after = snapshot(build)
    assert {k: after.get(k) for k in before} == before, "the build dir changed"
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].startswith("device_runs/"), new
    record = json.loads((build / new[0]).read_text())
    assert record["ok"] is False and record["error"]
    return record


def device_files(device_root: Path) -> list[str]:
    return sorted(str(p.relative_to(device_root)) for p in device_root.rglob("*") if p.is_file()) if device_root.exists() else []


def test_make_deploy_benchmarks_a_build_on_the_ssh_device(ssh_device, build_copy, tmp_path):
    device_root = tmp_path / "device"
    venv = Path(sys.prefix)
    args = device_args(ssh_device, device_root) + ["--allow-arch-mismatch", "--runs", "20", "--warmup", "2"]
    # -o: treat the install stamp as up to date; this test checks deploy, not the venv install.
    proc = subprocess.run(
        ["make", "-o", f"{venv}/.installed-stamp", "deploy", f"VENV={venv}", f"DEVICE={ssh_device.address}",
         f"BUILD={build_copy}", "DEPLOY_ARGS=" + " ".join(args)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ssh_device.address in proc.stdout and "ok" in proc.stdout

    manifest = json.loads((build_copy / "manifest.json").read_text())
    [run] = manifest["device_runs"]
    assert run["device"] == ssh_device.address and run["transport"] == "ssh" and run["benchmarked"] is True
    assert run["arch_mismatch"] is True and run["runtime"] == "executorch" and run["runs"] == 20
    assert 0 < run["p50"] <= run["p90"] <= run["p99"]

    record = json.loads((build_copy / run["file"]).read_text())
    bench = record["bench"]
    assert record["ok"] and record["arch"] == {"device": "x86_64", "target": "aarch64", "mismatch": True, "allowed": True}
    assert len(bench["samples_ms"]) == 20 and bench["min"] <= bench["p50"] <= bench["max"]
    assert bench["threads"] == manifest["target_profile"]["threads"] and bench["load_ms"] > 0
    assert bench["device"]["cores"] >= 1

    # On the device: exactly the three files, verified, under the per-build directory; no temp names left.
    slug = Path(record["remote_dir"]).name
    assert re.fullmatch(r"digits-rpi4-executorch-[0-9a-f]{8}", slug)
    assert device_files(device_root) == [f"{slug}/inputs.json", f"{slug}/model.pte", f"{slug}/runner.py"]
    on_device = device_root / slug
    assert hashlib.sha256((on_device / "model.pte").read_bytes()).hexdigest() == manifest["artifact"]["sha256"]
    assert (on_device / "runner.py").read_bytes() == RUNNER_PATH.read_bytes()
    assert json.loads((on_device / "inputs.json").read_text()) == {"inputs": manifest["model"]["inputs"], "runtime": "executorch"}


@pytest.mark.slow  # ~17 s; make deploy to the real sshd runs by default
def test_fleet_deploys_in_parallel_and_reports_each_device(ssh_device, build_copy, tmp_path, run_cli):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[bench-box]\nssh = "{ssh_device.address}"\npython = "{sys.executable}"\n\n'
        f'[dead-board]\nssh = "{ssh_device.user}@127.0.0.1:{free_port()}"\n')
    # --python on the command line is every device's default; bench-box's own python wins.
    proc = run_cli("deploy", str(build_copy), "--devices", str(fleet), *device_args(ssh_device, tmp_path / "device", "/nonexistent/python"),
                   "--allow-arch-mismatch")
    assert proc.returncode == 4, proc.stderr
    assert "1 of 2 devices failed" in proc.stderr and "dead-board (connect)" in proc.stderr
    assert "bench-box" in proc.stdout and "dead-board" in proc.stdout and "fix:" in proc.stdout
    records = [json.loads(p.read_text()) for p in (build_copy / "device_runs").glob("*.json")]
    assert sorted((r["device"], r["ok"]) for r in records) == [("bench-box", True), ("dead-board", False)]
    [entry] = json.loads((build_copy / "manifest.json").read_text())["device_runs"]
    assert entry["device"] == "bench-box" and entry["benchmarked"] is False and entry["load_ms"] > 0


def _wrapper(tmp_path: Path, name: str, body: str) -> str:
    """A script standing in for the device's python (see each fault below for what it plays)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


# Each fault: how to reach the device, extra flags, the stage it fails in, and what the message must say.
FAULTS = {
    # A port nothing listens on.
    "unreachable": (lambda s: f"{s.user}@127.0.0.1:{free_port()}", [], "connect", "connection refused"),
    # A key that is not in authorized_keys.
    "refused-auth": (lambda s: s.alias("stranger"), [], "connect", "refused the login"),
    # known_hosts without the server's key: BatchMode and no StrictHostKeyChecking override mean refusal.
    "unknown-host-key": (lambda s: s.alias("unknown"), [], "connect", "not in known_hosts"),
    # Uploads cut off by a file-size limit on the device (ulimit -f): the transfer stops mid-file.
    "transfer-cut": (lambda s: s.alias("quota"), [], "push", "upload of model.pte"),
    # The device's sha256sum disagrees with ours.
    "checksum-mismatch": (lambda s: s.alias("liar"), [], "push", "checksum mismatch after uploading model.pte"),
    # The device's python has no ExecuTorch.
    "no-runtime": (lambda s: s.address, ["--python", SYSTEM_PYTHON], "check", "executorch is not importable by '/usr/bin/python3'"),
    # The runtime dies from a signal (a segfaulting runtime, as onnxruntime does on a wrong cpuinfo).
    "runner-crash": (lambda s: s.address, ["--python", "CRASH"], "bench", "crashed.*killed by SIGSEGV"),
    # The runtime hangs: the host gives up after --timeout plus a grace period.
    "runner-hang": (lambda s: s.address, ["--python", "HANG", "--timeout", "2"], "bench", "did not answer within 2 s"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_device_faults_exit_4_and_leave_only_a_failed_record(fault, ssh_device, build_copy, tmp_path, run_cli):
    address, extra, stage, message = FAULTS[fault]
    wrappers = {"CRASH": _wrapper(tmp_path, "crash-python", "kill -SEGV $$"),
                "HANG": _wrapper(tmp_path, "hang-python", "exec sleep 30")}
    extra = [wrappers.get(a, a) for a in extra]
    device_root = tmp_path / "device"
    before = snapshot(build_copy)
    proc = run_cli("deploy", str(build_copy), "--device", address(ssh_device),
                   *device_args(ssh_device, device_root), "--allow-arch-mismatch", *extra, "--bench")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    record = only_new_file_is_a_failed_record(build_copy, before)
    assert record["stage"] == stage and re.search(message, record["error"])
    # Nothing half-sent keeps a final name on the device, and no temp file is left behind.
    assert not [f for f in device_files(device_root) if ".partial-" in f]
    if stage in ("connect", "push"):
        assert not [f for f in device_files(device_root) if f.endswith("model.pte")]


def test_wrong_architecture_is_refused_without_the_flag(ssh_device, build_copy, tmp_path, run_cli):
    before = snapshot(build_copy)
    device_root = tmp_path / "device"
    proc = run_cli("deploy", str(build_copy), "--device", ssh_device.address, *device_args(ssh_device, device_root), "--bench")
    assert proc.returncode == 4
    assert "is x86_64 but this build targets rpi4 (aarch64)" in proc.stderr and "--allow-arch-mismatch" in proc.stderr
    assert only_new_file_is_a_failed_record(build_copy, before)["stage"] == "arch"
    assert device_files(device_root) == []  # refused before anything was pushed


@pytest.mark.parametrize("args, message", [
    (["--device", "-oProxyCommand=touch /tmp/pwned"], "is not an ssh address"),
    (["--device", "pi@host:99999"], "out of range"),
    (["--device", "pi@host", "--ssh-option", "StrictHostKeyChecking"], "is not KEY=VALUE"),
    ([], "no device given"),
])
def test_bad_device_arguments_are_usage_errors(args, message, build_copy, run_cli):
    before = snapshot(build_copy)
    proc = run_cli("deploy", str(build_copy), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert snapshot(build_copy) == before  # a usage error is not a device run: no record


def test_a_missing_build_dir_is_a_usage_error(tmp_path, run_cli):
    proc = run_cli("deploy", str(tmp_path / "nope"), "--device", "pi@host")
    assert proc.returncode == 2 and "not a build directory" in proc.stderr
