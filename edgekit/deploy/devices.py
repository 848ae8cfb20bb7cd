"""Which devices to deploy to: `--device` strings and a `devices.toml` fleet file.

    --device pi@raspberrypi.local        ssh (port 22, or user@host:2222)
    --device adb:R58M123ABC              an Android phone over adb (`adb` alone: the only one)
    --device local                       this computer

A fleet file names each device and may override any per-device option:

    [kitchen-pi]                         # the name used in records and reports
    ssh = "pi@192.168.1.20"
    python = "/home/pi/venv/bin/python"

    [pixel-7]
    adb = "2A151FDH2000EX"
    native_runner = "tools/android/executor_runner"   # relative to this file

Unknown keys are errors (a typo must not silently deploy with defaults).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgekit.deploy.adb import AdbTransport
from edgekit.deploy.local import LocalTransport
from edgekit.deploy.native import split_native_runner
from edgekit.deploy.ssh import SshTransport, parse_address
from edgekit.errors import UsageError

TRANSPORT_KEYS = ("ssh", "adb", "local")
OPTION_KEYS = {"python": str, "remote_dir": str, "ssh_config": str, "ssh_options": list, "native_runner": str}
PATH_KEYS = ("ssh_config", "native_runner")  # resolved relative to the fleet file


@dataclass(frozen=True)
class Device:
    """One deploy destination and how to run things there."""

    name: str  # as records and reports show it
    transport: str  # ssh | adb | local
    address: str | None  # user@host[:port] for ssh, the serial for adb
    python: str = "python3"  # the device's python with the runtime installed
    remote_dir: str | None = None  # base directory on the device [default: the transport's]
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()
    native_runner: str | None = None  # [KIND=]PATH of a native benchmark binary

    def open(self):
        """The transport that reaches this device."""
        if self.transport == "ssh":
            return SshTransport(self.address, self.name, self.ssh_config, self.ssh_options)
        if self.transport == "adb":
            return AdbTransport(self.address, self.name)

        return LocalTransport(self.name)

    @property
    def file_name(self) -> str:
        """The name made safe for a file name: 'pi@10.0.0.5:2222' -> 'pi@10.0.0.5_2222'."""
        return re.sub(r"[^A-Za-z0-9._@-]", "_", self.name)


def parse_device(text: str, defaults: dict) -> Device:
    """One --device string, with the command line's options as its settings."""
    text = text.strip()
    if not text:
        raise UsageError("--device is empty", hint="write user@host[:port], adb[:SERIAL] or local")
    if text == "local":
        return Device("local", "local", None, **defaults)
    if text == "adb" or text.startswith("adb:"):
        serial = text.partition(":")[2] or None
        return Device(text, "adb", serial, **defaults)
    address = text.removeprefix("ssh:")

    parse_address(address)  # a bad address is a usage error now, not a device failure later
    return Device(address, "ssh", address, **defaults)


def load_devices_file(path: str | Path, defaults: dict) -> list[Device]:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--devices {path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--devices {path}: not valid TOML: {e}") from None
    if not doc:
        raise UsageError(f"--devices {path}: no devices", hint="add a [name] table per device with ssh = \"user@host\"")
    return [_device_from_table(name, table, path, defaults) for name, table in doc.items()]


def _device_from_table(name: str, table, path: Path, defaults: dict) -> Device:
    where = f"{path} [{name}]"
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table", hint=f"write [{name}] followed by ssh = \"user@host\"")
    allowed = (*TRANSPORT_KEYS, *OPTION_KEYS)
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise UsageError(f"{where}: unknown key '{key}'",
                             hint=(f"did you mean '{close[0]}'? " if close else "") + "allowed: " + ", ".join(allowed))
    kinds = [k for k in TRANSPORT_KEYS if k in table]
    if len(kinds) != 1:
        raise UsageError(f"{where}: give exactly one of ssh, adb, local", hint='e.g. ssh = "pi@192.168.1.20"')
    settings = dict(defaults)
    for key, kind in OPTION_KEYS.items():
        if key in table:
            settings[key] = _checked(table[key], kind, key, where, path)
    kind = kinds[0]
    if kind == "local":
        return Device(name, "local", None, **settings)
    address = table[kind]
    if not isinstance(address, str) or (kind == "ssh" and not address):
        raise UsageError(f"{where}: '{kind}' must be a string", hint='e.g. ssh = "pi@192.168.1.20:22"')
    if kind == "ssh":
        parse_address(address)
    return Device(name, kind, address or None, **settings)


def _checked(value, kind: type, key: str, where: str, path: Path):
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{where}: '{key}' must be a list of strings", hint='e.g. ssh_options = ["IdentityFile=~/.ssh/pi"]')
        return tuple(value)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: '{key}' must be a non-empty string")
    if key in PATH_KEYS:
        kind, rest = split_native_runner(value) if key == "native_runner" else (None, value)
        resolved = str((path.parent / Path(rest).expanduser()).resolve())
        return f"{kind}={resolved}" if kind else resolved
    return value


def device_defaults(**options) -> dict:
    """Per-device settings given on the command line (None = the built-in default)."""
    fields = {f.name for f in dataclasses.fields(Device)} - {"name", "transport", "address"}
    return {k: (tuple(v) if k == "ssh_options" else v) for k, v in options.items() if k in fields and v not in (None, ())}
