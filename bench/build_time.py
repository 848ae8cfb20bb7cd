"""Wall seconds per stage of the digits build for rpi4 (a benchmark, not a test).

    .venv/bin/python bench/build_time.py [--target rpi4] [--repeat 1]

Prints one row per stage plus the whole build measured from outside, which
includes importing torch/executorch. The goal is under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="rpi4")
    parser.add_argument("--repeat", type=int, default=1, help="builds to run; the first pays the import cost")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    start = time.perf_counter()
    from edgekit import api  # noqa: F401  (import cost belongs to the first build)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            t0 = time.perf_counter() if i else start
            manifest = api.build(REPO / "sample_apps" / "digits", args.target, out=Path(tmp) / f"b{i}")
            runs.append((time.perf_counter() - t0, manifest["steps"]))

    table = Table(title=f"digits → {args.target}: build seconds per stage")
    table.add_column("stage")
    for i in range(len(runs)):
        table.add_column(f"run {i + 1}", justify="right")
    for idx, step in enumerate(runs[0][1]):
        table.add_row(step["stage"], *[f"{steps[idx]['seconds']:.2f}" for _, steps in runs])
    table.add_row("whole build (wall, incl. imports on run 1)", *[f"{wall:.2f}" for wall, _ in runs], style="bold")
    Console().print(table)


if __name__ == "__main__":
    main()
