"""Build directories appear whole or not at all: a staging dir is renamed into
place on success and removed on failure, and an older build survives a failed one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.build.builddir import staged_build_dir
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


def _dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_dirs_of_killed_builds_are_removed_by_the_next_build(tmp_path):
    """A SIGKILLed build leaves `.out.partial-PID` (its cleanup never ran); once that process is gone,
    the next build into the same place removes it. A live process's staging dir is left alone."""
    import os

    dead = _dead_pid()
    for name in (f".out.partial-{dead}", f".out.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.pte").write_text("half written")
    live = tmp_path / f".out.partial-{os.getppid()}"  # our parent runs: its build may still be going
    live.mkdir()
    (tmp_path / f".other.partial-{dead}").mkdir()  # another output's: not ours to judge
    with staged_build_dir(tmp_path / "out") as stage:
        (stage / "v").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, f".other.partial-{dead}", "out"])


def _finish_a_build(args) -> str:
    """One process: stage a complete build (three files) and swap it in; returns an error or ''."""
    final, tag = args
    try:
        with staged_build_dir(Path(final)) as stage:
            for name in ("model.pte", "manifest.json", "report.html"):
                (stage / name).write_text(json.dumps(tag))  # strict JSON, like every manifest
        return ""
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def test_builds_finishing_at_once_take_turns_and_one_complete_build_wins(tmp_path):
    """Racing the final rename from several processes: every build succeeds, the directory holds
    exactly one of them, whole, and no staging or old directory is left."""
    from concurrent.futures import ProcessPoolExecutor

    final = tmp_path / "out"
    with ProcessPoolExecutor(max_workers=4) as pool:
        for round_ in range(25):
            errors = list(pool.map(_finish_a_build, [(str(final), f"{round_}-{i}") for i in range(8)]))
            assert errors == [""] * 8, errors
            contents = {(final / n).read_text() for n in ("model.pte", "manifest.json", "report.html")}
            assert len(contents) == 1  # the three files of one build, never a mix
            assert leftovers(tmp_path, "out") == []
