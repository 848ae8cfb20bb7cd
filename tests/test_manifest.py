"""Reading a build's manifest: the one checked reader that validate, deploy and report share."""

from __future__ import annotations

import pytest

from edgekit.errors import UsageError
from edgekit.manifest import MANIFEST, read_manifest, write_json_atomic


def test_reads_a_manifest_written_atomically(tmp_path):
    write_json_atomic(tmp_path / MANIFEST, {"name": "digits", "target": "rpi4"})
    assert read_manifest(tmp_path) == {"name": "digits", "target": "rpi4"}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temp file left


def test_a_directory_without_a_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="is not a build directory") as info:
        read_manifest(tmp_path)
    assert "edgekit build" in info.value.hint


def test_a_broken_manifest_names_the_file(tmp_path):
    (tmp_path / MANIFEST).write_text("{ half written")
    with pytest.raises(UsageError, match=f"{MANIFEST}: not an edgekit manifest"):
        read_manifest(tmp_path)
