"""A real OpenSSH server on 127.0.0.1 for the deploy tests: the device.

Debian's /usr/sbin/sshd runs in the foreground on a free port with a throwaway
host key; client keys are generated here too. Everything lives in one temp
directory, and the product reaches it only through a client config file that
the tests pass with `--ssh-config` (the documented way to point edgekit at
keys, ports and known_hosts other than ~/.ssh's).

Some client keys carry an authorized_keys `command=` so that one real server
can also play a faulty device (each is explained where it is defined). Host
aliases in the client config pick the key:

    USER@127.0.0.1:PORT       a healthy device
    USER@edgekit-quota        its uploads hit a file-size limit (a full disk)
    USER@edgekit-liar         its sha256sum lies (corrupted storage, as edgekit sees it)
    USER@edgekit-stranger     a key the server does not know
    USER@edgekit-unknown      a client that has never seen the server's host key
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
QUOTA_KB = 64  # smaller than the digits model.pte (~100 KB), larger than runner.py (~20 KB)


def sshd_available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class SshServer:
    def __init__(self, root: Path, session_env: dict | None = None):
        self.root = root
        self.session_env = session_env or {}  # what the device's login sets (pam_systemd's XDG_RUNTIME_DIR)
        self.user = getpass.getuser()
        self.port = None
        self.proc = None
        self.keys = root / "keys"
        self.client_config = root / "ssh_config"
        self.log = root / "sshd.log"
        self.liar_bin = root / "liar-bin"

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def alias(self, name: str) -> str:
        return f"{self.user}@edgekit-{name}"

    def start(self) -> "SshServer":
        self.keys.mkdir(parents=True)
        host_pub = keygen(self.root / "host_ed25519")
        pubs = {name: keygen(self.keys / name) for name in ("ok", "quota", "liar", "stranger")}
        self._write_liar_bin()
        self._write_authorized_keys(pubs)
        for attempt in range(3):  # the port is free when picked; retry if someone took it since
            self.port = free_port()
            self._write_server_config()
            (self.root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
            (self.root / "empty_known_hosts").write_text("")
            self._write_client_config()
            if self._spawn():
                return self
        raise RuntimeError(f"sshd did not start; see {self.log}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # --- files -------------------------------------------------------------------------

    def _write_liar_bin(self) -> None:
        # A sha256sum that answers a digest that is not the file's: what edgekit sees
        # when bytes were corrupted in transit or on the device's storage.
        self.liar_bin.mkdir()
        liar = self.liar_bin / "sha256sum"
        liar.write_text('#!/bin/sh\nfor f in "$@"; do echo "%s  $f"; done\n' % ("0" * 64))
        liar.chmod(0o755)

    def _write_authorized_keys(self, pubs: dict) -> None:
        # command= runs instead of what the client asked; $SSH_ORIGINAL_COMMAND is that request.
        forced = {
            # ulimit -f (KB in bash): any file written past the limit is cut off with SIGXFSZ,
            # as an upload is when the device's disk fills up mid-way.
            "quota": f'command="ulimit -f {QUOTA_KB}; eval \\"$SSH_ORIGINAL_COMMAND\\""',
            "liar": f'command="PATH={self.liar_bin}:$PATH; eval \\"$SSH_ORIGINAL_COMMAND\\""',
        }
        lines = [f"{forced[name]} {pub}" if name in forced else pub for name, pub in pubs.items() if name != "stranger"]
        (self.root / "authorized_keys").write_text("\n".join(lines) + "\n")

    def _write_server_config(self) -> None:
        (self.root / "sshd_config").write_text(f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.root}/host_ed25519
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# The tests run as root here and in CI; key-only root login is what a Pi image allows too.
PermitRootLogin prohibit-password
# The key files live under /tmp, which StrictModes would refuse (group/world-writable parents).
StrictModes no
UsePAM no
LogLevel VERBOSE
""" + (("SetEnv " + " ".join(f"{k}={v}" for k, v in self.session_env.items()) + "\n") if self.session_env else ""))

    def _write_client_config(self) -> None:
        k = self.keys
        self.client_config.write_text(f"""
Host edgekit-quota edgekit-liar edgekit-stranger edgekit-unknown
  HostName 127.0.0.1
  Port {self.port}
Host edgekit-quota
  IdentityFile {k}/quota
Host edgekit-liar
  IdentityFile {k}/liar
Host edgekit-stranger
  IdentityFile {k}/stranger
Host edgekit-unknown
  IdentityFile {k}/ok
  UserKnownHostsFile {self.root}/empty_known_hosts
Host 127.0.0.1
  IdentityFile {k}/ok
Host *
  IdentitiesOnly yes
  UserKnownHostsFile {self.root}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  LogLevel ERROR
""")

    def _spawn(self) -> bool:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir; the Debian service creates it, we are not the service
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                         stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        return True
            except OSError:
                time.sleep(0.1)
        self.stop()
        return False



class SystemdUserManager:
    """A real systemd user manager (`systemd --user`), for the device that runs services with systemd.

    This machine (a container) was not booted by systemd, and `systemd --user` refuses to start
    unless /run/systemd/system exists; in a private mount namespace (unshare -m, root) a tmpfs over
    /run/systemd provides it without touching the host. Its runtime and config directories are
    temp dirs; the device's ssh sessions get them through sshd's SetEnv, as a login gets them from
    pam_systemd on a Raspberry Pi."""

    BINARY = "/usr/lib/systemd/systemd"

    def __init__(self, root: Path):
        self.runtime_dir = root / "xdg-runtime"
        self.config_home = root / "xdg-config"
        self.proc = None

    @classmethod
    def available(cls) -> str | None:
        """None, or why it cannot run here."""
        import os

        if not Path(cls.BINARY).is_file() or shutil.which("systemctl") is None:
            return "systemd is not installed (Debian: apt-get install systemd)"
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return "a private mount namespace needs root and unshare"
        return None

    @property
    def env(self) -> dict:
        return {"XDG_RUNTIME_DIR": str(self.runtime_dir), "XDG_CONFIG_HOME": str(self.config_home)}

    def start(self) -> "SystemdUserManager":
        import os

        self.runtime_dir.mkdir(mode=0o700, parents=True)
        self.config_home.mkdir(parents=True)
        script = ("mount -t tmpfs tmpfs /run/systemd 2>/dev/null || { mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; }; "
                  f"mkdir /run/systemd/system && exec {self.BINARY} --user")
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env={**os.environ, **self.env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # (is-system-running says "offline" for a manager not started by a login, yet it serves)
            if self.systemctl("show-environment").returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("systemd --user did not come up")

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        import os

        return subprocess.run(["systemctl", "--user", *args], env={**os.environ, **self.env}, capture_output=True, text=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.systemctl("exit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
