"""What `edgekit build` costs: wall seconds and peak memory of the command, run as a
child process so its imports and memory are counted and nothing else is."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from models import REPO, BenchModel


class TimedBuild:
    """`edgekit build ... --format FMT --out OUT --json` started as a child; the manifest lands in OUT.

    Start it, optionally do other work, then `finish()`: the caller decides
    whether anything else runs meanwhile (a full benchmark lets it run alone).
    """

    def __init__(self, model: BenchModel, calib_path: Path, out: Path, fmt: str = "executorch"):
        self.out = out
        self.args = ["build", *model.cli_args(calib_path), "--format", fmt, "--out", str(out), "--json"]
        self.log = out.parent / f"{out.name}.log"
        with open(out.parent / f"{out.name}.json", "wb") as stdout, open(self.log, "wb") as stderr:
            self._start = time.perf_counter()
            self._child = subprocess.Popen([sys.executable, "-m", "edgekit", *self.args], stdout=stdout, stderr=stderr, cwd=REPO)

    def finish(self) -> dict:
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the max over every child so far.
        _, status, usage = os.wait4(self._child.pid, 0)
        wall = time.perf_counter() - self._start
        self._child.returncode = code = os.waitstatus_to_exitcode(status)
        record = {
            "command": "edgekit " + shlex.join(_display(self.args)),
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports ru_maxrss in KiB
            "exit_code": code,
            "error": None,
            "stages": {},
        }
        if code != 0:
            tail = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
            record["error"] = f"exit {code}: {tail[-1][:240] if tail else 'no output'}"
            return record
        manifest = json.loads((self.out / "manifest.json").read_text())
        record["stages"] = {s["stage"]: s["seconds"] for s in manifest["steps"]}
        return record


def _display(args: list[str]) -> list[str]:
    """The command as a reader would type it: temp paths shortened to their names."""
    shown = []
    for a in args:
        p = Path(a)
        shown.append(p.name if p.is_absolute() and not str(p).startswith(str(REPO)) else
                     (str(p.relative_to(REPO)) if p.is_absolute() else a))
    return shown
