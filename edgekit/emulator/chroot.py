"""Run a command inside the arm64 rootfs: chroot in a private mount namespace.

`unshare --mount --propagation private` gives the command its own mount table:
the /proc, /dev, cpuinfo and scratch mounts made here vanish with it, so an
interrupted run leaves nothing mounted on the host (proot is not an option:
Debian's proot leaks the host's `/`). arm64 programs inside run through the
kernel's binfmt_misc entry for qemu-aarch64-static, which reads QEMU_CPU.

Paths reach the shell script as positional arguments, never spliced into it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# $1 rootfs, $2 cpuinfo file, $3 "scratch" or "keep", $4 number of binds, then
# (host dir, rootfs dir) pairs, then the command. Scratch mounts tmpfs over
# /tmp and /root so runs write nothing into the cached rootfs.
_ENTER = r"""
set -e
root=$1; cpuinfo=$2; scratch=$3; n=$4; shift 4
mount -t proc proc "$root/proc"
mount --bind "$cpuinfo" "$root/proc/cpuinfo"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"   # cpuinfo (XNNPACK's, onnxruntime's) reads the CPU lists there
if [ "$scratch" = scratch ]; then
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  mount -t tmpfs -o mode=0700 tmpfs "$root/root"
fi
while [ "$n" -gt 0 ]; do
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  shift 2; n=$((n - 1))
done
exec chroot "$root" "$@"
"""


@dataclass(frozen=True)
class Guest:
    """How to enter one rootfs as one emulated core."""

    rootfs: Path
    qemu_cpu: str
    cpuinfo: Path  # a host file with the ARM /proc/cpuinfo text (cpus.cpuinfo_text)
    scratch: bool = True
    binds: tuple[tuple[Path, str], ...] = field(default=())

    def argv(self, command: list[str]) -> list[str]:
        pairs = [str(x) for src, dst in self.binds for x in (src, dst)]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "edgekit-enter",
                str(self.rootfs), str(self.cpuinfo), "scratch" if self.scratch else "keep", str(len(self.binds)),
                *pairs, *command]

    def env(self, extra: dict | None = None) -> dict:
        return {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": self.qemu_cpu, **(extra or {})}

    def run(self, command: list[str], timeout: float | None = None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command), env=self.env(extra_env), capture_output=True, text=True, timeout=timeout)

    def spawn(self, command: list[str], log, extra_env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.argv(command), env=self.env(extra_env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
