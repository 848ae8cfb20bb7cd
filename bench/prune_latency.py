"""Does pruning's MAC saving become time saved? Host latency of the int8 artifact per prune ratio.

    .venv/bin/python bench/prune_latency.py [--ratios 0 0.25 0.5 0.75] [--models digits mobilenet_v2] [--threads 1]

For each model, builds the ExecuTorch/XNNPACK int8 artifact at each ratio
(no distillation: weights' values do not change latency), loads every artifact
in this one process and times them side by side, in interleaved rounds so
machine noise hits all ratios alike. Reports the median and its ratio to the
unpruned artifact next to the MAC ratio: where time/MACs stays near 1, MACs
saved became time saved; where time falls slower than MACs, fixed per-op
overhead dominates (expected for tiny models). Noisy on a shared machine:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    "digits": {"app": str(REPO / "sample_apps" / "digits")},
    # random weights (edgekit.zoo): structure is what matters for latency
    "mobilenet_v2": {"model": "edgekit.zoo.mobilenet_v2:build_small", "input_shape": "1,3,32,32"},
}


def build_all(name: str, ratios: list[float], out: Path) -> list[dict]:
    from edgekit import api

    spec = MODELS[name]
    rows = []
    for ratio in ratios:
        options = {"prune": ratio} if ratio > 0 else {}
        if "model" in spec:  # random weights: nothing to keep, the gate is opened (timing only)
            options.update(min_cosine=-1.0, min_agreement=0.0)
        source = api.source(spec.get("app"), model=spec.get("model"), input_shape=spec.get("input_shape"))
        m = api.build(source, "rpi4", api.recipe(formats=("executorch",), **options), out=out / f"{name}-{ratio}")
        steps = {s["stage"]: s for s in m["steps"]}
        macs = steps["prune"]["macs"] if "prune" in steps else None
        if "measure" in steps:  # the unpruned model's count, for the ratio-0 row
            unpruned = steps["measure"]["macs"]
        rows.append({"ratio": ratio, "dir": out / f"{name}-{ratio}", "file": m["artifact"]["file"],
                     "bytes": m["artifact"]["bytes"], "macs": macs, "accuracy": m["metrics"]["accuracy_artifact"]})
    for row in rows:
        row["macs"] = row["macs"] or unpruned
    return rows


def time_side_by_side(rows: list[dict], threads: int, rounds: int, runs: int) -> None:
    import numpy as np

    from edgekit.formats import get_format
    from measure import interleaved_medians

    backend = get_format("executorch")
    runners = [backend.load(r["dir"] / r["file"], threads=threads) for r in rows]
    x = np.random.default_rng(0).standard_normal(_input_shape(rows[0])).astype(np.float32)
    for row, ms in zip(rows, interleaved_medians(runners, [x], 10, rounds, runs)):
        row["ms"] = ms


def _input_shape(row: dict) -> tuple:
    import json

    manifest = json.loads((row["dir"] / "manifest.json").read_text())
    return tuple(manifest["model"]["inputs"][0]["shape"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50, help="inferences per round per artifact")
    args = parser.parse_args()
    if 0.0 not in args.ratios:
        parser.error("--ratios must include 0 (the unpruned baseline the ratios are taken to)")

    from rich.console import Console
    from rich.table import Table

    table = Table(caption="acc %: int8 artifact, pruned WITHOUT distillation (latency does not depend on it)",
                  title=f"int8 .pte host latency vs prune ratio, {args.threads} thread(s), "
                        f"median of {args.rounds} rounds x {args.runs} runs")
    for col in ("model", "prune", "MACs", "× MACs", "median ms", "× time", "size KB", "acc %"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows = build_all(name, sorted(args.ratios), Path(tmp))
            time_side_by_side(rows, args.threads, args.rounds, args.runs)
            base = rows[0]
            for r in rows:
                table.add_row(name, f"{r['ratio']:g}", f"{r['macs']:,}", f"{r['macs'] / base['macs']:.2f}",
                              f"{r['ms']:.4f}", f"{r['ms'] / base['ms']:.2f}", f"{r['bytes'] / 1024:.1f}",
                              f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "–")
    Console().print(table)


if __name__ == "__main__":
    main()
