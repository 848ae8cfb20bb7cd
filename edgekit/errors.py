"""The one error hierarchy edgekit raises, and the exit codes it maps to.

Exit codes are a contract (see the README): scripts and CI jobs branch on them.
    0 ok
    1 internal error (a bug: please report it)
    2 usage or input error (the message says what to change)
    3 a gate failed (accuracy drop, size, latency budget, lint)
    4 device or transport error
"""

from __future__ import annotations

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


class UsageError(EdgekitError):
    """The user's input (a flag, a file, a model spec) is wrong: exit 2."""

    exit_code = EXIT_USAGE


class GateError(EdgekitError):
    """The build ran but a quality gate failed: exit 3."""

    exit_code = EXIT_GATE


class DeviceError(EdgekitError):
    """Talking to a device failed: exit 4."""

    exit_code = EXIT_DEVICE
