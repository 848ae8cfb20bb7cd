"""Does `edgekit search` find a faster artifact that keeps the accuracy? The sample apps searched
for rpi4 with --max-accuracy-drop 1.0, then the chosen build's int8 artifact timed on this host
side by side with the unpruned int8 artifact of the same format (the search's own candidate).

    .venv/bin/python bench/search.py [--apps digits vit_digits] [--rounds 15] [--runs 50]

Writes bench/search.md and bench/search.json. Host latency, 1 thread, interleaved rounds (machine
noise hits both alike): compare the ratio, not the milliseconds. The search chooses by the
latency the cost model predicts on the target; the host ratio checks that the MACs it saved
became time saved on a real runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import facts  # noqa: E402
from measure import interleaved_medians  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "search.md"


def search(app: str, out: Path) -> tuple[dict, float]:
    from edgekit import api
    from edgekit.progress import Steps
    from edgekit.recipe import app_recipe
    from edgekit.search import SearchOptions, run_search
    from edgekit.target import load_target

    spec = api.source(str(REPO / "sample_apps" / app))
    begin = time.monotonic()
    doc = run_search(spec, load_target("rpi4"), SearchOptions(max_accuracy_drop=1.0), out, Steps(show=True),
                     base_recipe=app_recipe(spec))
    return doc, time.monotonic() - begin


def host_ratio(doc: dict, out: Path, rounds: int, runs: int) -> dict:
    from edgekit.formats import get_format

    chosen = next(r for r in doc["results"] if r["id"] == doc["chosen"])
    fmt = get_format(chosen["format"])
    unpruned_dir = out / "candidates" / f"macs1-{chosen['format']}"
    final = json.loads((out / "best" / "manifest.json").read_text())
    unpruned = json.loads((unpruned_dir / "manifest.json").read_text())
    paths = [out / "best" / final["artifact"]["file"], unpruned_dir / unpruned["artifact"]["file"]]
    runners = [fmt.load(p, threads=1) for p in paths]
    shape = final["model"]["inputs"][0]["shape"]
    feed = [np.random.default_rng(0).random(shape, dtype=np.float32)]
    chosen_ms, unpruned_ms = interleaved_medians(runners, feed, 20, rounds, runs)
    return {"chosen_ms": round(chosen_ms, 4), "unpruned_ms": round(unpruned_ms, 4), "ratio": round(chosen_ms / unpruned_ms, 3),
            "final_accuracy": final["metrics"]["accuracy_artifact"],
            "loaded_accuracy": next((s["accuracy_float"] for s in final["steps"] if s["stage"] == "measure"),
                                    final["metrics"]["accuracy_float"]),  # no stage ran: the float model is the loaded one
            "agreement_on_calib": chosen["agreement"], "accuracy_on_calib": chosen.get("accuracy"),
            "unpruned_accuracy_on_calib": doc.get("reference_accuracy")}


def main() -> None:
    from edgekit.search import FRACTIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", nargs="+", default=["digits", "vit_digits"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-search-") as tmp:
        # an empty step cache: the wall time is a first search's, no student distilled by an earlier run
        os.environ["EDGEKIT_STEP_CACHE_DIR"] = str(Path(tmp) / "steps")
        for app in args.apps:
            out = Path(tmp) / app
            doc, seconds = search(app, out)
            rows.append({"app": app, "seconds": round(seconds, 1), "candidates": len(doc["results"]),
                         "skipped": len(doc["skipped"]), "pareto": len(doc["pareto"]), "chosen": doc["chosen"],
                         "front": [{k: r.get(k) for k in ("id", "accuracy", "agreement", "divergence", "predicted_ms", "bytes")}
                                   for r in doc["results"] if r.get("pareto")],
                         "not_exported": [{"id": r["id"], "float_accuracy": r["float_student"].get("accuracy"),
                                           "float_agreement": r["float_student"]["agreement"]}
                                          for r in doc["results"] if r.get("float_student")],
                         **host_ratio(doc, out, args.rounds, args.runs)})
            print(json.dumps(rows[-1]), flush=True)
    m = facts()
    lines = ["# `edgekit search` on the sample apps", "",
             f"Reproduce: `.venv/bin/python bench/search.py`. {m['date']}, {m['cpu']}, 2 cores. "
             "`edgekit search APP --target rpi4 --max-accuracy-drop 1.0` with the default candidates (kept-MAC "
             f"fractions {', '.join(f'{f:g}' for f in FRACTIONS)}, each also with half the repeated blocks dropped "
             "where the model has them, x the target's format and onnx; 0.25 and below cut in rounds, "
             "stages/prune.py), judged on the apps' labelled calibration data; then the "
             "chosen build's int8 "
             f"artifact and the unpruned candidate of the same format timed on this host, 1 thread, median of "
             f"{args.rounds} interleaved rounds of {args.runs} runs.", "",
             "| app | search wall time | candidates | on the Pareto front | chosen | final accuracy (eval) | "
             "model as loaded | host latency chosen / unpruned int8 |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['app']} | {r['seconds'] / 60:.1f} min | {r['candidates']} | {r['pareto']} | {r['chosen']} | "
                     f"{r['final_accuracy']:.2f} % | {r['loaded_accuracy']:.2f} % | {r['chosen_ms']:.4f} / "
                     f"{r['unpruned_ms']:.4f} ms = {r['ratio']:.2f}x |")
    lines += ["", "The Pareto fronts (accuracy on the calibration data, top-1 agreement with the unpruned model and "
              "divergence from it there, predicted rpi4 ms, bytes):", ""]
    for r in rows:
        lines.append(f"- {r['app']} (unpruned: {r['unpruned_accuracy_on_calib']:.2f} %): " + "; ".join(
            f"{p['id']} {p['accuracy']:.2f} % / {p['agreement']:.2f} % / {p['divergence']:.4f} / {p['predicted_ms']} ms / "
            f"{p['bytes']} B" for p in r["front"]))
    lines += ["", "Not exported (the float student already lost more than the budget on the calibration data; "
              "accuracy / agreement there):", ""]
    for r in rows:
        lines.append(f"- {r['app']}: " + ("; ".join(f"{n['id']} {n['float_accuracy']:.2f} % / {n['float_agreement']:.2f} %"
                                                     for n in r["not_exported"]) or "none"))
    OUT.write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
