"""Export formats: one module each, found by name or by artifact suffix.

What varies per format lives in its module (the interface: formats/base.py);
adding a format is adding a module here and its name below. Every module is
cheap to import: the runtimes and toolkits load inside its functions.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgekit.errors import UsageError

# format name -> module, in the order `--format all` builds them after the target's own.
_MODULES = {"executorch": "executorch", "torchscript-lite": "torchscript_lite", "onnx": "onnx", "litert": "litert"}

FORMATS = tuple(_MODULES)


def get_format(name: str):
    """The format module called `name` (--format, a manifest's `format`)."""
    if name not in _MODULES:
        raise UsageError(f"unknown format '{name}'", hint=f"choose one of: {', '.join(FORMATS)}")
    return importlib.import_module(f"edgekit.formats.{_MODULES[name]}")


def all_formats() -> list:
    return [get_format(name) for name in FORMATS]


def for_artifact(path: str | Path):
    """The format an artifact file is in, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in all_formats():
        if fmt.SUFFIX == suffix:
            return fmt
    raise UsageError(f"'{path}' is not an artifact edgekit knows (suffix {suffix or 'none'})",
                     hint="artifacts are " + ", ".join(f"{f.SUFFIX} ({f.NAME})" for f in all_formats()))


def usable() -> tuple[str, ...]:
    """The formats this installation can build (an optional extra may be missing)."""
    return tuple(f.NAME for f in all_formats() if f.available() is None)
