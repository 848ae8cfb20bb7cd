"""Build directories appear whole or not at all, and a rebuild never loses device measurements.

A build writes into a hidden staging directory beside the final one and renames
it into place when everything succeeded; on any failure (or Ctrl-C) the staging
directory is removed, so nothing half-written ever looks like a finished build.
Staging directories of builds killed outright (SIGKILL, power loss) are removed by
the next build into the same place, once their process is gone.

Latencies measured on real boards are the most expensive data a build dir holds:
rebuilding into a directory that has `device_runs/` carries them into the new
build, listed under the manifest's `previous_device_runs` with the sha256 of the
artifact they measured (reports never mix them with the new artifact's runs).

Two builds finishing into the same place at once take turns for the final swap
(a lock on the parent directory); the later one replaces the earlier and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
from pathlib import Path

from edgekit.errors import UsageError
from edgekit.manifest import (
    MANIFEST,
    format_records,
    loads_strict,
    manifest_lock,
    write_json_atomic,
)

RUNS_DIR = "device_runs"
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)$")


@contextlib.contextmanager
def staged_build_dir(final: Path, warn=None):
    """Yields the staging directory; on success swaps it in as `final`. `warn(message)` hears
    about device runs carried over from the build it replaced."""
    final = Path(final)
    if _is_non_directory(final):
        raise UsageError(f"--out: '{final}' exists and is not a directory", hint="choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.filename is None and e.errno is not None:  # a failed write says no path: it was the build's
            raise OSError(e.errno, e.strerror, str(final)) from e
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with _parent_lock(final.parent):
        message = _carry_over_device_runs(final, staging)
        _replace_dir(staging, final)
    if message and warn is not None:
        warn(message)


def _is_non_directory(path: Path) -> bool:
    """One stat: another build may be swapping `path` at this very moment (exists, then gone)."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def remove_stale_staging(final: Path) -> list[Path]:
    """`.NAME.partial-PID` / `.NAME.old-PID` beside `final` whose process no longer runs."""
    removed = []
    for path in final.parent.glob(f".{final.name}.*-*"):
        m = _STAGING.match(path.name)
        if m and m["name"] == final.name and not _alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _carry_over_device_runs(final: Path, staging: Path) -> str | None:
    """Copy the earlier build's device_runs/ into the new one and list the earlier manifest's run
    summaries under `previous_device_runs`, each with the sha256 of the artifact it measured.
    Holds the earlier build's manifest lock, so a deploy finishing meanwhile is not lost."""
    runs = final / RUNS_DIR
    if not runs.is_dir() or runs.is_symlink():
        return None

    with manifest_lock(final):
        try:
            old = loads_strict((final / MANIFEST).read_text())
            digests = {fmt: r["artifact"]["sha256"] for fmt, r in format_records(old).items()}
            summaries = list(old.get("device_runs") or []) + list(old.get("previous_device_runs") or [])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            digests, summaries = {}, []  # unreadable: the run records themselves still say what ran
        shutil.copytree(runs, staging / RUNS_DIR, symlinks=True, dirs_exist_ok=True)
    for summary in summaries:
        summary.setdefault("artifact_sha256", digests.get(summary.get("format")))
    records = sorted(p.name for p in (staging / RUNS_DIR).glob("*.json"))
    message = (f"kept {len(records)} device run record(s) of the build this one replaces in {final / RUNS_DIR}: they "
               f"measured the earlier artifact and are listed under 'previous_device_runs'")
    manifest = staging / MANIFEST
    if manifest.is_file():
        doc = loads_strict(manifest.read_text())
        doc["previous_device_runs"] = summaries
        doc.setdefault("warnings", []).append(message)
        write_json_atomic(manifest, doc)
    return message


@contextlib.contextmanager
def _parent_lock(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
