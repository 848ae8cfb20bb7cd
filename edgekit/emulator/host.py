"""What the workstation needs to emulate an arm64 board, checked with a clear answer.

Building and entering the rootfs needs root (debootstrap, chroot, mount
namespaces) and the kernel's binfmt_misc with qemu-aarch64 registered, so that
an arm64 program started inside the rootfs runs through qemu-user-static.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgekit.errors import UsageError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# command -> the Debian package that provides it
TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-aarch64": "qemu-user",  # the dynamic build: the only one that loads TCG plugins
    "update-binfmts": "binfmt-support",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "gcc": "gcc",
    "zstd": "zstd",
    "unshare": "util-linux",
    "chroot": "coreutils",
    "ssh-keygen": "openssh-client",
}
INSTALL_HINT = "apt-get install " + " ".join(sorted(set(TOOLS.values()) - {"coreutils", "util-linux", "gcc"}))


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def check_host() -> None:
    """Raise a UsageError naming what is missing; nothing is changed on the host."""
    if os.geteuid() != 0:
        raise UsageError("the arm64 emulator needs root (debootstrap, chroot and mount namespaces)",
                         hint="run `make emulator` as root, or in a container/VM where you are root")
    missing = missing_tools()
    if missing:
        raise UsageError(f"the arm64 emulator needs {', '.join(missing)} on this machine",
                         hint=f"install them: {INSTALL_HINT}")
    ensure_binfmt()


def binfmt_ready() -> bool:
    entry = BINFMT / "qemu-aarch64"
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ensure_binfmt() -> None:
    """Mount binfmt_misc and enable qemu-aarch64 when they are not (both persist until reboot)."""
    if binfmt_ready():
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not binfmt_ready():
        raise UsageError("cannot register qemu-aarch64 with the kernel's binfmt_misc "
                         "(it cannot be mounted here: an unprivileged container?)",
                         hint="run on a machine or VM where `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` works")


def qemu_version() -> str:
    out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"
