"""This computer as the device: `edgekit bench` and `--device local`.

Same steps as a remote board (push with verify, check, run) so that host numbers
are measured exactly the way device numbers are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekit.deploy.base import DeviceFailure, Transport


class LocalTransport(Transport):
    kind = "local"
    tool_hint = "the runner needs a POSIX host with sha256sum, mkdir and mv (coreutils)"

    def __init__(self, name: str = "host", base: str | None = None):
        super().__init__(name)
        self.default_base = base or str(Path.home() / "edgekit")

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)  # no shell in between

    def upload(self, local: Path, remote: str, timeout: float) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as e:
            raise DeviceFailure(f"copying {local.name} to {remote} failed: {e.strerror}", stage="push") from None
