"""bench/results.json and bench/RESULTS.md from one comparison run.

Ratios are computed here, from the rounded latencies written beside them, so
a reader can check every ratio against the two numbers it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

PATH_KEYS = ("eager_fp32", "compile_fp32", "ort_fp32", "ort_int8_default", "pt2e_xnnpack_hand",
             "edgekit_executorch", "edgekit_torchscript-lite", "edgekit_onnx")
RANDOM_WEIGHTS = "n/a (random weights)"


def add_ratios(rows: list[dict]) -> None:
    """ratio_to_eager = median / eager median of the same model and thread count."""
    eager = {(r["model"], r["threads"]): r["median_ms"] for r in rows if r["path"] == "eager_fp32"}
    for r in rows:
        base = eager.get((r["model"], r["threads"]))
        r["ratio_to_eager"] = round(r["median_ms"] / base, 3) if r["median_ms"] and base else None


def headlines(rows: list[dict]) -> list[dict]:
    """edgekit's .pte against eager fp32 and against each hand-written int8 path, per model and threads."""
    index = {(r["model"], r["threads"], r["path"]): r for r in rows}
    out = []
    for (model, threads, path), r in index.items():
        if path != "edgekit_executorch" or not r["median_ms"]:
            continue
        entry = {"model": model, "threads": threads, "edgekit_pte_ms": r["median_ms"]}
        for other in ("eager_fp32", "pt2e_xnnpack_hand", "ort_int8_default", "ort_fp32"):
            o = index.get((model, threads, other))
            # "x faster": the other path's median over edgekit's (> 1: edgekit is faster).
            entry[f"speedup_vs_{other}"] = round(o["median_ms"] / r["median_ms"], 2) if o and o["median_ms"] else None
        out.append(entry)
    return out


def write(out_dir: Path, doc: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    add_ratios(doc["rows"])
    doc["headlines"] = headlines(doc["rows"])
    json_path, md_path = out_dir / "results.json", out_dir / "RESULTS.md"
    _atomic_write(json_path, json.dumps(doc, indent=2) + "\n")
    _atomic_write(md_path, markdown(doc))
    return md_path, json_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- Markdown


def markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    lines = [
        "# edgekit benchmarks: side by side with the paths users take today",
        "",
        f"Reproduce: `{s['command']}` ({doc['total_seconds'] / 60:.1f} min for this run). "
        "Host timings on the machine below, not on an ARM board: compare ratios within this file, "
        "not absolute milliseconds across machines.",
        "",
        "| machine | |",
        "|---|---|",
        f"| date (UTC) | {m['date']} |",
        f"| CPU | {m['cpu']} ({m['arch']}), {m['cores']} cores |",
        f"| load average at start | {', '.join(map(str, m['load_average_at_start'] or []))} |",
        f"| OS | {m['os']} |",
        "| versions | " + ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "executorch", "torchao", "onnx", "onnxruntime", "edgekit")) + " |",
        "",
        f"Each latency: median and p90 of {s['runs']} timed runs after {s['warmup']} warm-ups, batch 1, "
        f"the same input for every path of a model, at {' and '.join(map(str, s['threads']))} thread(s) "
        "(torch.set_num_threads, onnxruntime intra_op_num_threads, ExecuTorch's XNNPACK threadpool). "
        "× eager = median / PyTorch eager fp32 median, same model and threads (< 1 is faster). "
        f"Calibration: {s['calib_samples']} samples (the first of a sample app's calib.npz; random images for the "
        "224x224 nets), the same samples for every int8 path. Accuracy: top-1 on the app's eval.npz, "
        "computed in the timed session.",
        "",
    ]
    lines += _busy_machine_note(m, s)
    if s.get("quick"):
        lines += ["**--quick run: too few runs and calibration samples for numbers to mean anything, and the "
                  "build-cost child ran alongside the other builds.**", ""]
    lines += _headline_lines(doc["headlines"])
    for model in doc["models"]:
        lines += _model_section(model, [r for r in doc["rows"] if r["model"] == model["name"]])
    lines += _real_models_section(doc.get("real_models") or [])
    lines += _cost_section(doc["build_cost"])
    return "\n".join(lines) + "\n"


def _real_models_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Real models: pretrained weights, real inputs", "",
             "EfficientNet-Lite0 (ImageNet weights) on 32 held-out photo crops and all-MiniLM-L6-v2 on 128 "
             "held-out sentences (sample_apps/efficientnet_lite0, sample_apps/minilm), calibrated on the apps' "
             "own calibration sets. Every artifact is judged against the float model by the same code "
             "(edgekit/compare.py): top-1 agreement for class scores, mean cosine of the outputs (.onnx in the "
             "reference QDQ arithmetic an ARM board computes, as edgekit validates it). gate: "
             "edgekit's own verdict on its artifacts; kept: what `--quality auto` kept. int8 MACs: the share of the "
             "model's MACs on the format's int8 kernels, by edgekit's lint of each artifact (dynamic int8 counts: "
             "its matmuls run int8). Latency: median at 1 thread on this host.", "",
             "| model | path | gate | kept | top-1 agreement | cosine | int8 MACs | size | 1-thread ms | build s | error |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        agree = f"{r['top1_agreement']:.2f} %" if r["top1_agreement"] is not None else "—"
        cos = f"{r['cosine']:.4f}" if r["cosine"] is not None else "—"
        build = f"{r['build_s']:.1f}" if r["build_s"] is not None else "—"
        share = f"{100 * r['int8_macs_share']:.0f} %" if r.get("int8_macs_share") is not None else "—"
        lines.append(f"| {r['model']} | {r['label']} | {r['gate'] or ''} | {r.get('quality') or ''} | {agree} | {cos} | "
                     f"{share} | {_size(r['size_bytes'])} | {_ms(r['median_ms'])} | {build} | {_cell(r['error'] or '')} |")
    return lines + ["", "edgekit's build seconds cover every format of the model together.", ""]


def _busy_machine_note(m: dict, s: dict) -> list[str]:
    """Other work on the cores skews the all-cores rows far more than the 1-thread ones: say so when it was there."""
    load, cores = (m.get("load_average_at_start") or [0])[0], m.get("cores") or 1
    if load < cores / 2:
        return []
    most = max(s["threads"])
    return [f"**The machine was busy**: load average {load} on {cores} cores when the run started (other processes). "
            f"The {most}-thread rows competed with that load and are noisy; "
            "compare paths on the 1-thread rows.", ""]


def _headline_lines(heads: list[dict]) -> list[str]:
    if not heads:
        return []
    lines = ["## Headline: edgekit int8 .pte (ExecuTorch + XNNPACK)", "",
             "How many times faster edgekit's .pte runs than each other path (median over median; > 1: edgekit is faster).", "",
             "| model | threads | .pte ms | vs PyTorch eager fp32 | vs PT2E+XNNPACK by hand | vs ORT quantize_static defaults | vs ORT fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for h in heads:
        cells = [_x(h[f"speedup_vs_{k}"]) for k in ("eager_fp32", "pt2e_xnnpack_hand", "ort_int8_default", "ort_fp32")]
        lines.append(f"| {h['model']} | {h['threads']} | {h['edgekit_pte_ms']:.3f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _x(v) -> str:
    return f"{v:.2f}×" if v is not None else "—"


def _model_section(model: dict, rows: list[dict]) -> list[str]:
    acc_note = "top-1 % on eval.npz" if model["trained"] else RANDOM_WEIGHTS
    lines = [f"## {model['name']}", "",
             f"{model['params']:,} parameters, input {model['input_shape']}, float weights {_size(model['float_bytes'])}; "
             f"calibration: {model['calibration']}; accuracy: {acc_note}.", "",
             "| path | threads | median ms | p90 ms | × eager | size | accuracy | build seconds per stage | error / note |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: (r["threads"], PATH_KEYS.index(r["path"]) if r["path"] in PATH_KEYS else 99)):
        accuracy = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else ("n/a" if not model["trained"] else "—")
        stages = " · ".join(f"{k} {v:.1f}" for k, v in r["build_stages"].items()) or "—"
        notes = "; ".join(x for x in (f"**failed:** {r['error']}" if r["error"] else None, r.get("note")) if x)
        ratio = f"{r['ratio_to_eager']:.2f}" if r["ratio_to_eager"] is not None else "—"
        lines.append(f"| {r['label']} | {r['threads']} | {_ms(r['median_ms'])} | {_ms(r['p90_ms'])} | {ratio} | "
                     f"{_size(r['size_bytes'])} | {accuracy} | {stages} | {_cell(notes)} |")
    return lines + [""]


def _cost_section(costs: list[dict]) -> list[str]:
    lines = ["## Cost of the toolchain: `edgekit build --format executorch`", "",
             "The whole command as a child process (imports, quantization, export, validation), "
             "peak resident memory from wait4(2).", "",
             "| model | parameters | wall s | peak RSS MB | seconds per stage | command | error |",
             "|---|---:|---:|---:|---|---|---|"]
    for c in costs:
        stages = " · ".join(f"{k} {v:.1f}" for k, v in c["stages"].items()) or "—"
        lines.append(f"| {c['model']} | {c['params']:,} | {c['wall_s']:.1f} | {c['peak_rss_mb']:.0f} | {stages} | "
                     f"`{c['command']}` | {_cell(c['error'] or '')} |")
    return lines + [""]


def _ms(v) -> str:
    return f"{v:.3f}" if v is not None else "—"


def _size(n) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _cell(text: str) -> str:
    """Table cells can't hold pipes or newlines."""
    return text.replace("|", "\\|").replace("\n", " ")
