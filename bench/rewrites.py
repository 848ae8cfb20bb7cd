"""Do the graph rewrites (edgekit/formats/xnnpack_rewrites.py) pay off? Host latency of int8
artifacts of standard architectures, side by side: ExecuTorch's PT2E tutorial path, edgekit's
`.pte` without and with the rewrites, and edgekit's `.onnx`; and the guest instructions one
inference of each executes on emulated Cortex-A72 and A76 cores.

    .venv/bin/python bench/rewrites.py [--rounds 15] [--runs 10] [--models deit_tiny,...] [--no-emulate]

Each model is built four ways in this one process from the same float model and calibration
inputs, then the four artifacts are timed in interleaved rounds (so machine noise hits them
alike), at 1 thread and at all of this machine's threads. Each artifact is compared with the
float model on held-out random inputs as the quality gate compares (random weights: structure
decides latency; agreement says the artifact still computes the model). Then, where the arm64
emulator is built (`make emulator`; skipped with a note otherwise, or with --no-emulate), each
artifact runs once more on each core with the same input, one thread, under qemu-aarch64 with the
instruction-count plugin, as `edgekit validate --emulate` counts: a `.pte` in the native ExecuTorch
runner (edgekit.emulator.check.run_native_pte), the `.onnx` in the guest's onnxruntime
(run_in_guest_python, which counts only between marker syscalls around one `session.run`, not
the interpreter's start-up). Writes bench/rewrites.md and bench/rewrites.json. Host timings:
compare the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from baselines import tutorial_edge
from machine import facts
from measure import interleaved_medians, short_error

OUT = Path(__file__).resolve().parent / "rewrites.md"
CORES = ("cortex-a72", "cortex-a76")  # rpi4's and rpi5's cores
CALIB, HELD_OUT = 8, 16  # random inputs to calibrate on, and others to compare with float on
KINDS = ("tutorial", "without", "with", "onnx")
LABELS = {"tutorial": "tutorial .pte", "without": ".pte, no rewrites", "with": ".pte (edgekit)", "onnx": ".onnx (edgekit)"}


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


def mobilenet_v2():
    from edgekit.zoo.mobilenet_v2 import build_model

    return build_model()


def deit_tiny():
    from edgekit.zoo.deit_tiny import build_model  # F.scaled_dot_product_attention, nn.LayerNorm

    return build_model()


class BertTiny(nn.Module):
    """A BERT-tiny-class encoder (2 layers, 128 wide, 2 heads: google's bert_uncased_L-2_H-128_A-2
    shape) from transformers' own BertModel, mean-pooled over the tokens its padding mask keeps."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=512), add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


def bert_tiny():
    return BertTiny()


MODELS = {"deit_tiny": deit_tiny, "resnet18 (mean-pooled)": resnet18_mean_pooled,
          "mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small, "bert_tiny": bert_tiny}
TOKENS = 128  # bert_tiny's sequence length; its inputs are token ids and a padding mask


def example_for(name: str) -> tuple:
    """One input of the model's kind: an image, or token ids with the last quarter padded."""
    if name != "bert_tiny":
        return (torch.randn(1, 3, 224, 224),)
    mask = torch.ones(1, TOKENS, dtype=torch.long)
    mask[:, 3 * TOKENS // 4:] = 0
    return torch.randint(0, 30522, (1, TOKENS)), mask


def input_names(example: tuple) -> tuple[str, ...]:
    return ("x",) if len(example) == 1 else ("input_ids", "attention_mask")


def build_pte(model, example, calib, path: Path, rewrites: bool) -> dict:
    from edgekit.formats import executorch, xnnpack_rewrites
    from edgekit.formats.base import QuantConfig

    saved = xnnpack_rewrites.REWRITES, xnnpack_rewrites.LOWERING_REWRITES
    if not rewrites:
        xnnpack_rewrites.REWRITES, xnnpack_rewrites.LOWERING_REWRITES = [], []
    try:
        # nearest weight rounding, as the tutorial: what differs is the graph, not the weights
        qmodel = executorch.quantize(model, example, calib, QuantConfig(weight_rounding="nearest"))
        lowering = executorch.export(qmodel, example, path)
    finally:
        xnnpack_rewrites.REWRITES, xnnpack_rewrites.LOWERING_REWRITES = saved
    return {"outside": lowering["ops_outside_delegate"], "rewrites": [r["rewrite"] for r in lowering["rewrites"]]}


def build_tutorial(model, example, calib, path: Path) -> dict:
    """ExecuTorch's PT2E + XNNPACK tutorial, as written there."""
    from edgekit.formats.executorch import _ops_outside_delegate

    edge = tutorial_edge(model, example, calib)
    outside = _ops_outside_delegate(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    return {"outside": outside, "rewrites": []}


def build_onnx(model, example, calib, path: Path) -> dict:
    from edgekit.formats import onnx
    from edgekit.formats.base import QuantConfig

    qmodel = onnx.quantize(model, example, calib,
                           QuantConfig(weight_rounding="nearest", input_names=input_names(example)))
    onnx.export(qmodel, example, path)
    return {"outside": [f["op"] for f in onnx.lint(path)["findings"]], "rewrites": []}


def agreement(model, runner, held_out: list) -> str:
    """The artifact against the float model as the quality gate reads it (edgekit.compare): top-1
    agreement on the decisive samples (random weights leave many near-ties) and mean logit cosine."""
    from edgekit.compare import Gate, compare_output

    with torch.no_grad():
        ref = np.concatenate([model(*x).numpy() for x in held_out])
    out = np.concatenate([runner.run([t.numpy() for t in x])[0] for x in held_out])
    embedding = len(held_out[0]) > 1  # bert_tiny: a sentence embedding, judged by cosine alone
    m = compare_output(ref, out, Gate(), task="embedding" if embedding else "classification")
    agree = m["top1_agreement_decisive"]
    if embedding:
        return f"embedding, {m['cosine']:.4f}"
    return (f"{agree:.0f} % of {m['top1_decisive_samples']}" if agree is not None else "no decisive sample") + \
        f", {m['cosine']:.4f}"


def emulator(skip: bool):
    """(EmulatorPaths, None) if the arm64 emulator is built, else (None, why the counts are skipped)."""
    if skip:
        return None, "--no-emulate"
    from edgekit.emulator.paths import EmulatorPaths
    from edgekit.emulator.setup import require_ready
    from edgekit.errors import UsageError

    paths = EmulatorPaths.default()
    try:
        require_ready(paths)
    except UsageError as e:
        return None, f"{e.message} ({e.hint})"
    return paths, None


def emulated_counts(emu, artifacts: dict, example: tuple, work: Path) -> dict:
    """{core: {kind: guest instructions of one inference of `example` | "fails: why"}} for the built
    artifacts in `artifacts` ({kind: path}), at one thread, with edgekit's own emulated runs."""
    from edgekit.emulator.check import EmulatedCore, run_in_guest_python, run_native_pte

    sample = [t.numpy() for t in example]  # the one input, every artifact and core alike
    counts = {}
    for cpu in CORES:
        (work / cpu).mkdir(parents=True, exist_ok=True)
        core = EmulatedCore(emu, cpu, work / cpu)
        counts[cpu] = {}
        for kind, path in artifacts.items():
            begin = time.time()
            try:
                if path.suffix == ".onnx":
                    _, n, _ = run_in_guest_python(core, path, [sample], list(input_names(example)), kind, "onnxruntime")
                else:
                    _, n, _ = run_native_pte(core, path, [sample], kind)
                counts[cpu][kind] = n if n is not None else "fails: the count plugin wrote no count"
            except Exception as e:  # noqa: BLE001 - a run that fails keeps its cell, with the reason
                counts[cpu][kind] = "fails: " + short_error(e)
            print(f"  {cpu} {kind}: {counts[cpu][kind]} ({time.time() - begin:.0f} s)", flush=True)
    return counts


def main() -> None:
    from edgekit.formats import get_format

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-emulate", action="store_true", help="skip the emulated instruction counts")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown to write (a .json beside it)")
    args = parser.parse_args()
    threads = (1, os.cpu_count() or 1)
    start = time.time()
    emu, skipped = emulator(args.no_emulate)
    if skipped:
        print(f"note: emulated instruction counts skipped: {skipped}", flush=True)
    emulated_s = 0.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-rewrites-") as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = MODELS[name]().eval()
            example = example_for(name)
            calib = [example_for(name) for _ in range(CALIB)]
            held_out = [example_for(name) for _ in range(HELD_OUT)]
            stem = name.split()[0]
            paths = {k: Path(tmp) / f"{stem}-{k}{'.onnx' if k == 'onnx' else '.pte'}" for k in KINDS}
            builders = {"tutorial": lambda p: build_tutorial(model, example, calib, p),
                        "without": lambda p: build_pte(model, example, calib, p, False),
                        "with": lambda p: build_pte(model, example, calib, p, True),
                        "onnx": lambda p: build_onnx(model, example, calib, p)}
            info = {}
            for k, build in builders.items():
                try:
                    info[k] = build(paths[k])
                except Exception as e:  # noqa: BLE001 - a path that fails keeps its row, with the error
                    info[k] = {"error": short_error(e), "outside": [], "rewrites": []}
            built = [k for k in KINDS if "error" not in info[k]]
            fmt = {k: get_format("onnx" if k == "onnx" else "executorch") for k in KINDS}
            kept = {k: agreement(model, fmt[k].load(paths[k]), held_out) if k in built else "fails: " + info[k]["error"]
                    for k in KINDS}
            ms = {}
            for n in threads:
                runners = [fmt[k].load(paths[k], threads=n) for k in built]
                feed = [t.numpy() for t in example]
                ms[n] = dict(zip(built, interleaved_medians(runners, feed, 5, args.rounds, args.runs)))
            print(name, ms, kept, flush=True)
            counts = {}
            if emu is not None:
                begin = time.time()
                counts = emulated_counts(emu, {k: paths[k] for k in built}, example, Path(tmp) / "emulated" / stem)
                emulated_s += time.time() - begin
            rows.append((name, info, kept, ms, counts))
    m = facts()
    lines = [
        "# Graph rewrites: int8 artifacts side by side",
        "",
        f"Reproduce: `.venv/bin/python bench/rewrites.py` ({time.time() - start:.0f} s for this run"
        + (f", {emulated_s:.0f} s of it the emulated counts" if emu is not None else "") + "). "
        f"{m['date']}, {m['cpu']}; median of {args.rounds} interleaved rounds of {args.runs} runs each, batch 1, "
        f"224x224 images or {TOKENS} tokens (a quarter padded), random weights (structure decides latency), "
        f"calibrated on {CALIB} random inputs, compared with "
        f"float on {HELD_OUT} others. `.pte` artifacts with nearest weight rounding, as the tutorial. Host times: "
        "read the ratios.",
        "",
        "Ops each `.pte` leaves on ExecuTorch's portable kernels (scalar, one thread), and what edgekit rewrote:",
        "",
        "| model | tutorial .pte | .pte without rewrites | .pte (edgekit): rewrites | off the delegate |",
        "|---|---|---|---|---|",
    ]
    def off(i):
        return "fails" if "error" in i else ", ".join(i["outside"]) or "none"

    for name, info, *_ in rows:
        lines.append(f"| {name} | {off(info['tutorial'])} | "
                     f"{off(info['without'])} | {'; '.join(info['with']['rewrites']) or 'none'} | {off(info['with'])} |")
    lines += ["", "Latency (ms), and agreement with float: top-1 agreement on the samples whose float top class "
              "leads by more than 2 output steps (the quality gate's decisive samples), and mean logit cosine:", "",
              "| model | threads | " + " | ".join(LABELS[k] for k in KINDS) + " | edgekit .pte / tutorial |",
              "|---|---:|" + "---:|" * (len(KINDS) + 1)]
    for name, _, kept, ms, _ in rows:
        for n in threads:
            ratio = f"{ms[n]['with'] / ms[n]['tutorial']:.2f}×" if {"with", "tutorial"} <= set(ms[n]) else "—"
            lines.append(f"| {name} | {n} | " + " | ".join(f"{ms[n][k]:.3f}" if k in ms[n] else "—" for k in KINDS) +
                         f" | {ratio} |")
        lines.append(f"| {name} | agreement | " + " | ".join(kept[k] for k in KINDS) + " | |")
    lines += ["", "Guest instructions of one inference (millions) on emulated cores: the same input for every artifact, "
              "one thread, qemu-aarch64 with edgekit's instruction-count plugin (as `edgekit validate --emulate`)."]
    if emu is None:
        lines.append(f"Not counted in this run: {skipped}.")
    else:
        lines += ["Deterministic (the same artifact and input give the same count), one thread, and not latency: "
                  "memory traffic and instructions per cycle are not in them. The `.onnx` runs in the guest's "
                  "onnxruntime under Python; only its one `session.run` between marker syscalls is counted, not the "
                  "interpreter's start-up.", "",
                  "| model | core | " + " | ".join(LABELS[k] + (" (M instr)" if k == KINDS[0] else "") for k in KINDS)
                  + " | edgekit .pte / tutorial |",
                  "|---|---|" + "---:|" * (len(KINDS) + 1)]

        def mega(c):
            return "—" if c is None else c.replace("|", "/") if isinstance(c, str) else f"{c / 1e6:,.1f}"

        for name, _, _, _, counts in rows:
            for cpu in CORES:
                c = counts.get(cpu, {})
                both = all(isinstance(c.get(k), int) for k in ("with", "tutorial"))
                ratio = f"{c['with'] / c['tutorial']:.2f}×" if both else "—"
                lines.append(f"| {name} | {cpu} | " + " | ".join(mega(c.get(k)) for k in KINDS) + f" | {ratio} |")
    args.out.write_text("\n".join(lines) + "\n")
    doc = [{"model": name, "ops_outside_delegate": {k: info[k]["outside"] for k in KINDS},
            "errors": {k: info[k]["error"] for k in KINDS if "error" in info[k]},
            "latency_ms": {str(n): ms[n] for n in threads}, "agreement": kept, "guest_instructions": counts}
           for name, info, kept, ms, counts in rows]
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
