"""The emulator as the tests find it: built by `make emulator`, or the test fails saying so.

Emulator tests carry the `emulator` marker: `make test` deselects them (they need
root, binfmt_misc and a rootfs built once, minutes), `make test-emulator` runs them.
A test that asked for the emulator and did not find it fails: it is never
reported as passed or silently skipped.
"""

from __future__ import annotations

import pytest


def require_emulator():
    from edgekit.emulator.paths import EmulatorPaths
    from edgekit.emulator.setup import require_ready
    from edgekit.errors import UsageError

    paths = EmulatorPaths.default()
    try:
        require_ready(paths)
    except UsageError as e:
        pytest.fail(f"{e.message}: run `make emulator` before `make test-emulator`")
    return paths


def start_board(root, cpu: str):
    """An emulated arm64 board (edgekit/emulator/board.py: the rootfs's own sshd under qemu-user on
    127.0.0.1) with a throwaway host key and client key; `client_config` is the ssh config that reaches it.
    The caller stops it."""
    from sshd import free_port, keygen

    from edgekit.emulator.board import Board

    paths = require_emulator()
    client_pub = keygen(root / "client")
    b = Board(paths, cpu, root / "state", free_port(), client_pub).start()
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{b.port} {b.host_public_key()}\n")
    config = root / "ssh_config"
    config.write_text(f"Host *\n  IdentityFile {root / 'client'}\n  UserKnownHostsFile {known}\n"
                      "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    b.client_config = config
    return b
