"""The user cache: the emulator's rootfs, and the outputs of build steps for reuse.

    $EDGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit

Every build step has a key, the sha256 of (stage, its config, its input digest, the
versions of what runs it): the Olive footprint idea. A step whose key is in the
cache is not run again: its output files are copied back and its record says
`cached` and how many seconds the first run took. A changed model, data file,
option or library gives another key, and so does another edgekit: its own
source is digested too (an editable install's edit changes no version number). Entries are evicted oldest first beyond
$EDGEKIT_STEP_CACHE_MB (default 2048 MB); they live in $EDGEKIT_STEP_CACHE_DIR
(default: steps/ in the user cache); `EDGEKIT_STEP_CACHE=off` turns reuse off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

from edgekit.manifest import versions

DEFAULT_LIMIT_MB = 2048


def cache_dir() -> Path:
    if os.environ.get("EDGEKIT_CACHE_DIR"):
        return Path(os.environ["EDGEKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekit"


def step_key(stage: str, config: dict, inputs: dict) -> str:
    """The key of one step: what it is, how it is configured, what it reads, what runs it."""

    doc = {"stage": stage, "config": config, "inputs": inputs, "versions": versions(), "edgekit": code_digest()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over edgekit's own Python files (about 1 MB: milliseconds, once per process)."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class StepCache:
    def __init__(self, root: Path | None = None, enabled: bool | None = None):
        self.root = Path(root or os.environ.get("EDGEKIT_STEP_CACHE_DIR") or cache_dir() / "steps")
        self.enabled = os.environ.get("EDGEKIT_STEP_CACHE", "on") != "off" if enabled is None else enabled

    def get(self, key: str) -> tuple[Path, dict] | None:
        """(the entry's directory, the record stored with it), or None."""
        entry = self.root / key
        record = entry / "record.json"
        if not self.enabled or not record.is_file():
            return None
        try:
            doc = json.loads(record.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is a miss
        os.utime(entry)  # recently used: evicted last
        return entry, doc

    def put(self, key: str, files: dict[str, Path], record: dict) -> None:
        """Store copies of `files` (name -> path) and `record` under `key`, whole or not at all."""
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{key}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            for name, path in files.items():
                shutil.copy2(path, staging / name)
            (staging / "record.json").write_text(json.dumps(record, indent=1))
            shutil.rmtree(self.root / key, ignore_errors=True)
            os.replace(staging, self.root / key)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # a full cache disk must not fail the build
            return
        self._evict()

    def _evict(self) -> None:
        limit = float(os.environ.get("EDGEKIT_STEP_CACHE_MB", DEFAULT_LIMIT_MB)) * 2**20
        entries = [(p.stat().st_mtime, p) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for _, p in entries}
        total = sum(sizes.values())
        for _, path in sorted(entries):
            if total <= limit:
                break
            total -= sizes[path]
            shutil.rmtree(path, ignore_errors=True)
