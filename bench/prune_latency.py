"""Does pruning's MAC saving become time saved? MACs ratio vs host int8 latency ratio vs emulated
guest-instruction ratio, per kept-MAC budget.

    .venv/bin/python bench/prune_latency.py [--fractions 1 0.75 0.5 0.25] [--models digits vit_digits mobilenet_v2]
        [--threads 1] [--rounds 15] [--runs 50] [--no-emulate] [--out bench/prune_latency.md]

For each model, builds the ExecuTorch/XNNPACK int8 artifact at each kept-MAC fraction
(`api.recipe(prune_macs=F)`; 1 = unpruned), without distillation and with nearest weight
rounding: weights' values change neither the graph nor the kernels that run, and the build is
about 4x faster than with GPTQ rounding. Then:

- MACs ratio: the prune step's MAC count over the measure step's (the manifest's steps), as
  edgekit counts MACs (edgekit/stages/macs.py);
- host latency ratio: every artifact of the model loaded in this one process and timed side by
  side at `--threads`, in interleaved rounds (bench/measure.py) so machine noise hits all
  budgets alike; the median over rounds, to the unpruned artifact's;
- guest-instruction ratios: one inference at one thread on emulated Cortex-A72 (rpi4) and
  Cortex-A76 (rpi5) cores (bench/emulated_cost.py's `count`), where the emulator is built
  (`make emulator`; skipped with a note otherwise, or with --no-emulate).

To say why ratios disagree (where they are more than 1.3x apart), the same runs measure a
runtime floor (a `.pte` computing only `x + 1` on the model's input, timed and counted
alongside); each artifact's XNNPACK graph is read for its nodes by kind and the elements its
non-MAC nodes write; each budget's float graph gives its conv/linear/matmul MACs alone (torch's
FlopCounterMode); and cost = a + b·MACs is fitted over the budgets. Writes OUT (Markdown) and
OUT with .json (raw numbers); `--render JSON` rewrites the Markdown from saved numbers.
Host timings: compare ratios from one run, not milliseconds across runs.
"""

from __future__ import annotations

import argparse
import json
import operator
import shlex
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "prune_latency.md"
MODELS = {
    "digits": {"app": REPO / "sample_apps" / "digits"},
    "vit_digits": {"app": REPO / "sample_apps" / "vit_digits"},
    # random weights (edgekit.zoo): structure is what matters for latency
    "mobilenet_v2": {"model": "edgekit.zoo.mobilenet_v2:build_small", "input_shape": "1,3,32,32"},
}
CORES = ("cortex-a72", "cortex-a76")  # rpi4's and rpi5's cores
DISAGREE = 1.3  # ratios further apart than this factor get a 'why'
# Ops of the float exported graph, by aten name: the ones MACs count, and the ones that move data only.
MAC_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "linear", "matmul", "mm", "addmm", "bmm", "baddbmm"}
SHAPE_OPS = {"view", "reshape", "_unsafe_view", "permute", "transpose", "t", "flatten", "unsqueeze", "squeeze",
             "expand", "contiguous", "clone", "slice", "select", "alias", "detach"}
# Nodes of the XNNPACK graph inside the .pte: the ones doing MACs, and the ones only moving data.
MAC_NODES = {"XNNFullyConnected", "XNNConv2d", "XNNDepthwiseConv2d", "XNNBatchMatrixMultiply", "XNNConvTranspose2d"}
MOVE_WORDS = ("Transpose", "Reshape", "Copy", "Concatenate", "Slice", "Pad", "Squeeze", "DepthToSpace")


# ---------------------------------------------------------------- building


def _gate(spec: dict) -> dict:
    # Random weights (the zoo's MobileNetV2): no outputs to keep, so the gate is opened (timing only).
    return {} if "app" in spec else {"min_cosine": -1.0, "min_agreement": 0.0}


def build_all(name: str, fractions: list[float], out: Path) -> list[dict]:
    """One int8 .pte per kept-MAC fraction (1 = unpruned), largest first."""
    from edgekit import api
    from edgekit.errors import BuildGateFailed

    spec = MODELS[name]
    rows = []
    for fraction in sorted(fractions, reverse=True):
        options = {"prune_macs": fraction} if fraction < 1 else {}
        source = api.source(spec.get("app"), model=spec.get("model"), input_shape=spec.get("input_shape"))
        recipe = api.recipe(formats=("executorch",), weight_rounding="nearest", **options, **_gate(spec))
        build_dir = out / f"{name}-{fraction:g}"
        start = time.perf_counter()
        note = None
        with warnings.catch_warnings():
            # pruned without distillation: accuracy falls, as expected; latency does not depend on it
            warnings.filterwarnings("ignore", message=".*points below the model as loaded")
            try:
                m = api.build(source, "rpi4", recipe, out=build_dir)
            except BuildGateFailed as e:  # the artifact is written all the same: time it
                m, note = e.manifest, f"failed the quality gate: {e.message}"
        steps = {s["stage"]: s for s in m["steps"]}
        # an unpruned build runs no stage chain, so no "measure" step: filled in below
        counted = steps.get("prune") or steps.get("measure") or {}
        rows.append({"fraction": fraction, "dir": build_dir, "file": m["artifact"]["file"],
                     "bytes": m["artifact"]["bytes"], "macs": counted.get("macs"),
                     "macs_unpruned": steps.get("measure", {}).get("macs"), "params": counted.get("params"),
                     "accuracy": m["metrics"].get("accuracy_artifact"), "note": note,
                     "input_shape": tuple(m["model"]["inputs"][0]["shape"]),
                     "build_seconds": round(time.perf_counter() - start, 1)})
        print(f"built {name} kept {fraction:g} ({rows[-1]['build_seconds']} s)", file=sys.stderr)
    unpruned = next((r["macs_unpruned"] for r in rows if r["macs_unpruned"]), None)
    if unpruned is None:  # no pruned build to read it from: the same counter the measure step uses
        import torch

        from edgekit.stages.macs import count

        unpruned = count(_unpruned_module(name), (torch.zeros(rows[0]["input_shape"]),))["macs"]
    for row in rows:
        row["macs_unpruned"] = unpruned
        row["macs"] = row["macs"] if row["fraction"] < 1 else unpruned
    return rows


def sample_for(name: str, shape: tuple) -> np.ndarray:
    """One input: the app's first held-out sample, or (random-weight models) a random one."""
    spec = MODELS[name]
    if "app" in spec:
        x = np.load(spec["app"] / "eval.npz")["x"][:1]
    else:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return np.ascontiguousarray(x.reshape(shape).astype(np.float32))


def build_floor(shape: tuple, out: Path) -> Path:
    """A `.pte` that computes only x + 1 on the model's input: what a call costs with (nearly) no work."""
    import torch

    from edgekit.formats import executorch as executorch_format

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1.0

    out.mkdir(parents=True, exist_ok=True)
    path = out / "floor.pte"
    with torch.no_grad():
        executorch_format.export(AddOne().eval(), (torch.zeros(shape),), path)
    return path


# ---------------------------------------------------------------- the float graphs


def _unpruned_module(name: str):
    import importlib

    spec = MODELS[name]
    if "app" in spec:
        from edgekit.model.app import build_module, load_app

        return build_module(load_app(spec["app"])).eval()
    module, factory = spec["model"].split(":")
    return getattr(importlib.import_module(module), factory)().eval()


def delegate_nodes(pte: Path) -> dict | None:
    """The nodes of every XNNPACK graph in the `.pte` (what the int8 artifact runs), read with
    ExecuTorch's own (private) serialization helpers and flatc; None if they fail. "nodes" by kind:
    "mac" (fully-connected, conv, batch matmul), "convert" (float <-> int8), "move" (transposes,
    reshapes, copies), "other"; "other_elements": the elements the non-MAC nodes write;
    "fp32_nodes": nodes writing a float tensor (the work between converts runs in float)."""
    import re

    try:
        import executorch.backends.xnnpack.serialization.xnnpack_graph_serialize as xnn
        from executorch.exir._serialize._flatbuffer import _flatc_decompile
        from executorch.exir._serialize._program import _extract_delegate_payload

        data, schema = pte.read_bytes(), Path(xnn.__file__).parent / "schema.fbs"
        graphs = []
        while (payload := _extract_delegate_payload(data, "xnnpack", len(graphs))) is not None:
            header = xnn.XNNHeader.from_bytes(payload[:xnn.XNNHeader.EXPECTED_LENGTH])
            with tempfile.TemporaryDirectory() as tmp:
                graph = Path(tmp) / "graph.bin"
                graph.write_bytes(payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
                _flatc_decompile(tmp, str(schema), str(graph), ["--raw-binary"])
                text = (Path(tmp) / "graph.json").read_text()
            # flatc writes non-finite floats (e.g. an unbounded output_max) bare: quote them for json
            graphs.append(json.loads(re.sub(r'(:\s*)(-?inf|nan)\b', r'\1"\2"', text)))
    except Exception as e:  # noqa: BLE001 - evidence only: the bench goes on without it
        print(f"warning: could not read the XNNPACK graph of {pte.name}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    kinds: Counter = Counter()
    classes: Counter = Counter()
    other_elements = fp32 = 0
    for g in graphs:
        values = {}
        for v in g["xvalues"]:
            t = v["xvalue_union"].get("tensor_value", v["xvalue_union"])
            values[t["id_out"]] = (int(np.prod(t["dims"])), t["datatype"])
        for node in g["xnodes"]:
            kind = node["xnode_union_type"]
            kinds[kind.removeprefix("XNN")] += 1
            cls = ("mac" if kind in MAC_NODES else "convert" if kind == "XNNConvert"
                   else "move" if any(w in kind for w in MOVE_WORDS) else "other")
            classes[cls] += 1
            outs = [values[i] for k, i in node["xnode_union"].items() if re.fullmatch(r"output\d*_id", k) and i in values]
            fp32 += any(dtype == "xnn_datatype_fp32" for _, dtype in outs)
            if cls != "mac":
                other_elements += sum(n for n, _ in outs)
    return {"delegates": len(graphs), "nodes": sum(kinds.values()), **{c: classes.get(c, 0) for c in
            ("mac", "convert", "move", "other")}, "fp32_nodes": fp32, "other_elements": other_elements,
            "kinds": dict(kinds.most_common())}


def graph_facts(name: str, row: dict) -> dict:
    """Ops of the float model of this budget (torch.export graph, before XNNPACK fuses any) and its
    MACs with every conv/linear/matmul (edgekit's count leaves out bare matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    example = (torch.randn(row["input_shape"]),)
    program = row["dir"] / "float_model.pt2"  # written by the stage chain: a pruned model's own graph
    ep = torch.export.load(str(program)) if program.is_file() else torch.export.export(_unpruned_module(name), example)
    kinds: Counter = Counter()
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        op = getattr(node.target, "_opname", None) or getattr(node.target, "__name__", str(node.target))
        kinds[op] += 1
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        ep.module()(*example)
    mac_ops = sum(n for k, n in kinds.items() if k in MAC_OPS)
    shape_ops = sum(n for k, n in kinds.items() if k in SHAPE_OPS)
    return {"ops": sum(kinds.values()), "mac_ops": mac_ops, "shape_ops": shape_ops,
            "other_ops": sum(kinds.values()) - mac_ops - shape_ops,
            "kinds": dict(kinds.most_common()),
            "macs_all": int(flops.get_total_flops() // 2)}


# ---------------------------------------------------------------- measuring


def time_side_by_side(rows: list[dict], floor: Path, x: np.ndarray, threads: int, rounds: int, runs: int) -> float:
    """Median ms of every row's artifact (row["ms"]) and of the floor (returned), interleaved."""
    from edgekit.formats import get_format
    from measure import interleaved_medians

    backend = get_format("executorch")
    runners = [backend.load(r["dir"] / r["file"], threads=threads) for r in rows]
    runners.append(backend.load(floor, threads=threads))
    medians = interleaved_medians(runners, [x], 10, rounds, runs)
    for row, ms in zip(rows, medians):
        row["ms"] = round(ms, 5)
    return round(medians[-1], 5)


def emulator_paths(no_emulate: bool):
    """The built emulator's paths, or None (with the reason printed)."""
    if no_emulate:
        print("note: --no-emulate: guest-instruction columns skipped", file=sys.stderr)
        return None
    from edgekit.emulator.paths import EmulatorPaths
    from edgekit.emulator.setup import require_ready
    from edgekit.errors import UsageError

    paths = EmulatorPaths.default()
    try:
        require_ready(paths)
    except UsageError as e:
        print(f"note: emulator not ready ({e.message}); guest-instruction columns skipped. Fix: {e.hint}",
              file=sys.stderr)
        return None
    return paths


def count_instructions(paths, name: str, rows: list[dict], floor: Path, x: np.ndarray, work: Path) -> dict:
    """row["instr"][core] for every row, and the floor's count per core (returned); None where it failed."""
    from edgekit.emulator.check import EmulationFailed
    from emulated_cost import count

    floor_counts = {}
    for cpu in CORES:
        jobs = [(r["fraction"], r["dir"] / r["file"], r.setdefault("instr", {})) for r in rows]
        jobs.append(("floor", floor, floor_counts))
        for label, artifact, into in jobs:
            try:
                into[cpu] = count(paths, cpu, artifact, x, work / f"{name}-{label}-{cpu}")
            except EmulationFailed as e:
                print(f"warning: {name} {label} on {cpu}: {e}", file=sys.stderr)
                into[cpu] = None
            print(f"counted {name} {label} on {cpu}: {into[cpu]}", file=sys.stderr)
    return floor_counts


def fit(xs: list[float], ys: list[float]) -> dict | None:
    """y = a + b x by least squares: the intercept a is the part that does not fall with x."""
    if len(xs) < 3 or any(y is None for y in ys):
        return None
    b, a = np.polyfit(xs, ys, 1)
    pred = a + b * np.asarray(xs)
    ss = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    r2 = 1 - float(np.sum((np.asarray(ys) - pred) ** 2)) / ss if ss else None
    return {"intercept": float(a), "slope": float(b), "r2": r2}


def measure_model(name: str, args, paths, work: Path) -> dict:
    rows = build_all(name, args.fractions, work)
    x = sample_for(name, rows[0]["input_shape"])
    floor = build_floor(rows[0]["input_shape"], work / name)
    floor_ms = time_side_by_side(rows, floor, x, args.threads, args.rounds, args.runs)
    floor_instr = count_instructions(paths, name, rows, floor, x, work / "emulated") if paths else None
    for row in rows:
        row["graph"] = graph_facts(name, row)
        row["xnnpack"] = delegate_nodes(row["dir"] / row["file"])
    base = rows[0]
    for row in rows:
        row["macs_ratio"] = row["macs"] / base["macs"]
        row["ms_ratio"] = row["ms"] / base["ms"]
        row["macs_all_ratio"] = row["graph"]["macs_all"] / base["graph"]["macs_all"]
        have = row["xnnpack"] and base["xnnpack"] and base["xnnpack"]["other_elements"]
        row["other_elements_ratio"] = row["xnnpack"]["other_elements"] / base["xnnpack"]["other_elements"] if have else None
        if paths:
            row["instr_ratio"] = {cpu: (row["instr"][cpu] / base["instr"][cpu]
                                        if row["instr"].get(cpu) and base["instr"].get(cpu) else None) for cpu in CORES}
    macs = [r["macs"] for r in rows]
    fits = {"host_ms": fit(macs, [r["ms"] for r in rows])}
    if paths:
        fits.update({cpu: fit(macs, [r["instr"].get(cpu) for r in rows]) for cpu in CORES})
    return {"rows": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k != "dir"} for r in rows],
            "floor": {"ms": floor_ms, "instr": floor_instr}, "fits": fits}


# ---------------------------------------------------------------- the report


def apart(a: float | None, b: float | None) -> float | None:
    """How many times apart two ratios are (>= 1)."""
    if not a or not b:
        return None
    return max(a / b, b / a)


def disagreements(results: dict) -> list[dict]:
    out = []
    for name, res in results["models"].items():
        for r in res["rows"][1:]:
            pairs = {"host latency": r["ms_ratio"]}
            for cpu in CORES:
                pairs[f"{cpu} instructions"] = (r.get("instr_ratio") or {}).get(cpu)
            for what, ratio in pairs.items():
                factor = apart(ratio, r["macs_ratio"])
                if factor and factor > DISAGREE:
                    out.append({"model": name, "fraction": r["fraction"], "what": what, "ratio": ratio,
                                "macs_ratio": r["macs_ratio"], "apart": factor})
    return out


def _f(v, fmt: str = ".2f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def table(results: dict) -> list[str]:
    emulated = results["settings"]["emulated"]
    head = ["model", "kept MACs (asked)", "MACs ratio", "host latency ratio"]
    if emulated:
        head += ["A72 instr ratio", "A76 instr ratio"]
    head += ["MACs (M)", "host ms"]
    if emulated:
        head += ["A72 M instr", "A76 M instr"]
    head += ["size KB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results["models"].items():
        for r in res["rows"]:
            cells = [name, f"{r['fraction']:g}", f"{r['macs_ratio']:.2f}", f"{r['ms_ratio']:.2f}"]
            if emulated:
                cells += [_f(r["instr_ratio"].get(cpu)) for cpu in CORES]
            cells += [f"{r['macs'] / 1e6:.3g}", f"{r['ms']:.4f}"]
            if emulated:
                cells += [_f(r["instr"][cpu] / 1e6 if r["instr"].get(cpu) else None, ".3g") for cpu in CORES]
            cells += [f"{r['bytes'] / 1024:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        floor = res["floor"]
        cells = [f"{name}: floor (x + 1 .pte)", "", "", _f(floor["ms"] / res["rows"][0]["ms"])]
        if emulated:
            cells += [_f(floor["instr"][cpu] / res["rows"][0]["instr"][cpu]
                         if floor["instr"].get(cpu) and res["rows"][0]["instr"].get(cpu) else None) for cpu in CORES]
        cells += ["", f"{floor['ms']:.4f}"]
        if emulated:
            cells += [_f(floor["instr"][cpu] / 1e6 if floor["instr"].get(cpu) else None, ".3g") for cpu in CORES]
        cells += [""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _nodes(x: dict | None) -> str:
    if not x:
        return "–"
    return f"{x['nodes']} ({x['mac']} / {x['convert']} / {x['move']} / {x['other']})"


def evidence_table(results: dict) -> list[str]:
    """Per model: what the artifact runs at every budget, and the part of the cost that does not fall with MACs."""
    emulated = results["settings"]["emulated"]
    head = ["model", "XNNPACK nodes, unpruned → smallest (MAC / convert / move / other)",
            "elements the non-MAC nodes write, smallest budget / unpruned",
            "conv/linear/matmul MACs only (M, unpruned; ratio at smallest)",
            "host fit: a, b"]
    if emulated:
        head += ["A72 fit: a, b", "A76 fit: a, b"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results["models"].items():
        base, last = res["rows"][0], res["rows"][-1]
        cells = [name, f"{_nodes(base.get('xnnpack'))} → {_nodes(last.get('xnnpack'))}",
                 f"x{_f(last['other_elements_ratio'])} (MACs x{last['macs_ratio']:.2f})",
                 f"{base['graph']['macs_all'] / 1e6:.3g} (edgekit: {base['macs'] / 1e6:.3g}); "
                 f"x{last['macs_all_ratio']:.2f} (edgekit: x{last['macs_ratio']:.2f})",
                 _fit_cell(res["fits"]["host_ms"], base["ms"], "ms")]
        if emulated:
            cells += [_fit_cell(res["fits"].get(cpu), base["instr"].get(cpu), "instr") for cpu in CORES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fit_cell(f: dict | None, unpruned: float | None, unit: str) -> str:
    """a (the part that does not fall with MACs, and its share of the unpruned cost), b (cost per MAC)."""
    if not f or not unpruned:
        return "–"
    if unit == "ms":
        a, b = f"{f['intercept']:.4f} ms", f"{f['slope'] * 1e9:.3g} ms/GMAC"
    else:
        a, b = f"{f['intercept'] / 1e6:.3g} M", f"{f['slope']:.3g} instr/MAC"
    return f"{a} ({f['intercept'] / unpruned:.0%}), {b}, R² {_f(f['r2'])}"


def why(name: str, res: dict, found: list[dict], emulated: bool) -> list[str]:
    """A plain paragraph for one model whose ratios disagree, from what this run measured."""
    base, last = res["rows"][0], res["rows"][-1]
    rows = {r["fraction"]: r for r in res["rows"]}
    short = {"host latency": "host"} | {f"{c} instructions": c.replace("cortex-", "").upper() for c in CORES}
    listing = "; ".join(
        f"kept {fr:g}: MACs x{rows[fr]['macs_ratio']:.2f}, "
        + ", ".join(f"{short[d['what']]} x{d['ratio']:.2f}" for d in found if d["fraction"] == fr)
        for fr in sorted({d["fraction"] for d in found}, reverse=True))
    text = [f"**{name}** ({listing})."]
    # the part of the cost that does not fall with MACs
    fits = [("host time", res["fits"]["host_ms"], base["ms"])]
    if emulated:
        fits += [(f"{short[c + ' instructions']} instructions", res["fits"].get(c), base["instr"].get(c)) for c in CORES]
    fitted = [f"{f['intercept'] / b0:.0%} of the unpruned {who}" for who, f, b0 in fits if f and b0]
    if all(d["ratio"] > d["macs_ratio"] for d in found) and fitted:
        text.append("Cost falls slower than MACs because part of it does not fall with them: fitting cost = a + b·MACs "
                    f"over the {len(res['rows'])} budgets (R² ≥ {min(f['r2'] for _, f, _ in fits if f):.2f}), "
                    f"a is {', '.join(fitted)}. What that part is, as far as this run shows:")
    else:
        text.append("Not every gap is cost falling slower than MACs; why is not established here. What this run shows:")
    # (1) a fixed cost per call
    floor = res["floor"]
    closed, tried = [], 0
    for d in found:
        r = rows[d["fraction"]]
        cpu = None if d["what"] == "host latency" else d["what"].split()[0]
        f0 = floor["ms"] if cpu is None else (floor["instr"] or {}).get(cpu)
        own, b0 = (r["ms"], base["ms"]) if cpu is None else (r["instr"].get(cpu), base["instr"].get(cpu))
        if f0 is not None and own and b0 and b0 > f0:
            tried += 1
            if apart((own - f0) / (b0 - f0), d["macs_ratio"]) <= DISAGREE:
                closed.append(f"{short[d['what']]} at kept {d['fraction']:g}")
    guest = ""
    if emulated and floor["instr"] and all(floor["instr"].get(c) and base["instr"].get(c) for c in CORES):
        guest = (" but only " + " / ".join(f"{floor['instr'][c] / base['instr'][c]:.1%}" for c in CORES)
                 + " of the A72 / A76 instructions (the guest count is one inference in the C++ runner)")
    text.append(f"(1) A fixed cost per call: a `.pte` doing only `x + 1` costs {floor['ms'] / base['ms']:.0%} of the "
                f"unpruned host time (through ExecuTorch's Python bindings, as edgekit's runner calls them){guest}; "
                f"taking it off both closes {len(closed)} of the {tried} gaps"
                + (f" ({', '.join(closed)})." if closed else "."))
    # (2) nodes pruning does not remove
    x0 = base.get("xnnpack")
    if x0:
        counts = [r["xnnpack"]["nodes"] if r.get("xnnpack") else None for r in res["rows"]]
        others = ", ".join(f"{k} {n}" for k, n in x0["kinds"].items()
                           if "XNN" + k not in MAC_NODES and k != "Convert" and not any(w in k for w in MOVE_WORDS))
        text.append(("(2) Nodes pruning does not remove: the int8 artifact runs the same "
                     f"{x0['nodes']} XNNPACK nodes at every budget" if len(set(counts)) == 1 else
                     f"(2) The int8 artifact runs {x0['nodes']} XNNPACK nodes unpruned ("
                     + ", ".join(f"{n} at kept {r['fraction']:g}" for n, r in zip(counts[1:], res["rows"][1:])) + ")")
                    + f"; pruning narrows its {x0['mac']} MAC nodes, while its {x0['convert']} converts (float ↔ int8), "
                    f"{x0['move']} transposes/reshapes and {x0['other']} other nodes ({others}) do work that follows "
                    "the activations"
                    + (f"; {x0['fp32_nodes']} of the {x0['nodes']} nodes write float tensors" if x0["fp32_nodes"] > 1 else "")
                    + (f". The elements the non-MAC nodes write fall only to x{last['other_elements_ratio']:.2f} at "
                       f"kept {last['fraction']:g}, where MACs fall to x{last['macs_ratio']:.2f}."
                       if last.get("other_elements_ratio") is not None else "."))
    # (3) the two cores
    if emulated and all(res["fits"].get(c) for c in CORES):
        a72, a76 = (res["fits"][c] for c in CORES)
        if a76["slope"] < a72["slope"] and a72["intercept"] > 0 and a76["intercept"] > 0 \
                and apart(a72["intercept"], a76["intercept"]) < 1.5:
            text.append(f"(3) The A76 executes {a76['slope'] / a72['slope']:.2f}x the A72's instructions per MAC "
                        f"(b {a76['slope']:.3g} vs {a72['slope']:.3g}) while a is about as large "
                        f"({a76['intercept'] / 1e6:.3g} M vs {a72['intercept'] / 1e6:.3g} M): the same fixed part weighs "
                        "more there, so its ratios stay further from MACs.")
    # (4) what edgekit's MAC count counts
    extra = base["graph"]["macs_all"] / base["macs"] - 1
    if abs(extra) > 0.02:
        moved = max(apart(r["macs_all_ratio"], r["macs_ratio"]) for r in res["rows"][1:])
        matmuls = base["graph"]["kinds"].get("matmul", 0) + base["graph"]["kinds"].get("bmm", 0)
        text.append("(4) How MACs are counted: edgekit's count (torch-pruning's, edgekit/stages/macs.py) adds norm, "
                    "activation and pooling elements and leaves out matmuls outside modules"
                    + (f" (here {matmuls} torch.matmul)" if matmuls else "")
                    + f"; counting only the multiply-accumulates of every conv/linear/matmul (FlopCounterMode) gives "
                    f"{base['graph']['macs_all'] / 1e6:.3g} M for {base['macs'] / 1e6:.3g} M unpruned, and x"
                    f"{last['macs_all_ratio']:.2f} for x{last['macs_ratio']:.2f} at kept {last['fraction']:g}"
                    + (": not the reason." if moved < 1.1 else f", up to {moved:.2f}x apart at some budget."))
    text.append("Not established: how a splits between per-node costs of the MAC nodes themselves (set-up, channel "
                "tiles) and the other nodes' work; this bench has no per-node profile.")
    return [" ".join(text), ""]


def render(results: dict) -> str:
    s = results["settings"]
    facts = results["facts"]
    lines = ["# Does pruning's MAC saving become time saved?", "",
             f"Reproduce: `{results['command']}` — {facts['date']}, {facts['cpu']} ({facts['cores']} cores, load "
             f"{facts['load_average_at_start']} at start), torch {facts['torch']}, executorch {facts['executorch']}; "
             f"wall time {results['wall_seconds'] / 60:.1f} min.", "",
             f"int8 ExecuTorch/XNNPACK `.pte` per kept-MAC budget (`--prune-macs F`, 1 = unpruned; no distillation, "
             f"nearest weight rounding: neither changes the graph). Ratios are to the model's unpruned artifact. "
             f"MACs: edgekit's count (manifest steps). Host: {s['threads']} thread(s), median of {s['rounds']} "
             f"interleaved rounds x {s['runs']} runs, this machine (shared: compare ratios, not ms). "
             + ("Instructions: one inference, one thread, on emulated Cortex-A72 / A76 (qemu-aarch64 + "
                "instruction-count plugin, as bench/emulated_cost.py); deterministic, not latency. "
                if s["emulated"] else f"Guest-instruction columns skipped: {s['emulator_note']}. ")
             + "The floor row is a `.pte` computing only `x + 1` on the same input: the cost of a call "
               "with (nearly) no work; its ratio is to the unpruned model's.", ""]
    lines += table(results)
    lines += ["", "What the artifacts run besides MACs. XNNPACK nodes: read from the `.pte`'s delegate graph; "
              "MAC = fully-connected, conv, depthwise conv, batch matmul; convert = float ↔ int8; move = "
              "transposes, reshapes, copies; the elements the other nodes (all but MAC) write, from the tensor "
              "shapes in that graph, smallest budget over unpruned. conv/linear/matmul MACs only: torch's "
              "FlopCounterMode on the float graph (edgekit's count, torch-pruning's, also adds norm, activation and "
              "pooling elements and leaves out matmuls outside modules). Fits: cost = a + b·MACs by least squares over "
              "the budgets; a, the part that does not fall with MACs, with its share of the unpruned cost.", ""]
    lines += evidence_table(results)
    found = disagreements(results)
    lines += ["", f"## Where the ratios disagree by more than {DISAGREE}x", ""]
    if not found:
        lines += [f"Nowhere: every host-latency and instruction ratio is within {DISAGREE}x of the MACs ratio.", ""]
    for name, res in results["models"].items():
        mine = [d for d in found if d["model"] == name]
        if mine:
            lines += why(name, res, mine, s["emulated"])
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25],
                        help="kept-MAC fractions (--prune-macs); must include 1, the unpruned baseline")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50, help="inferences per round per artifact")
    parser.add_argument("--no-emulate", action="store_true", help="skip the guest-instruction counts")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown; the raw numbers go beside it as .json")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite --out from a saved .json")
    args = parser.parse_args()
    if args.render:
        args.out.write_text(render(json.loads(args.render.read_text())) + "\n")
        return 0
    if 1.0 not in args.fractions:
        parser.error("--fractions must include 1 (the unpruned baseline the ratios are taken to)")
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions are kept-MAC fractions: each in (0, 1]")

    from machine import facts

    start = time.perf_counter()
    results = {"facts": facts(), "command": shlex.join([".venv/bin/python", "bench/prune_latency.py", *sys.argv[1:]])}
    paths = emulator_paths(args.no_emulate)
    results["settings"] = {"fractions": sorted(args.fractions, reverse=True), "threads": args.threads,
                           "rounds": args.rounds, "runs": args.runs, "emulated": paths is not None,
                           "emulator_note": None if paths else "--no-emulate" if args.no_emulate else "the emulator is not built",
                           "cores": list(CORES), "target": "rpi4", "weight_rounding": "nearest"}
    results["models"] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-latency-") as tmp:
        for name in args.models:
            results["models"][name] = measure_model(name, args, paths, Path(tmp))
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["disagreements"] = disagreements(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = render(results)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
