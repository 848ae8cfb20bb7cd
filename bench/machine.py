"""Facts about the computer and software a benchmark ran on (top of RESULTS.md)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def facts() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        # Other work on the machine skews multi-thread timings most: record how busy it was.
        "load_average_at_start": [round(v, 2) for v in load] if load else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        **{dist: _version(dist) for dist in ("torch", "executorch", "torchao", "onnx", "onnxruntime", "edgekit")},
    }
