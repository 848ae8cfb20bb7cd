"""One cut or several? The sample apps pruned to a kept-MAC fraction with distillation, in one cut
(`--prune-steps 1`) and in edgekit's default rounds (stages/prune.py: every cut before the last keeps
half of the MACs the one before it left), through the build's own stage chain.

    .venv/bin/python bench/prune_steps.py [--seeds 0 1]

Writes bench/prune_steps.md and bench/prune_steps.json. Float students (no int8: the rounds change
the training, not the export). Accuracy on the labelled calibration data (what `edgekit search`
judges candidates on) and on the evaluation data; both chose nothing here. A few hundred samples:
one sample is 0.33 point of calibration accuracy, 0.28 of evaluation accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import facts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "prune_steps.md"
# (app, kept MACs asked, --prune-steps: None is the default rounds). One cut lands on coarser MAC
# shares than rounds do (whole multiples of 8 channels, cut once: digits asked 0.1 keeps 0.074, asked
# 0.13 keeps 0.121; in rounds it keeps 0.090): the one cut with more MACs kept than the rounds' result
# is there to compare them at no fewer MACs.
CASES = (("digits", 0.1, 1), ("digits", 0.13, 1), ("digits", 0.1, None), ("digits", 0.25, 1), ("digits", 0.3, 1),
         ("digits", 0.25, None), ("vit_digits", 0.25, 1), ("vit_digits", 0.25, None))


def student(app: str, fraction: float, steps: int | None, seed: int) -> dict:
    from edgekit import api
    from edgekit.model.data import load_npz
    from edgekit.model.loaded import LoadedModel
    from edgekit.progress import Steps
    from edgekit.stages import chain
    from edgekit.stages.options import StageOptions
    from edgekit.stages.prune import PruneConfig
    from edgekit.target import load_target
    from edgekit.train.distill import DistillConfig, accuracy

    spec = api.source(str(REPO / "sample_apps" / app))
    loaded = LoadedModel.load(spec)
    options = StageOptions(prune=PruneConfig(macs_target=fraction, steps=steps), distill=DistillConfig(seed=seed))
    planned = chain.plan(options, load_target("rpi4"))
    progress = Steps(show=False)
    begin = time.monotonic()
    model = chain.run(planned, chain.StageContext(loaded, progress), None, cache=None)
    seconds = time.monotonic() - begin
    calib = load_npz(spec.calib, spec.inputs, "calib", need_labels=True)
    cuts = [r["config"]["macs_target"] for r in progress.records if r["stage"] == "prune"]
    measure = progress.records[0]
    return {"app": app, "fraction": fraction, "cuts": cuts, "seed": seed, "seconds": round(seconds, 1),
            "macs_kept": round(progress.records[-1]["macs"] / measure["macs"], 3),
            "calib": accuracy(model, calib, spec.inputs), "eval": progress.records[-1]["accuracy_float"],
            "unpruned_calib": accuracy(loaded.model, calib, spec.inputs), "unpruned_eval": measure["accuracy_float"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = []
    for app, fraction, steps in CASES:
        for seed in args.seeds:
            rows.append(student(app, fraction, steps, seed))
            print(json.dumps(rows[-1]), flush=True)
    m = facts()
    lines = ["# Pruning in one cut or in rounds", "",
             f"Reproduce: `.venv/bin/python bench/prune_steps.py`. {m['date']}, {m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}. `--prune-macs F --distill` through the build's stage chain (rpi4's channel "
             "rounding, distillation defaults), float students, seeds " + ", ".join(map(str, args.seeds)) + ".", "",
             "| app | kept MACs asked | cuts (kept MAC shares) | MACs kept | seed | calib accuracy | eval accuracy | "
             "unpruned calib / eval | seconds |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['app']} | {r['fraction']:g} | {', '.join(f'{c:g}' for c in r['cuts'])} | {r['macs_kept']:.3f} | "
                     f"{r['seed']} | {r['calib']:.2f} % | {r['eval']:.2f} % | {r['unpruned_calib']:.2f} / "
                     f"{r['unpruned_eval']:.2f} % | {r['seconds']:.0f} |")
    OUT.write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
