"""Guest instructions per inference on emulated Cortex-A cores: float vs int8 vs pruned int8.

    .venv/bin/python bench/emulated_cost.py [--models digits vit_digits mobilenet_v2] [--out bench/emulated_cost.md]

Needs `make emulator`. Each artifact is an XNNPACK `.pte`, run once by
edgekit-et-runner under qemu-aarch64 with the instruction-count plugin, at one
thread, on the core each target profile names (cortex-a53: pi-zero2,
cortex-a72: rpi4, cortex-a76: rpi5 and Android). Counts are deterministic: unlike
wall time under emulation (hundreds of times slower than a board, and noisy),
they compare artifacts and cores honestly. They are not latency: a core's
instructions per cycle, its memory and its clock are not in them. The pruned
row is `--prune 0.5` without distillation (accuracy does not change the count).
MobileNetV2 has random weights and is calibrated on random inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CORES = ("cortex-a53", "cortex-a72", "cortex-a76")
MODELS = {
    "digits": {"app": REPO / "sample_apps" / "digits", "prune": True},
    "vit_digits": {"app": REPO / "sample_apps" / "vit_digits", "prune": True},
    "mobilenet_v2": {"model": "edgekit.zoo.mobilenet_v2:build_model", "input_shape": "1,3,224,224", "prune": False},
}


def artifacts(name: str, spec: dict, work: Path) -> tuple[dict[str, Path], np.ndarray]:
    """{"float": .pte, "int8": .pte[, "int8 pruned": .pte]} and one input sample."""
    import torch

    from edgekit import api
    from edgekit.formats import executorch as executorch_format

    source = api.source(spec.get("app"), model=spec.get("model"), input_shape=spec.get("input_shape"))
    # Random weights (the zoo's MobileNetV2): no outputs to keep, so the gate is opened (counts only).
    gate = {} if "app" in spec else {"min_cosine": -1.0, "min_agreement": 0.0}
    out = {}
    manifest = api.build(source, "rpi4", api.recipe(formats=("executorch",), **gate), out=work / f"{name}-int8")
    out["int8"] = work / f"{name}-int8" / manifest["artifact"]["file"]
    if spec["prune"]:
        pruned = api.build(source, "rpi4", api.recipe(formats=("executorch",), prune=0.5, **gate),
                           out=work / f"{name}-pruned")
        out["int8 pruned 0.5"] = work / f"{name}-pruned" / pruned["artifact"]["file"]
    if "app" in spec:
        from edgekit.model.app import build_module, load_app

        model = build_module(load_app(spec["app"]))
        sample = np.load(spec["app"] / "eval.npz")["x"][:1].astype(np.float32)
    else:
        import importlib

        module, factory = spec["model"].split(":")
        model = getattr(importlib.import_module(module), factory)().eval()
        sample = np.random.default_rng(0).random([int(d) for d in spec["input_shape"].split(",")], dtype=np.float32)
    sample = sample.reshape(manifest["model"]["inputs"][0]["shape"])
    out["float"] = work / f"{name}-float.pte"
    with torch.no_grad():
        executorch_format.export(model, (torch.from_numpy(sample),), out["float"])
    return out, sample


def count(paths, cpu: str, artifact: Path, sample: np.ndarray, work: Path) -> int | None:
    from edgekit.emulator.check import EmulatedCore, run_native_pte

    work.mkdir(parents=True, exist_ok=True)
    _, n, _ = run_native_pte(EmulatedCore(paths, cpu, work), artifact, [[sample]], "a")
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "emulated_cost.md")
    args = parser.parse_args()

    from edgekit.emulator.paths import EmulatorPaths
    from edgekit.emulator.setup import require_ready
    from edgekit.errors import UsageError

    paths = EmulatorPaths.default()
    try:
        require_ready(paths)
    except UsageError as e:
        print(f"error: {e.message}\n  fix: {e.hint}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-emulated-cost-") as tmp:
        for name in args.models:
            arts, sample = artifacts(name, MODELS[name], Path(tmp))
            for cpu in CORES:
                counts = {kind: count(paths, cpu, path, sample, Path(tmp) / "w" / f"{name}-{cpu}-{kind}".replace(" ", "_"))
                          for kind, path in arts.items()}
                rows.append({"model": name, "core": cpu, **counts})
                print(json.dumps(rows[-1]), file=sys.stderr)
    lines = ["# Guest instructions per inference on emulated cores", "",
             "`python bench/emulated_cost.py` (needs `make emulator`). One inference, one thread, XNNPACK `.pte` in",
             "edgekit-et-runner under qemu-aarch64 with the instruction-count plugin. Deterministic; not latency.", "",
             "| model | core | float (M) | int8 (M) | int8 / float | int8 pruned 0.5 / float |", "|---|---|---|---|---|---|"]
    for r in rows:
        pruned = r.get("int8 pruned 0.5")
        pruned_ratio = f"{pruned / r['float']:.2f}" if pruned else "n/a"
        lines.append(f"| {r['model']} | {r['core']} | {r['float'] / 1e6:.3g} | {r['int8'] / 1e6:.3g} | "
                     f"{r['int8'] / r['float']:.2f} | {pruned_ratio} |")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
