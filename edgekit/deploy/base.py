"""What every transport shares: running a command on the device, and a verified push.

A transport only says how to reach its device (`command`: the host argv that
runs an argv there) and, if it has a better way than piping through `cat`, how
to copy bytes (`upload`). Everything else lives here once: quoting, timeouts,
the temp-name + sha256 + rename push, and turning failures into DeviceFailure.

Nothing is run through a shell string built from unquoted input: device-side
commands are argv lists, joined with shlex quoting only because ssh and adb
hand the device one command string.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import DeviceError
from edgekit.manifest import sha256_file

SMALL_COMMAND_TIMEOUT = 60.0  # mkdir, mv, sha256sum, uname: seconds before we call the device stuck
UPLOAD_SECONDS_PER_MB = 1.0  # budget per MB on top of SMALL_COMMAND_TIMEOUT (a slow Wi-Fi link is ~2 MB/s)
EXIT_ALARM = 128 + signal.SIGALRM  # a shell reports a process killed by SIGALRM as 142


def reporting_signals(argv: list[str]) -> list[str]:
    """argv under a shell that waits for it, so a process killed by a signal reports 128+N.

    Run directly, the login shell would exec it; a signal death then ends the ssh
    session itself and ssh exits 255, which looks exactly like a lost link.
    (`exit $?` keeps sh from exec'ing the last command, which dash does.)"""
    return ["sh", "-c", '"$@"; exit $?', "sh", *argv]


class DeviceFailure(DeviceError):
    """A device step failed. `stage` says which (connect, arch, push, check, bench);
    `detail` keeps the device's own words (stderr tail) for the run record."""

    def __init__(self, message: str, hint: str | None = None, stage: str | None = None, detail: str | None = None):
        super().__init__(message, hint)
        self.stage, self.detail = stage, detail


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 12) -> str:
        """The last lines the device printed on stderr: what a user needs to see of a failure."""
        return "\n".join(self.stderr.strip().splitlines()[-lines:])


class Transport:
    kind = "?"
    default_base = "edgekit"  # where builds go on the device, per transport
    tool_hint = ""  # how to install the host-side tool (ssh, adb) when it is missing

    def __init__(self, name: str):
        self.name = name

    # --- what a transport provides ---------------------------------------------

    def command(self, argv: list[str]) -> list[str]:
        """The host-side argv that runs `argv` on the device."""
        raise NotImplementedError

    def transport_error(self, done: Completed) -> DeviceFailure | None:
        """A failure of the link itself (not of the command), or None."""
        return None

    def upload(self, local: Path, remote: str, timeout: float) -> None:
        """Copy one file's bytes to `remote` (a temp name). Default: pipe it into `cat` on the device."""
        with open(local, "rb") as f:
            done = self.run(["sh", "-c", 'cat > "$1"', "sh", remote], timeout, stdin=f)
        if done.returncode != 0:
            raise self.failure(f"upload of {local.name} to {self.name} failed", done, stage="push",
                               hint="check free space and permissions in the remote directory (--remote-dir)")

    # --- shared behaviour ------------------------------------------------------------

    @staticmethod
    def remote_command(argv: list[str]) -> str:
        return shlex.join(argv)

    def run(self, argv: list[str], timeout: float = SMALL_COMMAND_TIMEOUT, stdin=None) -> Completed:
        """Run argv on the device. Link failures raise; the command's own exit status is returned."""
        return self.run_host(self.command(argv), timeout, stdin, what=argv[0])

    def run_host(self, cmd: list[str], timeout: float, stdin=None, what: str = "") -> Completed:
        try:
            proc = subprocess.run(cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise DeviceFailure(f"'{cmd[0]}' is not installed on this computer (needed to reach {self.name})",
                                hint=self.tool_hint, stage="connect") from None
        except subprocess.TimeoutExpired as e:
            raise DeviceTimeout(self.name, what, timeout, (e.stderr or b"").decode(errors="replace")) from None
        done = Completed(cmd, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        link_error = self.transport_error(done)
        if link_error is not None:
            raise link_error
        return done

    def check(self, argv: list[str], what: str, stage: str, timeout: float = SMALL_COMMAND_TIMEOUT, hint: str | None = None) -> Completed:
        done = self.run(argv, timeout)
        if done.returncode != 0:
            raise self.failure(f"{what} failed on {self.name}", done, stage=stage, hint=hint)
        return done

    def failure(self, message: str, done: Completed, stage: str, hint: str | None = None) -> DeviceFailure:
        tail = done.tail()
        last = tail.splitlines()[-1] if tail else f"exit status {done.returncode}"
        return DeviceFailure(f"{message}: {last}", hint=hint, stage=stage, detail=tail)

    def arch(self) -> str:
        """The device's machine name (uname -m): x86_64, aarch64, armv7l..."""
        return self.check(["uname", "-m"], "uname -m", stage="connect").stdout.strip()

    def sha256s(self, paths: list[str]) -> dict[str, str]:
        """The device's own sha256 of each file that exists there (missing ones are left out)."""
        if not paths:
            return {}
        done = self.run(["sha256sum", *paths])  # exits 1 if some are missing; the others are still printed
        digests = {}
        for line in done.stdout.splitlines():
            digest, _, path = line.partition("  ")
            if len(digest) == 64 and path in paths:
                digests[path] = digest.lower()
        return digests

    def push(self, files: list[tuple[Path, str]], remote_dir: str) -> list[dict]:
        """Upload to temp names, verify the sha256 the device computes, rename into place.

        A file under its final name on the device is therefore always complete and
        verified, and a new artifact never lands beside an old runner: nothing is
        renamed unless every file verified. Files already there with the right
        digest are not sent again. Round trips are batched (one sha256sum, one mv
        for all files): each is an ssh handshake, half a second on a Pi.
        """
        expected = {name: sha256_file(local) for local, name in files}
        present = self.sha256s([f"{remote_dir}/{name}" for _, name in files])
        todo = [(local, name) for local, name in files if present.get(f"{remote_dir}/{name}") != expected[name]]
        token = uuid.uuid4().hex[:8]
        temps = {name: f"{remote_dir}/.{name}.partial-{token}" for _, name in todo}
        try:
            for local, name in todo:
                self.upload(local, temps[name], SMALL_COMMAND_TIMEOUT + UPLOAD_SECONDS_PER_MB * local.stat().st_size / 1e6)
            computed = self.sha256s(list(temps.values()))
            for name, temp in temps.items():
                if computed.get(temp) != expected[name]:
                    raise DeviceFailure(
                        f"checksum mismatch after uploading {name} to {self.name}: the device computed "
                        f"{computed.get(temp) or 'no digest'}, expected {expected[name]}",
                        hint="the copy was corrupted in transit or on the device's storage; deploy again, "
                             "and check the device's disk (dmesg, fsck) if it repeats",
                        stage="push",
                    )
            if temps:
                pairs = [arg for name, temp in temps.items() for arg in (temp, f"{remote_dir}/{name}")]
                self.check(["sh", "-c", 'while [ $# -gt 1 ]; do mv -f "$1" "$2" || exit 1; shift 2; done', "sh", *pairs],
                           "renaming the uploaded files into place", stage="push")
        except BaseException:
            self._remove_quietly(list(temps.values()))
            raise
        return [{"file": name, "sha256": expected[name], "sent": name in temps} for _, name in files]

    def _remove_quietly(self, remote: list[str]) -> None:
        """Best effort: a temp file left behind is harmless (it never has a final name)."""
        if not remote:
            return
        try:
            self.run(["rm", "-f", *remote], timeout=15)
        except DeviceError:
            pass


class DeviceTimeout(DeviceFailure):
    def __init__(self, device: str, what: str, seconds: float, stderr: str):
        tail = "\n".join(stderr.strip().splitlines()[-12:])
        super().__init__(
            f"{what or 'a command'} on {device} did not finish within {seconds:g} s",
            hint="the device may be overloaded or hung; raise --timeout for big models or slow boards",
            detail=tail or None,
        )
        self.seconds = seconds
