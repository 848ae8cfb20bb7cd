"""edgekit: take a trained PyTorch model to a phone, a Raspberry Pi or any ARM board.

The package import is kept light on purpose (no torch here): `edgekit --help`
must start fast, so heavy runtimes are imported inside the functions that use them.
"""

__version__ = "0.1.0"

from edgekit.errors import DeviceError, EdgekitError, GateError, UsageError  # noqa: E402

__all__ = ["__version__", "EdgekitError", "UsageError", "GateError", "DeviceError"]
