"""Where the emulator's pieces live: one directory under the user cache dir.

    $EDGEKIT_CACHE_DIR or $XDG_CACHE_HOME/edgekit or ~/.cache/edgekit
      emulator/bookworm-arm64/
        rootfs/                the unpacked rootfs (restored from the archive when missing)
        rootfs.tar.zst         the cached archive (~165 MB): a rebuild takes minutes, a restore seconds
        wheels/                aarch64 wheels downloaded on the host
        native/                edgekit-et-runner + its shared libraries, insn_count.so
        ready.json             what was built, with which versions (written last)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.cache import cache_dir

SUITE = "bookworm"  # Debian 12: python3.11, the Python the aarch64 wheels are built for
ARCH = "arm64"
VENV = "/opt/edgekit/venv"  # inside the rootfs
MARKER = "/etc/edgekit-emulator.json"  # inside the rootfs: the runner reports its board as emulated
RUNNER_NAME = "edgekit-et-runner"


@dataclass(frozen=True)
class EmulatorPaths:
    root: Path

    @classmethod
    def default(cls) -> "EmulatorPaths":
        return cls(cache_dir() / "emulator" / f"{SUITE}-{ARCH}")

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def archive(self) -> Path:
        return self.root / "rootfs.tar.zst"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def native(self) -> Path:
        return self.root / "native"

    @property
    def runner(self) -> Path:
        return self.native / RUNNER_NAME

    @property
    def plugin(self) -> Path:
        return self.native / "insn_count.so"

    @property
    def ready(self) -> Path:
        return self.root / "ready.json"
