"""An emulated Raspberry Pi on 127.0.0.1: the rootfs's own sshd, running under qemu.

    edgekit emulator board --target rpi4 --port 2222 --authorized-key ~/.ssh/id_ed25519.pub

starts Debian's arm64 /usr/sbin/sshd inside the rootfs (chroot in a private
mount namespace, QEMU_CPU and /proc/cpuinfo of the target's core), so that
`make deploy DEVICE=root@127.0.0.1:2222 BUILD=...` exercises the whole device
path on ARM code: ssh, push and checksum with the board's own tools, and the
runner (edgekit-et-runner for .pte; onnxruntime and ai-edge-litert in /opt/edgekit/venv for the others).

Everything the board writes goes to tmpfs (/root, /tmp) and disappears when it
stops; its host key, authorized_keys and config are in a directory of the
caller's, bind-mounted read-only at /etc/edgekit-board.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgekit.emulator.chroot import Guest
from edgekit.emulator.cpus import cpuinfo_text
from edgekit.emulator.paths import VENV, EmulatorPaths

CONFIG_DIR = "/etc/edgekit-board"
START_TIMEOUT = 120.0  # sshd's first start under qemu takes a few seconds; a loaded host, more


def sshd_config(port: int, qemu_cpu: str) -> str:
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {CONFIG_DIR}/host_ed25519",
        f"AuthorizedKeysFile {CONFIG_DIR}/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PidFile none",
        # Every program a session starts is a new qemu process: it must get the core too.
        f"SetEnv QEMU_CPU={qemu_cpu} PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "",
    ])


class Board:
    def __init__(self, paths: EmulatorPaths, qemu_cpu: str, state: Path, port: int, authorized_keys: str):
        self.paths, self.qemu_cpu, self.state, self.port = paths, qemu_cpu, Path(state), port
        self.authorized_keys = authorized_keys
        self.proc: subprocess.Popen | None = None
        self.log = self.state / "sshd.log"

    @property
    def address(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def host_public_key(self) -> str:
        return (self.state / "etc" / "host_ed25519.pub").read_text().strip()

    def start(self) -> "Board":
        etc = self.state / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        key = etc / "host_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-board", "-f", str(key)], check=True)
        (etc / "authorized_keys").write_text(self.authorized_keys.strip() + "\n")
        (etc / "sshd_config").write_text(sshd_config(self.port, self.qemu_cpu))
        for f in etc.iterdir():
            f.chmod(0o600 if f.name in ("host_ed25519", "authorized_keys") else 0o644)
        privsep = self.state / "run-sshd"  # sshd's privilege separation directory: root-owned, not writable by others
        privsep.mkdir(mode=0o755, exist_ok=True)
        cpuinfo = self.state / "cpuinfo"
        cpuinfo.write_text(cpuinfo_text(self.qemu_cpu, os.cpu_count() or 1))
        guest = Guest(self.paths.rootfs, self.qemu_cpu, cpuinfo, scratch=True,
                      binds=((etc, CONFIG_DIR), (privsep, "/run/sshd")))
        with open(self.log, "ab") as log:
            self.proc = guest.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", f"{CONFIG_DIR}/sshd_config"], log)
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the emulated board's sshd exited ({self.proc.returncode}); see {self.log}:\n"
                                   + self.log.read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(30)
                    if s.recv(64).startswith(b"SSH-2.0"):
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the emulated board's sshd did not answer on 127.0.0.1:{self.port} within {START_TIMEOUT:g} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # sshd and every session it started (own process group)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> "Board":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
