"""Do the graph rewrites (edgekit/formats/xnnpack_rewrites.py) pay off? Host latency of int8
`.pte` artifacts of mean-pooled nets built with and without them, side by side.

    .venv/bin/python bench/rewrites.py [--threads 1] [--rounds 15] [--runs 10]

Each model is built twice in this one process, the same way except for the rewrites (the
"without" artifact is what ExecuTorch's PT2E tutorial path lowers: `x.mean((2, 3))` left on
the portable kernels), then both are timed in interleaved rounds so machine noise hits them
alike. Writes bench/rewrites.md. Host timings: compare the ratio, not the milliseconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from machine import facts
from measure import interleaved_medians

OUT = Path(__file__).resolve().parent / "rewrites.md"


def resnet18_mean_pooled():
    """ResNet-18 (edgekit.zoo, random weights: latency depends on the structure) pooling with
    x.mean((2, 3)) instead of nn.AdaptiveAvgPool2d, as much user code writes it."""
    from edgekit.zoo.resnet18 import build_model

    class MeanPooled(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return n.fc(x.mean((2, 3)))

    return MeanPooled(build_model())


def mobilenet_v3_small():
    from edgekit.zoo.mobilenet_v3 import build_model  # pools with x.mean((2, 3)), as its reference code

    return build_model()


MODELS = {"resnet18 (mean-pooled)": resnet18_mean_pooled, "mobilenet_v3_small": mobilenet_v3_small}


def build(model, example, path: Path, rewrites: bool) -> dict:
    from edgekit.formats import executorch, xnnpack_rewrites
    from edgekit.formats.base import QuantConfig

    saved = xnnpack_rewrites.REWRITES
    if not rewrites:
        xnnpack_rewrites.REWRITES = []
    try:
        calib = [(torch.randn_like(example[0]),) for _ in range(8)]
        qmodel = executorch.quantize(model, example, calib, QuantConfig())
        lowering = executorch.export(qmodel, example, path)
    finally:
        xnnpack_rewrites.REWRITES = saved
    return {"outside": lowering["ops_outside_delegate"], "rewrites": [r["rewrite"] for r in lowering["rewrites"]]}


def time_side_by_side(paths: list[Path], x: np.ndarray, threads: int, rounds: int, runs: int) -> list[float]:
    from edgekit.formats import get_format

    runners = [get_format("executorch").load(p, threads=threads) for p in paths]
    return interleaved_medians(runners, [x], 5, rounds, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-rewrites-") as tmp:
        for name, make in MODELS.items():
            torch.manual_seed(0)
            model = make().eval()
            example = (torch.randn(1, 3, 224, 224),)
            paths = [Path(tmp) / f"{name.split()[0]}-{kind}.pte" for kind in ("with", "without")]
            with_info, without_info = build(model, example, paths[0], True), build(model, example, paths[1], False)
            ms = time_side_by_side(paths, example[0].numpy(), args.threads, args.rounds, args.runs)
            rows.append((name, with_info, without_info, ms))
            print(name, ms, flush=True)
    m = facts()
    lines = [
        "# Graph rewrites: int8 .pte with and without them, side by side",
        "",
        f"Reproduce: `.venv/bin/python bench/rewrites.py` ({time.time() - start:.0f} s for this run). "
        f"{m['date']}, {m['cpu']}, {args.threads} thread(s); median of {args.rounds} interleaved rounds of "
        f"{args.runs} runs each, batch 1, 224x224, random weights (structure decides latency). Host times: "
        "read the ratio.",
        "",
        "| model | without: ops off the delegate | ms | with: rewrites | ops off the delegate | ms | without / with |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for name, w, wo, (ms_with, ms_without) in rows:
        lines.append(f"| {name} | {', '.join(wo['outside']) or 'none'} | {ms_without:.3f} | "
                     f"{'; '.join(w['rewrites']) or 'none'} | {', '.join(w['outside']) or 'none'} | {ms_with:.3f} | "
                     f"{ms_without / ms_with:.2f}× |")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
