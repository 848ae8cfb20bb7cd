"""The verified push and the other transport-independent pieces, on the local transport
(this computer's real coreutils: sha256sum, mv, rm)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgekit.deploy.base import DeviceFailure, reporting_signals
from edgekit.deploy.devices import Device, load_devices_file, parse_device
from edgekit.deploy.local import LocalTransport
from edgekit.deploy.session import _base_dir
from edgekit.deploy.ssh import SshTransport, parse_address
from edgekit.errors import UsageError


def files(tmp_path: Path) -> list[tuple[Path, str]]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.bin").write_bytes(b"a" * 5000)
    (src / "b.txt").write_text("b")
    return [(src / "a.bin", "model.pte"), (src / "b.txt", "runner.py")]


def test_push_sends_verifies_renames_and_skips_what_is_there(tmp_path):
    t, remote = LocalTransport("host"), tmp_path / "device"
    remote.mkdir()
    first = t.push(files(tmp_path), str(remote))
    assert [f["sent"] for f in first] == [True, True]
    assert sorted(p.name for p in remote.iterdir()) == ["model.pte", "runner.py"]  # no temp names left
    assert hashlib.sha256((remote / "model.pte").read_bytes()).hexdigest() == first[0]["sha256"]
    (remote / "runner.py").write_text("changed on the device")
    again = t.push(files(tmp_path), str(remote))
    assert [f["sent"] for f in again] == [False, True]  # only the file whose digest differs goes again
    assert (remote / "runner.py").read_text() == "b"


def test_a_failed_push_renames_nothing_and_cleans_up(tmp_path, monkeypatch):
    """If any file fails to verify, no file gets its final name (no new artifact beside an old runner)."""
    t, remote = LocalTransport("host"), tmp_path / "device"
    remote.mkdir()
    real = t.sha256s

    def corrupt_then_digest(paths):
        for p in paths:
            if ".runner.py.partial-" in p:
                Path(p).write_text("flipped bits")
        return real(paths)

    monkeypatch.setattr(t, "sha256s", corrupt_then_digest)
    with pytest.raises(DeviceFailure, match="checksum mismatch after uploading runner.py"):
        t.push(files(tmp_path), str(remote))
    assert list(remote.iterdir()) == []


def test_reporting_signals_turns_a_signal_death_into_128_plus_n(tmp_path):
    t = LocalTransport("host")
    done = t.run(reporting_signals(["sh", "-c", "kill -SEGV $$"]))
    assert done.returncode == 128 + 11


def test_ssh_command_is_an_argv_with_one_quoted_remote_string():
    t = SshTransport("pi@raspberrypi.local:2222", options=("IdentityFile=/k",))
    cmd = t.command(["python3", "/x/runner.py", "it's; rm -rf ~"])
    assert cmd[:2] == ["ssh", "-T"] and "BatchMode=yes" in cmd and ["-p", "2222"] == cmd[cmd.index("-p"):cmd.index("-p") + 2]
    assert "StrictHostKeyChecking" not in " ".join(cmd)  # never overridden: the user's known_hosts decides
    assert cmd[-3:-1] == ["--", "pi@raspberrypi.local"]
    assert cmd[-1] == "python3 /x/runner.py 'it'\"'\"'s; rm -rf ~'"


def test_addresses_and_base_dirs():
    assert parse_address("pi@[fe80::1]:22") == ("pi", "fe80::1", 22)
    assert parse_address("board") == (None, "board", None)
    for bad in ("-oProxyCommand=x", "pi@host:0", "a b"):
        with pytest.raises(UsageError):
            parse_address(bad)
    ssh = SshTransport("pi@host")
    assert _base_dir(ssh, Device("d", "ssh", "pi@host")) == "edgekit"  # relative: the login directory
    assert _base_dir(ssh, Device("d", "ssh", "pi@host", remote_dir="~/models/")) == "models"  # a quoted ~ would not expand
    assert parse_device("adb:R58M", {}).transport == "adb" and parse_device("local", {}).transport == "local"
    assert Device("pi@10.0.0.5:2222", "ssh", "x").file_name == "pi@10.0.0.5_2222"


def test_devices_file_is_strict(tmp_path):
    good = tmp_path / "fleet.toml"
    good.write_text('[pi]\nssh = "pi@10.0.0.5"\nssh_config = "conf/ssh"\n[phone]\nadb = "R58M"\nnative_runner = "executor_runner"\n')
    pi, phone = load_devices_file(good, {"python": "/opt/py"})
    assert pi.ssh_config == str(tmp_path / "conf" / "ssh") and pi.python == "/opt/py"  # relative to the file
    assert phone.transport == "adb" and phone.native_runner == str(tmp_path / "executor_runner")
    bad = tmp_path / "bad.toml"
    bad.write_text('[pi]\nssh = "pi@10.0.0.5"\npyhton = "/opt/py"\n')
    with pytest.raises(UsageError, match="unknown key 'pyhton'") as e:
        load_devices_file(bad, {})
    assert "did you mean 'python'" in e.value.hint
    bad.write_text('[pi]\nssh = "pi@10.0.0.5"\nadb = "X"\n')
    with pytest.raises(UsageError, match="exactly one of ssh, adb, local"):
        load_devices_file(bad, {})
