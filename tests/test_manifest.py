"""Reading a build's manifest: the one checked reader that validate, deploy and report share."""

from __future__ import annotations

import pytest

from edgekit.errors import UsageError
from edgekit.manifest import MANIFEST, read_manifest, write_json_atomic


MINIMAL = {"name": "digits", "target": "rpi4", "format": "executorch",
           "artifact": {"file": "model.pte", "sha256": "0" * 64, "bytes": 1},
           "model": {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]},
           "target_profile": {"arch": "aarch64", "threads": 4}}


def test_reads_a_manifest_written_atomically(tmp_path):
    write_json_atomic(tmp_path / MANIFEST, MINIMAL)
    assert read_manifest(tmp_path) == MINIMAL
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temp file left


def test_writing_nan_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json_atomic(tmp_path / MANIFEST, {**MINIMAL, "cosine": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_a_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="is not a build directory") as info:
        read_manifest(tmp_path)
    assert "edgekit build" in info.value.hint


def test_a_broken_manifest_names_the_file(tmp_path):
    from conftest import DELIBERATELY_INVALID

    (tmp_path / DELIBERATELY_INVALID).touch()
    (tmp_path / MANIFEST).write_text("{ half written")
    with pytest.raises(UsageError, match=f"{MANIFEST}: not an edgekit manifest"):
        read_manifest(tmp_path)
