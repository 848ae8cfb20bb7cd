"""Build directories appear whole or not at all.

A build writes into a hidden staging directory beside the final one and renames
it into place when everything succeeded; on any failure (or Ctrl-C) the staging
directory is removed, so nothing half-written ever looks like a finished build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from edgekit.errors import UsageError


@contextlib.contextmanager
def staged_build_dir(final: Path):
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UsageError(f"--out: '{final}' exists and is not a directory", hint="choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_dir(staging, final)


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap the finished build in; an older build of the same name is removed after.

    If the swap itself fails, the older build is put back where it was.
    """
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)  # left by a crashed process with our pid
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
