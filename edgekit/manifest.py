"""manifest.json: the one record of a build that everything downstream reads."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict:
    """Versions of what made the artifact: needed to reproduce or explain a result."""
    from edgekit import __version__

    found = {"edgekit": __version__, "python": platform.python_version()}
    for dist in ("torch", "executorch", "torchao", "onnx", "onnxruntime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write to a temp name and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_manifest(build_dir: str | Path) -> dict:
    """A finished build's manifest; a path that isn't one is the user's to fix (exit 2)."""
    from edgekit.errors import UsageError

    path = Path(build_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"'{build_dir}' is not a build directory (no {MANIFEST})",
                         hint="pass the directory `edgekit build` wrote, e.g. build/digits-rpi4")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path}: not an edgekit manifest (invalid JSON: {e})", hint="rebuild with `edgekit build`") from None
