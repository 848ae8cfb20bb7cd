"""Reach an Android phone with adb: `adb push` for files, `adb shell` for commands.

adb joins `shell` arguments into one string for the device's sh, so commands
are quoted exactly as for ssh. Exit statuses come back with the shell protocol
(adb >= 7 talking to Android >= 7); older pairs always report 0, so the runner's
JSON, not the exit status, is what decides success there.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.deploy.base import Completed, DeviceFailure, Transport
from edgekit.errors import UsageError

ADB_ENV = "EDGEKIT_ADB"  # another adb binary (platform-tools outside PATH)

# (what adb prints, our message, the fix); adb says these on stderr and exits 1.
_ADB_ERRORS = [
    ("unauthorized", "{device} has not authorized this computer for USB debugging",
     "unlock the phone and accept the 'Allow USB debugging?' prompt, then deploy again"),
    ("offline", "{device} is offline", "reconnect the cable or run `adb reconnect`"),
    ("not found", "adb cannot find {device}", "check `adb devices` lists it; pass its serial: --device adb:SERIAL"),
    ("no devices/emulators found", "no Android device is connected", "connect the phone with USB debugging on (`adb devices` must list it)"),
    ("more than one device", "several Android devices are connected", "choose one: --device adb:SERIAL (serials from `adb devices`)"),
    ("failed to connect", "adb cannot connect to {device}", "for wireless debugging run `adb connect HOST:PORT` first"),
]


class AdbTransport(Transport):
    kind = "adb"
    default_base = "/data/local/tmp/edgekit"  # the one place the adb shell user may write and execute
    tool_hint = "install adb (Debian/Ubuntu: apt-get install adb; or Android platform-tools) or set EDGEKIT_ADB"

    def __init__(self, serial: str | None = None, name: str | None = None):
        if serial is not None and (not serial or serial.startswith("-") or any(c.isspace() for c in serial)):
            raise UsageError(f"--device adb:{serial}: not a device serial", hint="use a serial from `adb devices`")
        super().__init__(name or (f"adb:{serial}" if serial else "adb"))
        self.serial = serial
        self.adb = os.environ.get(ADB_ENV, "adb")

    def adb_args(self) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else [])]

    def command(self, argv: list[str]) -> list[str]:
        return [*self.adb_args(), "shell", self.remote_command(argv)]

    def upload(self, local: Path, remote: str, timeout: float) -> None:
        done = self.run_host([*self.adb_args(), "push", str(local), remote], timeout, what="adb push")
        if done.returncode != 0:
            raise self.failure(f"adb push of {local.name} to {self.name} failed", done, stage="push",
                               hint="check free space on the phone (adb shell df /data/local/tmp)")

    def transport_error(self, done: Completed) -> DeviceFailure | None:
        # adb's own complaints are lines starting "adb: " or "error: "; anything
        # else on stderr came from the command on the phone.
        text = "\n".join(l for l in done.stderr.splitlines() if l.startswith(("adb: ", "error: ")))
        if done.returncode == 0 or not text:
            return None
        for needle, message, hint in _ADB_ERRORS:
            if needle in text:
                return DeviceFailure(message.format(device=self.name), hint=hint, stage="connect", detail=done.tail())
        return None
