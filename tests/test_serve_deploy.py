"""edgekit deploy --serve: the server installed as a service on a device, answering /healthz, started
again when its process dies, and removed by --serve stop. Against a real sshd whose device runs a real
systemd user manager (a user unit), and against this computer without systemd (the supervisor)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request

import numpy as np
import pytest
from sshd import SshServer, SystemdUserManager, free_port, sshd_available

from edgekit.deploy.service import unit_file, unit_name

EVAL = "sample_apps/digits/eval.npz"


def healthz(port: int, timeout: float = 60.0, not_pid: int | None = None) -> dict:
    """The server's /healthz once it answers ok (from a process other than `not_pid`)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                doc = json.load(r)
            if doc.get("ok") and doc.get("pid") != not_pid:
                return doc
            last = doc
        except OSError as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"no healthy server on port {port} within {timeout} s: {last}")


def predict(port: int, x: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return np.asarray(json.load(r)["outputs"]["output"])


def port_closed(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def systemd_device(tmp_path_factory):
    """A device whose logins reach a systemd user manager: a real sshd on 127.0.0.1 and a real
    `systemd --user` (tests/sshd.py says how it runs in a container)."""
    why = SystemdUserManager.available() or (None if sshd_available() else "sshd is not installed")
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the systemd deploy test, not skip it")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("systemd-device")
    manager = SystemdUserManager(root).start()
    server = SshServer(root / "sshd", session_env=manager.env).start()
    yield server, manager
    server.stop()
    manager.stop()


def test_deploy_serve_installs_a_systemd_user_unit(systemd_device, build_copy, run_cli, tmp_path):
    server, manager = systemd_device
    port = free_port()
    # a space in the path: the unit's ExecStart and WorkingDirectory must quote it as systemd reads them
    common = ["--device", server.address, "--ssh-config", str(server.client_config), "--remote-dir",
              str(tmp_path / "remote dir"), "--port", str(port)]
    proc = run_cli("deploy", str(build_copy), *common, "--python", sys.executable, "--allow-arch-mismatch",
                   "--serve", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)[0]
    service = record["service"]
    assert record["kind"] == "serve" and service["manager"] == "systemd-user"
    unit = manager.config_home / "systemd" / "user" / unit_name(port)
    assert service["unit"] == str(unit) and unit.is_file()
    assert "Restart=on-failure" in unit.read_text()
    assert manager.systemctl("is-enabled", unit_name(port)).stdout.strip() == "enabled"
    assert service["url"] == f"http://127.0.0.1:{port}" and not service["starts_at_boot"]  # no logind: no lingering
    assert "enable-linger" in service["boot_hint"]

    first = healthz(port)
    assert first["sha256"] == record["build"]["sha256"]
    main_pid = int(manager.systemctl("show", "-p", "MainPID", "--value", unit_name(port)).stdout)
    assert main_pid == first["pid"]
    x = np.load(EVAL)["x"][:4]
    before = predict(port, x)

    os.kill(main_pid, signal.SIGKILL)  # the server dies; systemd starts it again (Restart=on-failure)
    again = healthz(port, not_pid=main_pid)
    np.testing.assert_allclose(predict(port, x), before, atol=1e-6)
    assert int(manager.systemctl("show", "-p", "NRestarts", "--value", unit_name(port)).stdout) >= 1
    assert again["pid"] != main_pid

    manifest = json.loads((build_copy / "manifest.json").read_text())
    assert manifest["device_runs"][-1]["service"]["manager"] == "systemd-user"

    proc = run_cli("deploy", str(build_copy), *common, "--serve", "stop")
    assert proc.returncode == 0, proc.stderr
    assert f"stopped the server on port {port}" in proc.stdout
    assert not unit.exists() and port_closed(port)
    proc = run_cli("deploy", str(build_copy), *common, "--serve", "stop")  # nothing left: still fine
    assert proc.returncode == 0 and "nothing of edgekit's" in proc.stdout


@pytest.mark.slow  # the emulator job deploys a supervised server too (tests/test_emulated_board.py)
def test_deploy_serve_without_systemd_is_supervised(build_copy, run_cli, tmp_path):
    """This computer has no systemd: serve.py --supervise keeps the server up; stop removes it."""
    port = free_port()
    remote = tmp_path / "remote dir"
    common = ["--device", "local", "--remote-dir", str(remote), "--port", str(port)]
    proc = run_cli("deploy", str(build_copy), *common, "--python", sys.executable, "--allow-arch-mismatch", "--serve",
                   "--json")
    try:
        assert proc.returncode == 0, proc.stderr
        service = json.loads(proc.stdout)[0]["service"]
        assert service["manager"] == "supervisor" and "does not start at boot" in service["boot_hint"]
        first = healthz(port)
        os.kill(first["pid"], signal.SIGKILL)
        healthz(port, not_pid=first["pid"])
        assert "starting it again" in (remote / f"serve-{port}.log").read_text()
    finally:
        proc = run_cli("deploy", str(build_copy), *common, "--serve", "stop")
    assert proc.returncode == 0, proc.stderr
    assert port_closed(port) and not (remote / f"serve-{port}.pid").exists()


def test_deploy_serve_refuses_what_cannot_serve(build_copy, run_cli):
    proc = run_cli("deploy", str(build_copy), "--device", "adb:XYZ", "--serve")
    assert proc.returncode == 2 and "Android" in proc.stderr


def test_a_server_that_never_gets_healthy_is_removed_and_named(build_copy, run_cli, tmp_path):
    """Another program holds the port: the server cannot start, the deploy exits 4 naming the URL and
    the log, and nothing is left restarting in the background."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    remote = tmp_path / "remote"
    try:
        proc = run_cli("deploy", str(build_copy), "--device", "local", "--remote-dir", str(remote), "--port", str(port),
                       "--python", sys.executable, "--allow-arch-mismatch", "--serve", "--serve-wait", "8")
        assert proc.returncode == 4, proc.stderr
        assert f"did not answer http://127.0.0.1:{port}/healthz within 8 s" in proc.stderr
        assert f"serve-{port}.log" in proc.stderr
        assert not (remote / f"serve-{port}.pid").exists()  # the supervisor was stopped
        log = (remote / f"serve-{port}.log").read_text()
        assert "address already in use" in log.lower() or "error while attempting to bind" in log.lower(), log[-500:]
    finally:
        holder.close()


@pytest.mark.parametrize("system", [True, False], ids=["system unit", "user unit"])
def test_the_unit_file_is_one_systemd_accepts(build_copy, tmp_path, system):
    """systemd's own checker (systemd-analyze verify) on the unit deploy --serve writes, for a build
    whose path holds a space and a %: the system unit (root on a booted board, which no test here can
    start) and the user unit."""
    import shutil
    import subprocess

    from edgekit.deploy.records import open_build
    from edgekit.serve import SERVER_PATH, Settings

    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: CI installs systemd")
        pytest.skip("systemd is not installed")
    where = tmp_path / "a build 100%"
    where.mkdir()
    shutil.copy(SERVER_PATH, where / "serve.py")
    build = open_build(build_copy)
    settings = Settings(port=8080)
    argv = [sys.executable, f"{where}/serve.py", f"{where}/model.pte", "--spec", f"{where}/serve.json", *settings.argv()]
    unit = tmp_path / "units" / unit_name(8080)
    unit.parent.mkdir()
    unit.write_text(unit_file(build, argv, str(where), settings, system))
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(["systemd-analyze", *([] if system else ["--user"]), "verify", str(unit)], capture_output=True,
                          text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert done.returncode == 0, done.stdout + done.stderr
    text = unit.read_text()
    assert f"WorkingDirectory={str(where).replace('%', '%%')}" in text
    assert f'"{str(where).replace("%", "%%")}/serve.py"' in text
    assert ("WantedBy=multi-user.target" if system else "WantedBy=default.target") in text
