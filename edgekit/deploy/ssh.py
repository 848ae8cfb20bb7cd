"""Reach a board with the system OpenSSH client.

Using the user's own `ssh` means ~/.ssh/config, agents, jump hosts and
known_hosts work exactly as they do in a terminal. We add only:
BatchMode=yes (never prompt: a deploy must fail, not hang, on a missing key),
a connect timeout and keep-alives (a dropped link fails a transfer instead of
stalling it). We never set StrictHostKeyChecking: an unknown host key is an
error the user resolves by checking the fingerprint, never something we accept.
"""

from __future__ import annotations

import re

from edgekit.deploy.base import Completed, DeviceFailure, Transport
from edgekit.errors import UsageError

CONNECT_TIMEOUT = 10  # seconds; a board on the LAN answers in well under a second
# [user@]host[:port], host may be [ipv6]
_ADDRESS = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@:\s/\[\]]+)(?::(?P<port>\d{1,5}))?$")


def parse_address(address: str) -> tuple[str | None, str, int | None]:
    """'pi@raspberrypi.local:2222' -> ('pi', 'raspberrypi.local', 2222)."""
    m = _ADDRESS.match(address)
    if not m or address.startswith("-"):  # a leading '-' would read as an ssh option
        raise UsageError(f"--device '{address}' is not an ssh address",
                         hint="write user@host or user@host:port (e.g. pi@raspberrypi.local:22)")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--device '{address}': port {port} is out of range", hint="ports are 1-65535")
    return m["user"], m["host"].strip("[]"), port


class SshTransport(Transport):
    kind = "ssh"
    default_base = "edgekit"  # relative paths start in the login directory: ~/edgekit
    tool_hint = "install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)"

    def __init__(self, address: str, name: str | None = None, config: str | None = None, options: tuple[str, ...] = ()):
        super().__init__(name or address)
        self.user, self.host, self.port = parse_address(address)
        self.config, self.options = config, tuple(options)
        for opt in self.options:
            if "=" not in opt or opt.startswith("-"):
                raise UsageError(f"--ssh-option '{opt}' is not KEY=VALUE", hint="e.g. --ssh-option IdentityFile=~/.ssh/pi_ed25519")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.config:
            args += ["-F", self.config]
        for opt in self.options:
            args += ["-o", opt]
        if self.port:
            args += ["-p", str(self.port)]
        return args

    def command(self, argv: list[str]) -> list[str]:
        return [*self.ssh_args(), "--", self.destination, self.remote_command(argv)]

    def transport_error(self, done: Completed) -> DeviceFailure | None:
        # ssh exits 255 for its own errors (connection, authentication, host key).
        if done.returncode != 255:
            return None
        text = done.stderr
        where = f"{self.host}:{self.port}" if self.port else self.host
        for needle, message, hint in _SSH_ERRORS:
            if needle in text:
                return DeviceFailure(message.format(device=self.name, where=where), hint=hint.format(
                    device=self.name, dest=self.destination, host=self.host, port=self.port or 22,
                    p=f"-p {self.port} " if self.port else "", portname=f"port {self.port}" if self.port else "its ssh port"),
                    stage="connect", detail=done.tail())
        last = done.tail().splitlines()[-1] if done.stderr.strip() else "ssh exited with status 255"
        return DeviceFailure(f"ssh to {self.name} failed: {last}", hint="run `ssh -v` to the device to see why",
                             stage="connect", detail=done.tail())


# (what ssh prints, our message, the fix). Order matters: the first match wins.
_SSH_ERRORS = [
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the host key of {device} has CHANGED since it was recorded in known_hosts",
     "if the board was re-imaged, remove the old key (ssh-keygen -R {host}) and verify the new fingerprint; otherwise do not connect"),
    ("Host key verification failed", "the host key of {device} is not in known_hosts (edgekit never accepts unknown host keys)",
     "connect once with `ssh {p}{dest}`, check the fingerprint against the board, and accept it; then deploy again"),
    ("Permission denied", "{device} refused the login (public key not accepted)",
     "install your key on the device (ssh-copy-id {p}{dest}) or name it: --ssh-option IdentityFile=PATH; "
     "edgekit runs ssh with BatchMode=yes and never types passwords"),
    ("Connection refused", "nothing accepts ssh connections at {where} ({device}: connection refused)",
     "check the board is up and sshd listens on {portname} (raspi-config > Interfaces > SSH), or fix the :port in --device"),
    ("Could not resolve hostname", "cannot resolve the host name of {device}",
     "check the name (try the IP address; mDNS names like raspberrypi.local need avahi on both ends)"),
    ("timed out", "{device} did not answer at {where} (connection timed out)",
     "check the board is powered, on the same network, and reachable (ping {host})"),
    ("No route to host", "no route to {device} ({where})", "check the network and the address"),
    ("Network is unreachable", "network unreachable for {device} ({where})", "check this computer's network connection"),
    ("Connection closed", "{device} closed the connection during the ssh handshake ({where})",
     "check sshd on the device (its logs: journalctl -u ssh) and MaxStartups if many deploys run at once"),
]
