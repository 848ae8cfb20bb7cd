"""`edgekit build --task text-generation`: a causal LM to 4-bit (or 8-bit) weights with its KV cache, judged and timed.

Two formats, one flow:
- executorch (default): 8da4w through torchao, exported by transformers' ExecuTorch
  exporter with a static KV cache of --max-seq-len tokens, lowered to XNNPACK
  (formats/executorch.py); the build dir holds model.pte.
- onnx: int4 MatMulNBits (RTN, or HQQ with --weight-method hqq) written by
  onnxruntime-genai's model builder, the KV cache as graph inputs/outputs
  (formats/onnx.py); the build dir holds model.onnx, model.onnx.data and
  genai_config.json.

Steps: load the model directory; the float model's figures on the held-out text
(perplexity, greedy continuations); 4-bit weights (QAT distilled from the float
model when training text is given, else post-training); export; the artifact
judged in its runtime (llm/quality.py) and timed against the float model on this
computer (llm/generate.py); decode tokens/s predicted from memory bandwidth
(validate/cost.py decode_limit) for this computer and the target. The build dir
also holds the tokenizer's files and manifest.json.

A build whose artifact misses the gate is still written, marked ✗, and exits 3.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.errors import BuildGateFailed, UsageError
from edgekit.llm import decoder, generate, quality
from edgekit.llm.decoder import DEFAULT_MAX_SEQ_LEN, TOKENIZER_FILES
from edgekit.model.app import DecoderSource

FORMATS = ("executorch", "onnx")
GROUP_SIZES = (16, 32, 64, 128, 256)
# How the 4-bit weights are rounded: to the nearest step of a grid set by each group's largest weight,
# or to scales (onnx: and zero points) half-quadratic optimization chooses (formats/*.py, HQQ).
WEIGHT_METHODS = ("rtn", "hqq")
SPEED_NEW_TOKENS = 64  # tokens generated per timing run (fewer when the context is shorter)


@dataclass(frozen=True)
class DecoderRecipe:
    format: str = "executorch"
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    group_size: int = 32
    embedding_bits: int = 8
    weight_bits: int = 4  # of the Linear layers; 8 for models that lose too much at 4
    weight_method: str = "rtn"  # WEIGHT_METHODS
    qat_steps: int | None = None  # None: decoder_qat.DEFAULT_STEPS when training text is given; 0: none
    max_perplexity_increase: float = quality.DEFAULT_MAX_PERPLEXITY_INCREASE
    min_agreement: float = quality.DEFAULT_MIN_AGREEMENT

    def check(self) -> "DecoderRecipe":
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format}: text-generation builds take {' or '.join(FORMATS)}",
                             hint="one format per build; build again with the other --format for both")
        if not 16 <= self.max_seq_len <= 32768:
            raise UsageError(f"--max-seq-len {self.max_seq_len}: give 16 to 32768 tokens",
                             hint="the KV cache holds this many tokens of prompt and reply; 256 is the default")
        if self.group_size not in GROUP_SIZES:
            raise UsageError(f"--group-size {self.group_size}: use one of {', '.join(map(str, GROUP_SIZES))}",
                             hint="smaller groups keep more precision and cost one scale per group")
        if self.embedding_bits not in (4, 8):
            raise UsageError(f"--embedding-bits {self.embedding_bits}: use 4 or 8")
        if self.weight_bits not in (4, 8):
            raise UsageError(f"--weight-bits {self.weight_bits}: use 4 or 8")
        if self.weight_method not in WEIGHT_METHODS:
            raise UsageError(f"--weight-method {self.weight_method}: use {' or '.join(WEIGHT_METHODS)}")
        if self.weight_method == "hqq" and self.weight_bits != 4:
            raise UsageError("--weight-method hqq is for 4-bit weights",
                             hint="int8 weights lose next to nothing rounded to nearest: drop --weight-method")
        if self.qat_steps is not None and self.qat_steps < 0:
            raise UsageError(f"--qat-steps {self.qat_steps}: give 0 (no QAT) or more")
        return self


def build(src: DecoderSource, target: str, recipe: DecoderRecipe, out: Path | None, steps) -> dict:
    """Build `src` for `target` into `out` (default build/<name>-<target>); returns the manifest."""
    from edgekit.build.builddir import staged_build_dir
    from edgekit.manifest import TEXT_GENERATION, versions, write_json_atomic
    from edgekit.target import list_targets, load_target
    from edgekit.train import decoder_qat
    from edgekit.validate.cost import decode_limit

    recipe = recipe.check()
    fmt = decoder_format(recipe.format)
    tgt, host = load_target(target), load_target("host")
    out_dir = Path(out) if out else Path("build") / f"{src.name}-{tgt.name}"
    if src.eval_text is None:
        raise UsageError("a text-generation build needs held-out text to judge the artifact on",
                         hint="pass --eval-text FILE (plain UTF-8 text the model was not trained on), "
                              "or set data.eval in the app's edgekit.toml")

    qat_steps = recipe.qat_steps
    if qat_steps is None:
        qat_steps = decoder_qat.DEFAULT_STEPS if src.train_text is not None else 0
    if qat_steps and src.train_text is None:
        raise UsageError(f"--qat-steps {qat_steps} needs training text", hint="pass --train-text FILE")
    if qat_steps and recipe.weight_method != "rtn":
        raise UsageError(f"--weight-method {recipe.weight_method} with QAT: QAT trains the weights for the "
                         "round-to-nearest grid that ships", hint="--qat-steps 0 to round with "
                         f"{recipe.weight_method.upper()} without training, or drop --weight-method")

    with steps.step("load", label="load model") as record:
        model, tokenizer = decoder.load(src.model_dir)
        loaded = {"architecture": model.config.model_type,
                  "parameters": sum(p.numel() for p in model.parameters())}  # tied weights once, as loaded
        decoder.exportable(model, recipe.max_seq_len)
        _check_group_size(model, recipe.group_size)
        record["config"] = loaded
    text = quality.HeldOutText.from_tokens(tokenizer.encode(_read_text(src.eval_text, "eval")),
                                           recipe.max_seq_len, str(src.eval_text))
    reference = decoder.CachedStep(model, recipe.max_seq_len)
    with steps.step("reference", label="float model on the held-out text") as record:
        float_figures = (quality.perplexity(reference, text.windows)[0],
                         quality.greedy_continuations(reference, text.prompts))
        record["config"] = {"perplexity": round(float_figures[0], 4), "prompts": len(text.prompts)}

    bits = (recipe.group_size, recipe.embedding_bits, recipe.weight_bits)
    scheme = fmt.decoder_scheme(recipe.weight_bits, recipe.weight_method)
    layers = fmt.decoder_layers(model, *bits)
    precision = _weight_shares(model, layers)
    if qat_steps:
        with steps.step("qat", label=f"QAT int{recipe.weight_bits}, {qat_steps} steps") as record:
            result = decoder_qat.train(
                model, tokenizer.encode(_read_text(src.train_text, "train")),
                lambda m: fmt.prepare_decoder_qat(m, *bits), lambda m: fmt.convert_decoder_qat(m, *bits),
                decoder_qat.DecoderQatConfig(steps=qat_steps), track=steps.track)
            quantized = result.pop("model")
            record["config"] = result
    elif recipe.format == "executorch":
        import copy

        with steps.step("quantize", label=f"quantize {scheme} (post-training)"):
            quantized = copy.deepcopy(model)
            fmt.quantize_decoder(quantized, *bits, weight_method=recipe.weight_method)
    else:
        quantized = model  # the export rounds the float weights as it writes the graph

    metadata = _runner_metadata(model, tokenizer, recipe.max_seq_len)
    with staged_build_dir(out_dir, warn=steps.warn) as staging:
        artifact = staging / fmt.DECODER_FILES[0]
        if recipe.format == "executorch":
            with steps.step("export", label="export model.pte (XNNPACK, KV cache)") as record:
                export_facts = fmt.export_decoder(quantized, artifact, recipe.max_seq_len, metadata)
                record["config"] = {"max_seq_len": recipe.max_seq_len}
        else:
            with steps.step("export", label=f"export model.onnx ({scheme}, KV cache)") as record:
                export_facts = fmt.export_decoder(quantized, tokenizer, staging, recipe.max_seq_len, *bits,
                                                  weight_method=recipe.weight_method)
                record["config"] = {"max_seq_len": recipe.max_seq_len}
        if decoder.is_gguf(src.model_dir):
            tokenizer.save_pretrained(staging)  # the GGUF's own vocabulary, as transformers converted it
        for name in TOKENIZER_FILES:
            if src.model_dir.is_dir() and (src.model_dir / name).is_file():
                shutil.copyfile(src.model_dir / name, staging / name)
        runner = generate.DecoderRunner(fmt.DECODER_RUNTIME, artifact)
        with steps.step("judge", label=f"judge {artifact.name} in {runner.runtime}"):
            verdict = quality.judge(runner, reference, text, recipe.max_perplexity_increase, recipe.min_agreement,
                                    float_figures)
        with steps.step("speed", label="time generation on this computer"):
            prompt = text.prompts[0]
            new_tokens = min(SPEED_NEW_TOKENS, recipe.max_seq_len - len(prompt))
            speed_tokens, speed = generate.decode_speed(runner, prompt, recipe.max_seq_len, new_tokens)
            _, float_speed = generate.decode_speed(reference, prompt, recipe.max_seq_len, new_tokens)
        _warn_if_slower(speed, float_speed, artifact.name, recipe, steps.warn)
        per_token = _bytes_per_token(model, layers, recipe)
        manifest = {
            "name": src.name, "task": TEXT_GENERATION, "target": tgt.name, "format": recipe.format, "runtime": runner.runtime,
            "artifact": _file_entry(artifact),
            # Files the artifact reads beside it (the .onnx's weights and its runtime config), checked the same way.
            "artifact_files": [_file_entry(staging / f) for f in fmt.DECODER_FILES[1:]],
            "tokenizer": [n for n in TOKENIZER_FILES if (staging / n).is_file()],
            "eos_id": tokenizer.eos_token_id,  # generation stops there (edgekit generate, serve, the runners)
            "model": {**src.to_json(), **loaded, "inputs": _DECODER_INPUTS[recipe.format]},
            "target_profile": tgt.to_json(),
            "recipe": asdict(recipe) | {"qat_steps": qat_steps},
            "quantization": {"scheme": scheme, "rounding": recipe.weight_method, "group_size": recipe.group_size,
                             "method": "qat" if qat_steps else "post-training", "weights": precision},
            "export": {"max_seq_len": recipe.max_seq_len, **export_facts,
                       **({"metadata": metadata} if recipe.format == "executorch" else {})},
            "quality": verdict.to_json() | {"max_perplexity_increase_pct": recipe.max_perplexity_increase,
                                            "min_agreement_pct": recipe.min_agreement},
            # The timing prompt and what the artifact made of it here: `edgekit deploy --bench` times a
            # device on the same prompt and compares its tokens with these.
            "speed": {"prompt_ids": [int(t) for t in prompt], "new_tokens": new_tokens, "tokens": speed_tokens,
                      "host": {"artifact": speed.to_json(), "float_eager": float_speed.to_json(),
                               "decode_limit": decode_limit(per_token, host)},
                      "target": {"decode_limit": decode_limit(per_token, tgt)},
                      # the cost model's decode limit on every profile, for the report (rpi5's among them)
                      "decode_limits": {t.name: decode_limit(per_token, t) for t in list_targets()}},
            "bytes_per_token": per_token,
            "steps": steps.records, "warnings": steps.warnings, "versions": versions(),
        }
        write_json_atomic(staging / "manifest.json", manifest)
    manifest["build_dir"] = str(out_dir)
    if not verdict.passed:
        raise BuildGateFailed(f"{artifact.name} misses the quality gate: {verdict.why}",
                              hint=_gate_hint(recipe), manifest=manifest)
    return manifest


# What the artifact is called with. executorch: n token ids and their n positions (n from 1 to
# max_seq_len - 1), the cache inside the program. onnx: the cache goes in and out with every call.
_DECODER_INPUTS = {
    "executorch": [{"name": "input_ids", "shape": [1, "n"], "dtype": "int64"},
                   {"name": "cache_position", "shape": ["n"], "dtype": "int64"}],
    "onnx": [{"name": "input_ids", "shape": [1, "n"], "dtype": "int64"},
             {"name": "attention_mask", "shape": [1, "past + n"], "dtype": "int64"},
             {"name": "past_key_values.{layer}.key|value", "shape": [1, "kv_heads", "past", "head_size"],
              "dtype": "float32"}],
}


def decoder_format(name: str):
    """The format module that quantizes, exports and runs decoders in `name`."""
    if name == "onnx":
        from edgekit.formats import onnx as fmt
    else:
        from edgekit.formats import executorch as fmt
    return fmt


def _file_entry(path: Path) -> dict:
    from edgekit.manifest import sha256_file

    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _warn_if_slower(speed, float_speed, artifact: str, recipe: DecoderRecipe, warn) -> None:
    """An artifact that decodes slower than the float model it came from is worth saying so: the point of
    4-bit weights is fewer bytes per token. onnxruntime's MatMulNBits has no fast kernel for HQQ's float zero
    points (SmolLM2 here: 10 tok/s against RTN's 116 and float's 24, bench/llm_decode.md)."""
    rate, reference = speed.decode_tokens_per_s, float_speed.decode_tokens_per_s
    if not rate or not reference or rate >= reference:
        return
    why = (" (onnxruntime runs HQQ's float zero points on its slow MatMulNBits path; --weight-bits 8 keeps most "
           "models' text at full speed)" if recipe.format == "onnx" and recipe.weight_method == "hqq" else "")
    warn(f"{artifact} decodes at {rate:,.1f} tok/s here, slower than the float model's {reference:,.1f}{why}")


def _gate_hint(recipe: DecoderRecipe) -> str:
    if recipe.weight_bits == 8:
        return "give training text for QAT (--train-text, or more --qat-steps)"
    hqq = "--weight-method hqq (no training), " if recipe.weight_method == "rtn" else ""
    return (f"give training text for QAT (--train-text, or more --qat-steps), {hqq}a smaller --group-size, or "
            "--weight-bits 8 (twice the bytes per token; small models often need it)")


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the {what} text: {e}",
                         hint="give a UTF-8 plain-text file") from None


def _check_group_size(model, group_size: int) -> None:
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.in_features % group_size:
            raise UsageError(f"--group-size {group_size} does not divide {name}'s {module.in_features} inputs",
                             hint="choose a group size that divides every layer's input width, e.g. 32")


def _runner_metadata(model, tokenizer, max_seq_len: int) -> dict:
    """Constant methods in the .pte, named as ExecuTorch's LLM runner reads them
    (executorch/extension/llm/runner/constants.h)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    return {"get_max_seq_len": max_seq_len, "get_max_context_len": max_seq_len,
            "get_vocab_size": int(model.config.vocab_size), "use_kv_cache": True, "enable_dynamic_shape": True,
            "get_bos_id": int(bos if bos is not None else -1), "get_eos_ids": [int(eos)] if eos is not None else []}


def _selected(model, layers):
    """(what, bits, weights per scale, module) for every module a format's decoder_layers selects, each weight once."""
    seen = set()
    for selected, what, bits, group in layers:
        for fqn, module in model.named_modules():
            if selected(module, fqn) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                yield what, bits, group, module


def _weight_shares(model, layers) -> dict:
    """{what: share of the weights (%)} for each kind of layer, and those left float (norms, biases)."""
    total = sum(p.numel() for p in model.parameters())
    shares = {what: 0 for _, what, _, _ in layers}
    for what, _, _, module in _selected(model, layers):
        shares[what] += module.weight.numel()
    shares = {what: round(100.0 * n / total, 2) for what, n in shares.items()}
    shares["float (norms, biases)"] = round(100.0 - sum(shares.values()), 2)
    return shares


def _bytes_per_token(model, layers, recipe: DecoderRecipe) -> dict:
    """Bytes one decode step must read from memory: every weight once (the embedding table one row), at
    its bits plus an fp32 scale per group (per row where the format keeps one per row; none for float; and
    an fp32 zero point for onnxruntime's HQQ);
    and the KV cache at the full --max-seq-len (fp32): the static cache's attention (executorch) reads it
    whole at every step, and the growing one (onnx) reaches that size at the end of the context."""
    import torch

    weights = 0
    for _, bits, group, module in _selected(model, layers):
        rows, cols = module.weight.shape
        scales_per_row = 0 if bits > 8 else cols // group if group else 1
        if isinstance(module, torch.nn.Embedding):
            rows = 1
        # onnxruntime's HQQ keeps a float zero point beside each 4-bit block's scale (formats/onnx.py)
        per_scale = 8 if recipe.format == "onnx" and recipe.weight_method == "hqq" and bits == 4 else 4
        weights += rows * cols * bits // 8 + per_scale * rows * scales_per_row
    config = model.config  # GPT-2's n_layer/n_head/n_embd answer to these names too (attribute_map)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * recipe.max_seq_len * 4
    return {"weights": weights, "kv_cache": kv_cache}
