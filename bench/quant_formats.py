"""Host latency of each format's int8 artifact as a ratio to the float eager model.

    .venv/bin/python bench/quant_formats.py [--threads 1] [--runs 100] [--apps digits vit_digits]

For each sample app: build every format, then time, in this one process and at
the same thread count, the float model in eager PyTorch and each artifact in
its own runtime: the median of --runs timed runs after --warmup runs, same
input. Ratios < 1 mean the artifact is faster than float eager. Timings on a
shared machine are noisy: compare ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_ms(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def bench_app(app: Path, out: Path, threads: int, warmup: int, runs: int) -> list[tuple]:
    import numpy as np
    import torch

    from edgekit import api
    from edgekit.model.app import build_module, load_app
    from edgekit.formats import get_format

    manifest = api.build(app, "rpi4", api.recipe(formats=("all",)), out=out)
    torch.set_num_threads(threads)
    x = np.load(app / "eval.npz")["x"][:1]
    model = build_module(load_app(app))
    with torch.no_grad():
        eager = median_ms(lambda: model(torch.from_numpy(x)), warmup, runs)
    rows = [(app.name, "float eager (PyTorch)", eager, 1.0, manifest["float"]["bytes"], manifest["metrics"]["accuracy_float"])]
    for fmt, record in manifest["formats"].items():
        runner = get_format(fmt).load(out / record["artifact"]["file"], threads=threads)
        ms = median_ms(lambda: runner.run([x]), warmup, runs)
        rows.append((app.name, f"{fmt} int8 ({record['backend']})", ms, ms / eager, record["artifact"]["bytes"],
                     record["metrics"]["accuracy_artifact"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--apps", nargs="+", default=["digits", "vit_digits"])
    args = parser.parse_args()
    if args.runs < 50:
        parser.error("--runs must be at least 50 for a stable median")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"host latency, {args.threads} thread(s), median of {args.runs} runs after {args.warmup} warm-ups")
    for col in ("app", "path", "median ms", "× float eager", "size KB", "accuracy %"):
        table.add_column(col, justify="left" if col in ("app", "path") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.apps:
            for app, path, ms, ratio, size, acc in bench_app(REPO / "sample_apps" / name, Path(tmp) / name,
                                                             args.threads, args.warmup, args.runs):
                table.add_row(app, path, f"{ms:.3f}", f"{ratio:.2f}", f"{size / 1024:.1f}", f"{acc:.2f}")
    Console(width=120).print(table)  # wide enough for one line per row when piped to a file


if __name__ == "__main__":
    main()
