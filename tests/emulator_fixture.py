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
