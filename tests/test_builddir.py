"""Build directories appear whole or not at all: a staging dir is renamed into
place on success and removed on failure, and an older build survives a failed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.builddir import staged_build_dir
from edgekit.errors import UsageError


class Boom(Exception):
    pass


def leftovers(parent: Path, name: str) -> list[str]:
    """Hidden staging/old dirs a build of `name` could leave beside the final dir."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_success_renames_staging_into_place(tmp_path):
    final = tmp_path / "build" / "digits-rpi4"  # parent does not exist yet
    with staged_build_dir(final) as stage:
        assert stage != final
        assert stage.is_dir()
        assert stage.parent == final.parent
        assert stage.name.startswith(".digits-rpi4.partial-")
        assert not final.exists()  # nothing visible until the block finishes
        (stage / "model.pte").write_bytes(b"\x00pte")
        (stage / "sub").mkdir()
        (stage / "sub" / "manifest.json").write_text("{}")
    assert final.is_dir()
    assert (final / "model.pte").read_bytes() == b"\x00pte"
    assert (final / "sub" / "manifest.json").read_text() == "{}"
    assert not stage.exists()
    assert leftovers(final.parent, "digits-rpi4") == []
    assert [p.name for p in final.parent.iterdir()] == ["digits-rpi4"]


def test_accepts_a_string_path(tmp_path):
    final = tmp_path / "out"
    with staged_build_dir(str(final)) as stage:
        (stage / "f").write_text("x")
    assert (final / "f").read_text() == "x"


def test_exception_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(Boom):
        with staged_build_dir(final) as stage:
            (stage / "half-written.pte").write_bytes(b"partial")
            raise Boom()
    assert not final.exists()
    assert not stage.exists()
    assert leftovers(tmp_path, "out") == []
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_build_dir(final) as stage:
            (stage / "f").write_text("x")
            raise KeyboardInterrupt
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_usage_error_inside_block_propagates_unchanged(tmp_path):
    with pytest.raises(UsageError, match="bad calib file"):
        with staged_build_dir(tmp_path / "out"):
            raise UsageError("bad calib file")
    assert list(tmp_path.iterdir()) == []


def test_existing_build_is_replaced_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "model.pte").write_text("old model")
    (final / "stale.txt").write_text("only in the old build")
    with staged_build_dir(final) as stage:
        assert (final / "model.pte").read_text() == "old model"  # still there while building
        (stage / "model.pte").write_text("new model")
    assert (final / "model.pte").read_text() == "new model"
    assert not (final / "stale.txt").exists()  # replaced, not merged
    assert leftovers(tmp_path, "out") == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_build_is_kept_intact_when_new_build_fails(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "model.pte").write_bytes(b"old model bytes")
    (final / "nested").mkdir()
    (final / "nested" / "report.json").write_text('{"ok": true}')
    with pytest.raises(Boom):
        with staged_build_dir(final) as stage:
            (stage / "model.pte").write_bytes(b"new, half written")
            raise Boom()
    assert final.is_dir()
    assert (final / "model.pte").read_bytes() == b"old model bytes"
    assert (final / "nested" / "report.json").read_text() == '{"ok": true}'
    assert sorted(p.name for p in final.rglob("*")) == ["model.pte", "nested", "report.json"]
    assert leftovers(tmp_path, "out") == []


def test_two_builds_in_a_row(tmp_path):
    final = tmp_path / "out"
    for content in ("first", "second"):
        with staged_build_dir(final) as stage:
            (stage / "v").write_text(content)
    assert (final / "v").read_text() == "second"
    assert leftovers(tmp_path, "out") == []


def test_stale_staging_dir_from_a_crash_is_cleared(tmp_path):
    final = tmp_path / "out"
    with staged_build_dir(final) as stage:
        pass
    # a previous run with the same pid crashed hard and left its staging dir behind
    stage.mkdir()
    (stage / "junk").write_text("from a crashed run")
    with staged_build_dir(final) as stage2:
        assert stage2 == stage
        assert list(stage2.iterdir()) == []
        (stage2 / "new").write_text("n")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_final_path_is_a_file(tmp_path):
    final = tmp_path / "out"
    final.write_text("not a dir")
    with pytest.raises(UsageError, match=r"--out: '.*out' exists and is not a directory"):
        with staged_build_dir(final):
            pytest.fail("the block must not run")
    assert final.read_text() == "not a dir"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging dir was made
