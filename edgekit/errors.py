"""The one error hierarchy edgekit raises, and the exit codes it maps to.

Exit codes are a contract (see the README): scripts and CI jobs branch on them.
    0 ok
    1 internal error (a bug: please report it)
    2 usage, input or environment error (the message says what to change: a flag, a
      file, free disk space, a directory's permissions)
    3 a gate failed (accuracy drop, size, latency budget, lint)
    4 device or transport error
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import errno
import os
import shutil

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_DEVICE = 4


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose.

    `hint` is the fix, said to the user on its own line ("pass --target rpi4").
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class TrainingShareDone(EdgekitError):
    """Not an error: on a node other than the first of a multi-machine training run, this node's share
    is done and the result is on the first node (exit 0, the message says so)."""

    exit_code = 0


class UsageError(EdgekitError):
    """The user's input (a flag, a file, a model spec) is wrong: exit 2."""

    exit_code = EXIT_USAGE


class EnvironmentFault(UsageError):
    """The machine, not the input: a full disk, a directory edgekit may not write (exit 2)."""


# errno values that are the environment's fault, not edgekit's: the fix is on the machine.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
                       errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                       errno.EROFS: "read-only file system"}


def environment_fault(e: OSError) -> EnvironmentFault | None:
    """The EnvironmentFault an OSError stands for (naming the path and the fix), or None for other errors."""
    what = _ENVIRONMENT_ERRNOS.get(e.errno)
    if what is None:
        return None
    path = e.filename or e.filename2
    where = f" writing {path}" if path else " writing the build or a temporary file ($TMPDIR)"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        room = ""
        if path:
            directory = os.path.abspath(path)
            while directory and not os.path.isdir(directory):
                directory = os.path.dirname(directory)
            room = f" ({shutil.disk_usage(directory).free / 2**20:.1f} MB free in {directory})"
        return EnvironmentFault(f"{what}{where}{room}; nothing half-written was left behind",
                                hint="free some space there, or build elsewhere with --out DIR "
                                     "(temporary files go to $TMPDIR)")
    return EnvironmentFault(f"{what}{where}", hint="check the directory's permissions, or choose another --out")


class FormatUnsupported(UsageError):
    """One export format cannot take this model (a named limitation of its toolchain): exit 2.

    `--format all` skips such a format and builds the others; the message says
    which op or module and what to use instead."""


class GateError(EdgekitError):
    """The build ran but a quality gate failed: exit 3."""

    exit_code = EXIT_GATE


class BuildGateFailed(GateError):
    """A build finished, but an artifact failed the quality gate: `manifest` is what was written."""

    def __init__(self, message: str, hint: str | None, manifest: dict):
        super().__init__(message, hint)
        self.manifest = manifest


class DeviceError(EdgekitError):
    """Talking to a device failed: exit 4."""

    exit_code = EXIT_DEVICE
