"""Build, cache and restore the arm64 Debian rootfs.

First build (several minutes, needs the Debian mirror and PyPI):
debootstrap --foreign on the host, its second stage inside the rootfs under
qemu, then a venv at /opt/edgekit/venv with numpy and the formats' runtimes installed
from aarch64 wheels downloaded on the host (pip inside the guest would work
but takes many times longer under emulation). The result is packed into
rootfs.tar.zst; later builds restore that in seconds.

Everything is built under a `.partial` name and renamed when complete, so an
interrupted build never leaves something that looks usable.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.emulator.chroot import Guest
from edgekit.emulator.cpus import cpuinfo_text
from edgekit.emulator.paths import ARCH, MARKER, SUITE, VENV, EmulatorPaths
from edgekit.errors import EdgekitError

# python3-venv: the guest's Python runner environment; openssh-server: the
# emulated board's sshd; ca-certificates: pip over https if a user adds packages.
PACKAGES = ("python3", "python3-venv", "ca-certificates", "openssh-server")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Every wheel tag bookworm's glibc 2.36 runs. pip takes --platform literally (one tag
# does not imply the older ones), and ai-edge-litert 1.4.0 ships manylinux_2_17 only.
GUEST_GLIBC_MINOR = 36
AARCH64_PLATFORMS = (*[f"manylinux_2_{minor}_aarch64" for minor in range(GUEST_GLIBC_MINOR, 16, -1)],
                     "manylinux2014_aarch64")


def apt_mirror() -> str:
    """The Debian mirror the host's apt already uses (reachable from here), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*(\S+)|deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main)", text, re.M):
            uri = m.group(1) or m.group(2)
            if uri and "security" not in uri:
                return uri
    return DEFAULT_MIRROR


def wheel_versions(guest_wheels: dict[str, str | None]) -> dict[str, str]:
    """Exact versions for the guest: numpy and executorch as on the host, plus each format's
    guest wheels (formats/*.py GUEST_WHEELS; None: the host's version), so host and emulated
    runs use the same runtime wherever an aarch64 wheel of it exists."""
    from importlib.metadata import version

    wanted = {"numpy": None, "executorch": None, **guest_wheels}
    return {name: pinned or version(name) for name, pinned in sorted(wanted.items())}


def download_wheels(dest: Path, versions: dict[str, str], run) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={v}" for name, v in versions.items()]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
         *[arg for tag in AARCH64_PLATFORMS for arg in ("--platform", tag)], "--dest", str(dest), *specs],
        "download aarch64 wheels")
    return sorted(dest.glob("*.whl"))


def restore(paths: EmulatorPaths, run) -> None:
    partial = paths.rootfs.with_name("rootfs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run(["tar", "--zstd", "-xpf", str(paths.archive), "-C", str(partial), "--numeric-owner"], f"unpack {paths.archive}")
    partial.rename(paths.rootfs)


def build(paths: EmulatorPaths, mirror: str, versions: dict[str, str], run, steps) -> None:
    """debootstrap + second stage + runtimes + marker, packed to the archive; leaves paths.rootfs."""
    partial = paths.rootfs.with_name("rootfs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with steps.step("debootstrap", label=f"debootstrap {SUITE} {ARCH} (first stage, host)"):
        run(["debootstrap", "--arch", ARCH, "--foreign", "--variant=minbase", "--include=" + ",".join(PACKAGES),
             SUITE, str(partial), mirror], "debootstrap first stage")
    with _guest(partial) as guest, steps.step("second-stage", label="debootstrap second stage (under qemu: minutes)"):
        run(guest.argv(["/debootstrap/debootstrap", "--second-stage"]), "debootstrap second stage", env=guest.env())
    finish(paths, partial, versions, run, steps)


def update(paths: EmulatorPaths, versions: dict[str, str], run, steps) -> None:
    """The wanted guest wheels into an existing rootfs (pip replaces other versions), marker and archive anew."""
    partial = paths.rootfs.with_name("rootfs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    paths.rootfs.rename(partial)
    finish(paths, partial, versions, run, steps)


def finish(paths: EmulatorPaths, partial: Path, versions: dict[str, str], run, steps) -> None:
    """Runtimes and the marker into a bootstrapped rootfs, then pack it and make it the rootfs."""
    with steps.step("wheels", label="aarch64 runtimes into " + VENV):
        wheels = download_wheels(paths.wheels, {k: v for k, v in versions.items() if k != "executorch"}, run)
        guest = {name.replace("_", "-").lower() for name in versions if name != "executorch"}
        wanted = [w for w in wheels if w.name.split("-")[0].replace("_", "-").lower() in guest]
        with _guest(partial, binds=((paths.wheels, "/mnt/wheels"),)) as guest:
            run(guest.argv(["/usr/bin/python3", "-m", "venv", VENV]), "create the guest venv", env=guest.env())
            run(guest.argv([f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-deps",
                            *[f"/mnt/wheels/{w.name}" for w in wanted]]), "install the guest runtimes", env=guest.env())
    (partial / MARKER.lstrip("/")).write_text(json.dumps({"emulated": True, "by": "qemu-user", "suite": SUITE,
                                                          "runtimes": versions}, indent=1) + "\n")
    with steps.step("pack", label=f"pack {paths.archive.name}"):
        archive_partial = paths.archive.with_name(paths.archive.name + ".partial")
        run(["tar", "--zstd", "-cpf", str(archive_partial), "--numeric-owner", "-C", str(partial), "."], "pack the rootfs")
        archive_partial.replace(paths.archive)
    partial.rename(paths.rootfs)


@contextlib.contextmanager
def _guest(root: Path, binds=()):
    """A Guest on a rootfs being built: writes go into it (no scratch mounts)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-emu-") as tmp:
        cpuinfo = Path(tmp) / "cpuinfo"
        cpuinfo.write_text(cpuinfo_text("cortex-a72", 1))
        yield Guest(root, "cortex-a72", cpuinfo, scratch=False, binds=tuple(binds))


def checked_run(argv: list[str], what: str, env: dict | None = None) -> None:
    """Run one build command; on failure, raise with the tail of its output."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise EdgekitError(f"{what} failed (exit status {done.returncode}):\n{tail}",
                           hint="fix the cause above and run `make emulator` again (finished steps are reused)")

