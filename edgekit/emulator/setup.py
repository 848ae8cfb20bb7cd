"""`make emulator` / `edgekit emulator build`: every piece, each reused when already built."""

from __future__ import annotations

import json
import shutil
import time

from edgekit.emulator import host, native_build, rootfs
from edgekit.emulator.paths import MARKER, EmulatorPaths
from edgekit.errors import UsageError
from edgekit.manifest import write_json_atomic


def build(paths: EmulatorPaths, steps, guest_wheels: dict[str, str | None], mirror: str | None = None,
          rebuild: bool = False) -> dict:
    """`guest_wheels`: what the formats run in the guest's python (formats/*.py GUEST_WHEELS)."""
    host.check_host()
    versions = rootfs.wheel_versions(guest_wheels)  # the guest gets the host's runtimes, so their outputs compare
    paths.root.mkdir(parents=True, exist_ok=True)
    run = rootfs.checked_run
    if rebuild:
        _discard(paths, archive=True)
    if not paths.rootfs.exists() and paths.archive.is_file():
        with steps.step("restore", label=f"restore the rootfs from {paths.archive}"):
            rootfs.restore(paths, run)
    if paths.rootfs.exists() and rootfs_runtimes(paths) != versions:
        # Other or more guest packages (an edgekit upgrade): installed into the rootfs as it is, which is
        # then packed again; the debootstrap (minutes) is not repeated.
        paths.ready.unlink(missing_ok=True)
        rootfs.update(paths, versions, run, steps)
    if not paths.rootfs.exists():
        rootfs.build(paths, mirror or rootfs.apt_mirror(), versions, run, steps)
    sources = native_build.sources_digest()
    ready = status(paths)
    if (not paths.runner.is_file() or not paths.plugin.is_file() or ready.get("runtimes") != versions
            or ready.get("native_sources") != sources):
        with steps.step("native", label="cross-compile edgekit-et-runner (aarch64) and the qemu plugin"):
            rootfs.download_wheels(paths.wheels, {"executorch": versions["executorch"]}, run)
            native_build.build_runner(paths, versions["executorch"], run)
    doc = {"built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "qemu": host.qemu_version(),
           "runtimes": versions, "native_sources": sources, "rootfs": str(paths.rootfs), "archive": str(paths.archive),
           "runner": str(paths.runner), "plugin": str(paths.plugin)}
    write_json_atomic(paths.ready, doc)
    return doc


def rootfs_runtimes(paths: EmulatorPaths) -> dict | None:
    """The runtime versions installed in the rootfs, from the marker written when it was built."""
    try:
        return json.loads((paths.rootfs / MARKER.lstrip("/")).read_text()).get("runtimes")
    except (OSError, ValueError):
        return None


def _discard(paths: EmulatorPaths, archive: bool) -> None:
    paths.ready.unlink(missing_ok=True)
    shutil.rmtree(paths.rootfs, ignore_errors=True)
    if archive:
        paths.archive.unlink(missing_ok=True)


def status(paths: EmulatorPaths) -> dict:
    try:
        return json.loads(paths.ready.read_text())
    except (OSError, ValueError):
        return {}


def require_ready(paths: EmulatorPaths) -> dict:
    """The build record, or exit 2 telling the user to build the emulator first."""
    doc = status(paths)
    if not doc or not paths.runner.is_file() or not (paths.rootfs / MARKER.lstrip("/")).is_file():
        raise UsageError(f"the arm64 emulator is not built (looked in {paths.root})",
                         hint="run `make emulator` once: several minutes, needs root, the Debian mirror and PyPI")
    return doc
