"""Generation with a decoder build, and the figures users ask of it.

A runner has `step(ids, start) -> logits (len(ids), vocab)`: it feeds tokens at
positions start.. into its KV cache. Generation is one prefill call for the
prompt, then one call per new token (greedy: the most likely token each time);
the loop is the device runner's (runtime/runner.py generate_greedy).

Figures (wall clock, this process):
- time to first token: the prefill call plus picking its token, ms;
- prefill tokens/s: prompt tokens over the prefill call's time;
- decode tokens/s: tokens after the first over the time of the calls that made them;
- peak RSS: the process's high-water resident memory (ru_maxrss), MB. On the host
  that includes torch and everything imported; on a board it is the runner's own.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass

from edgekit.errors import UsageError


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    time_to_first_token_ms: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None  # None when only one token was generated
    peak_rss_mb: float
    stopped: str  # "eos", "max_new_tokens" or "context_full"

    def to_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class DecoderRunner:
    """A decoder artifact in its runtime on this computer, stepped as a board steps it (runtime/runner.py
    decoder_for: ExecutorchDecoder for a .pte, OnnxDecoder for an .onnx)."""

    def __init__(self, runtime: str, path, threads: int | None = None):
        from edgekit.quiet import native_stderr_captured, quiet_python_logs
        from edgekit.runtime.runner import decoder_for

        quiet_python_logs()
        with native_stderr_captured():
            self._decoder = decoder_for(runtime)
            if threads:
                self._decoder.set_threads(threads)
            self._decoder.load(str(path))
        self.runtime, self.max_seq_len = runtime, self._decoder.max_seq_len

    def step(self, ids, start: int):
        return self._decoder.step(ids, start)


def check_prompt(prompt_tokens: int, max_seq_len: int, where: str = "the prompt") -> None:
    """A prompt must leave room for at least one generated token in the KV cache."""
    if prompt_tokens < 1:
        raise UsageError(f"{where} is empty", hint="give at least one token of text")
    if prompt_tokens >= max_seq_len:
        raise UsageError(f"{where} is {prompt_tokens} tokens; the artifact's context holds {max_seq_len}",
                         hint=f"shorten it below {max_seq_len} tokens, or rebuild with a larger --max-seq-len")


def generate(runner, prompt_ids, max_new_tokens: int, max_seq_len: int, eos_id: int | None = None,
             on_token=None) -> tuple[list[int], GenerationStats]:
    """Greedy generation; `on_token(id)` is called as each token is made (streaming). The loop is the
    device runner's (runtime/runner.py generate_greedy), so a board generates as the host does."""
    from edgekit.runtime.runner import generate_greedy

    prompt = [int(t) for t in prompt_ids]
    check_prompt(len(prompt), max_seq_len)
    out, timing = generate_greedy(runner.step, prompt, max_new_tokens, max_seq_len, eos_id, on_token)
    decoded = len(out) - 1
    stats = GenerationStats(
        prompt_tokens=len(prompt), new_tokens=len(out),
        time_to_first_token_ms=timing["prefill_s"] * 1e3, prefill_tokens_per_s=len(prompt) / timing["prefill_s"],
        decode_tokens_per_s=decoded / timing["decode_s"] if decoded and timing["decode_s"] > 0 else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, stopped=timing["stopped"])
    return out, stats


def decode_speed(runner, prompt_ids, max_seq_len: int, new_tokens: int,
                 runs: int = 3) -> tuple[list[int], GenerationStats]:
    """(the tokens, the median run by decode tokens/s) of `runs` generations of exactly `new_tokens` tokens
    (no eos stop). Every run makes the same tokens: greedy generation is deterministic in one runtime."""
    results = [generate(runner, prompt_ids, new_tokens, max_seq_len) for _ in range(runs)]
    tokens = results[0][0]
    stats = sorted((s for _, s in results), key=lambda s: s.decode_tokens_per_s or 0.0)
    return tokens, stats[len(stats) // 2]


def verified_build(build_dir):
    """(manifest, artifact path) of a text-generation build: every file it ships checked against its sha256,
    and the tokenizer present. Nothing is loaded."""
    from pathlib import Path

    from edgekit.manifest import TEXT_GENERATION, check_shipped_files, read_manifest

    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if manifest.get("task") != TEXT_GENERATION:
        raise UsageError(f"'{build_dir}' is not a text-generation build",
                         hint="build a decoder with `edgekit build --task text-generation --model MODEL_DIR`")
    check_shipped_files(build_dir, manifest)
    tokenizer_file = build_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UsageError(f"{tokenizer_file} is missing", hint="copy the whole build directory again, or rebuild")
    return manifest, build_dir / manifest["artifact"]["file"]


def open_build(build_dir):
    """(runner, tokenizer, manifest) of a text-generation build, its files checked (verified_build)."""
    from edgekit.llm.build import decoder_format

    manifest, artifact = verified_build(build_dir)
    build_dir = artifact.parent
    from edgekit.llm.decoder import require_transformers
    from edgekit.quiet import quiet_model_libraries

    quiet_model_libraries()  # before transformers is imported: it reads its verbosity then
    require_transformers()
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(build_dir)
    runtime = decoder_format(manifest.get("format", "executorch")).DECODER_RUNTIME
    return DecoderRunner(runtime, artifact), tokenizer, manifest


class TextStream:
    """Decoded text as tokens arrive: byte-level tokens can split a character, so the text so far is
    decoded again and only what is new (and complete) is handed on."""

    def __init__(self, tokenizer, write):
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return
        self.write(text[self.shown:])
        self.shown = len(text)


def generate_emulated(build_dir, prompt_ids, max_new_tokens: int, eos_id: int | None) -> dict:
    """Greedy generation with the build's artifact on an emulated core of its target (qemu; a `.pte` in the
    native ExecuTorch runner, an `.onnx` in the guest's onnxruntime):
    {"tokens", "stopped", "guest_instructions_per_token", "cpu"}. Wall time under
    emulation says nothing about a board, so none is returned; instructions per decoded token are
    deterministic and compare cores and builds."""
    from pathlib import Path

    from edgekit.emulator.check import emulated_core
    from edgekit.llm.build import decoder_format
    from edgekit.manifest import read_manifest
    from edgekit.target import load_target

    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    max_seq_len = manifest["export"]["max_seq_len"]
    check_prompt(len(prompt_ids), max_seq_len)
    target = load_target(manifest["target"])
    fmt = decoder_format(manifest.get("format", "executorch"))
    with emulated_core(target) as core:
        doc, count = fmt.emulate_generation(core, build_dir / manifest["artifact"]["file"], prompt_ids,
                                            max_new_tokens, max_seq_len, eos_id)
    decoded = doc["decoded_tokens"]
    return {"tokens": doc["tokens"], "stopped": doc["stopped"], "cpu": target.qemu_cpu, "target": target.name,
            "guest_instructions_per_token": round(count / decoded) if count and decoded else None}
