"""edgekit's int8 artifacts side by side with the paths users take today (`make bench`).

    .venv/bin/python bench/compare.py [--models digits vit_digits mobilenet_v2 resnet18]
                                      [--real-models efficientnet_lite0 minilm]
                                      [--runs 50] [--warmup 5] [--calib-samples 32] [--quick] [--out bench]

For each model, in this one run: float (PyTorch eager, torch.compile, ONNX
Runtime fp32), int8 by hand (onnxruntime quantize_static defaults, ExecuTorch
PT2E + XNNPACK per its tutorial) and edgekit's artifact for each format, timed
on the same input at 1 thread and at all cores. Also the cost of `edgekit
build` per model. Then the pretrained models (real_models.py): every artifact's
agreement with float on real inputs beside its latency. Writes OUT/RESULTS.md and
OUT/results.json; progress goes to stderr. A path that fails keeps its row, with
its error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import baselines
import build_cost
import edgekit_paths
import machine
import real_models
import results
from edgekit.quiet import native_stderr_captured
from measure import Contender, latency_ms, short_error, top1_accuracy
from models import MODELS, REPO, BenchModel

# --quick: enough to exercise every path and the report, far too few for stable numbers.
QUICK = {"runs": 3, "warmup": 1, "calib_samples": 4}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    from rich.console import Console

    console = Console(stderr=True)
    start = time.perf_counter()
    threads = sorted(set(args.threads or (1, os.cpu_count() or 1)))
    facts = machine.facts()
    doc = {"machine": facts, "models": [], "rows": [], "build_cost": [],
           "settings": {"runs": args.runs, "warmup": args.warmup, "threads": threads,
                        "calib_samples": args.calib_samples, "quick": args.quick, "command": _command(argv)}}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        # A fresh inductor cache: torch.compile's build time is the cold compile a user pays first.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        for name in args.models:
            console.rule(f"[bold]{name}")
            info, rows, cost = bench_model(MODELS[name], args, threads, Path(tmp) / name,
                                           lambda msg: console.log(f"{name}: {msg}"))
            doc["models"].append(info)
            doc["rows"] += rows
            doc["build_cost"].append(cost)
        doc["real_models"] = []
        for name in args.real_models:
            console.rule(f"[bold]{name} (pretrained)")
            doc["real_models"] += real_models.bench_real(real_models.REAL_MODELS[name], Path(tmp) / name, args.runs,
                                                         args.warmup, lambda msg: console.log(f"{name}: {msg}"))
    doc["total_seconds"] = round(time.perf_counter() - start, 1)
    md, js = results.write(args.out, doc)
    console.log(f"wrote {md} and {js} in {doc['total_seconds'] / 60:.1f} min")


def bench_model(model: BenchModel, args, threads: list[int], work: Path, say) -> tuple[dict, list[dict], dict]:
    work.mkdir(parents=True)
    data = model.data(args.calib_samples)
    calib_path = work / "calib.npz"
    np.savez(calib_path, x=data.calib)  # the one calibration set every int8 path reads
    module = model.load()
    info = {"name": model.name, "trained": model.trained, "params": sum(p.numel() for p in module.parameters()),
            "float_bytes": baselines.state_dict_bytes(module), "input_shape": list(data.sample.shape),
            "calibration": f"{len(data.calib)} samples ({'the first of calib.npz' if model.trained else 'random normal'})",
            "eval_samples": None if data.eval_y is None else len(data.eval_y)}

    say("edgekit build --format executorch (child process: wall time and peak memory)")
    pending = build_cost.TimedBuild(model, calib_path, work / "edgekit-pte")
    if not args.quick:
        cost = _finish(pending, model, info, say)  # alone on the machine: its wall time and memory are the result
    contenders = baselines.all_paths(module, data.sample, data.calib_batches(), work, say)
    say("edgekit build --format torchscript-lite --format onnx (edgekit.api.build)")
    others = edgekit_paths.other_formats(model, calib_path, work / "edgekit-other")
    if args.quick:
        cost = _finish(pending, model, info, say)  # --quick overlaps it with the builds above, to save minutes
    contenders += [edgekit_paths.executorch(work / "edgekit-pte", cost), *others]
    for c in contenders:
        if c.error:
            say(f"  [red]failed[/]: {c.label}: {c.error}")

    rows = []
    for n in threads:
        for c in contenders:
            rows.append(_measure(c, n, data, args, accuracy=model.trained and n == threads[0], say=say))
    if model.trained:  # accuracy doesn't depend on threads: measured once, shown on every row
        first = {r["path"]: r["accuracy"] for r in rows if r["threads"] == threads[0]}
        for r in rows:
            r["accuracy"] = first[r["path"]]
    return info, [{"model": model.name, **r} for r in rows], cost


def _finish(pending, model: BenchModel, info: dict, say) -> dict:
    cost = {"model": model.name, "params": info["params"], **pending.finish()}
    say(f"  {cost['wall_s']:.1f} s, peak {cost['peak_rss_mb']:.0f} MB" + (f", failed: {cost['error']}" if cost["error"] else ""))
    return cost


def _measure(c: Contender, threads: int, data, args, accuracy: bool, say) -> dict:
    row = {"path": c.key, "label": c.label, "group": c.group, "threads": threads, "median_ms": None, "p90_ms": None,
           "runs": 0, "size_bytes": c.size_bytes, "accuracy": None, "build_stages": {}, "error": c.error, "note": c.note}
    if c.runner is not None:
        try:
            with native_stderr_captured():  # ExecuTorch's runtime prints cpuinfo probing on load
                run = c.runner(threads)
            row.update(latency_ms(run, data.sample, args.warmup, args.runs))
            if accuracy:
                row["accuracy"] = top1_accuracy(run, data.eval_x, data.eval_y)
            say(f"  {c.label} @ {threads} thread(s): median {row['median_ms']:.3f} ms")
        except Exception as e:  # noqa: BLE001 - a path that fails here is a result too
            row["error"] = short_error(e)
            say(f"  [red]failed[/]: {c.label} @ {threads} thread(s): {row['error']}")
    # Read after the run: torch.compile records its compile for this thread count then (and only that one applies).
    row["build_stages"] = {k: v for k, v in c.stages.items()
                           if not k.startswith("compile (") or k == baselines.compile_stage(threads)}
    return row


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--real-models", nargs="*", choices=list(real_models.REAL_MODELS),
                        default=list(real_models.REAL_MODELS), help="pretrained models judged on real inputs")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per path and thread count (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--calib-samples", type=int, default=32,
                        help="calibration samples for every int8 path: the first of a sample app's calib.npz, "
                             "random images for the 224x224 nets (default 32)")
    parser.add_argument("--threads", type=int, nargs="+", metavar="N",
                        help="thread counts to time (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true", help=f"development run: {QUICK} unless given")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where RESULTS.md and results.json go")
    args = parser.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:]))
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    if args.threads and min(args.threads) < 1:
        parser.error("--threads: each count must be at least 1")
    if not args.quick and args.runs < 50:
        parser.error("--runs must be at least 50 for a stable median (use --quick for a development run)")
    return args


def _command(argv) -> str:
    shown = argv if argv is not None else sys.argv[1:]
    return "make bench" if not shown else "python bench/compare.py " + shlex.join(shown)


if __name__ == "__main__":
    main()
