"""Is a decoder artifact as good as its float model? Judged without labels, on held-out text.

Two figures, both against the float model with the same static KV cache
(decoder.CachedStep), so only the artifact's own changes (4-bit weights, int8
activations, the runtime) are measured:

- **perplexity** on held-out text: exp of the mean negative log-likelihood of
  each next token, over windows of `window` tokens, each prefilled from
  position 0. The gate: at most `max_perplexity_increase` (default 10 %) above float.
- **greedy-token agreement** over N prompts: the float model continues each
  prompt greedily; the artifact is fed the prompt and that continuation, and
  agreement is the share of positions where its most likely next token is the
  float model's. Fed the float continuation (teacher forcing), one early
  disagreement does not make every later position disagree, so the figure
  counts the artifact's own choices. The gate: at least 90 %.

Prompts and windows are cut from the held-out text at evenly spaced offsets,
so every run of a build judges the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import UsageError

DEFAULT_MAX_PERPLEXITY_INCREASE = 10.0  # %, the artifact's perplexity over the float model's
DEFAULT_MIN_AGREEMENT = 90.0  # %, greedy next-token agreement with the float model
PROMPTS = 20
PROMPT_TOKENS = 32
NEW_TOKENS = 32
WINDOW = 128  # tokens per perplexity window
WINDOWS = 16  # at most this many windows (2,048 tokens at 128)


@dataclass(frozen=True)
class HeldOutText:
    """Token windows for perplexity and prompts for agreement, cut from one held-out text."""

    windows: list[list[int]]
    prompts: list[list[int]]

    @classmethod
    def from_tokens(cls, ids: list[int], max_seq_len: int, where: str) -> "HeldOutText":
        window = min(WINDOW, max_seq_len - 1)
        prompt = min(PROMPT_TOKENS, (max_seq_len - 1) // 2)
        if len(ids) < 2 * window:
            raise UsageError(f"{where}: {len(ids)} tokens of held-out text; perplexity needs at least {2 * window}",
                             hint="give more held-out text (a few thousand words)")
        count = min(WINDOWS, len(ids) // window)
        windows = [ids[i * window:(i + 1) * window] for i in range(count)]
        step = (len(ids) - prompt) // PROMPTS
        prompts = [ids[i * step:i * step + prompt] for i in range(PROMPTS)]
        return cls(windows=windows, prompts=prompts)


@dataclass
class DecoderQuality:
    perplexity: float
    float_perplexity: float
    perplexity_increase_pct: float
    agreement_pct: float
    prompts: int
    tokens_scored: int  # perplexity tokens
    passed: bool
    why: str  # what failed, or "" when passed

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def perplexity(runner, windows: list[list[int]]) -> tuple[float, int]:
    """(perplexity, tokens scored) of `runner` over the windows."""
    nll, count = 0.0, 0
    for window in windows:
        logits = runner.step(np.asarray(window, dtype=np.int64), 0).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        targets = np.asarray(window[1:])
        nll -= float(log_probs[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / count), count


def greedy_continuations(reference, prompts: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """The reference model's greedy continuation of each prompt."""
    out = []
    for prompt in prompts:
        tokens = list(prompt)
        logits = reference.step(np.asarray(tokens, dtype=np.int64), 0)
        for _ in range(new_tokens):
            tokens.append(int(np.argmax(logits[-1])))
            logits = reference.step(np.asarray(tokens[-1:], dtype=np.int64), len(tokens) - 1)
        out.append(tokens[len(prompt):])
    return out


def agreement(candidate, prompts: list[list[int]], continuations: list[list[int]]) -> float:
    """% of positions where the candidate's next token is the reference's, fed the reference's tokens."""
    match, total = 0, 0
    for prompt, continuation in zip(prompts, continuations):
        fed = prompt + continuation[:-1]
        logits = candidate.step(np.asarray(fed, dtype=np.int64), 0)
        chosen = np.argmax(logits[len(prompt) - 1:], axis=-1)
        match += int((chosen == np.asarray(continuation)).sum())
        total += len(continuation)
    return 100.0 * match / total


def judge(candidate, reference, text: HeldOutText, max_perplexity_increase: float, min_agreement: float,
          reference_figures: tuple[float, list[list[int]]] | None = None) -> DecoderQuality:
    """The candidate's figures against the reference's; `reference_figures` (perplexity, continuations)
    saves recomputing the float model's when several artifacts are judged."""
    if reference_figures is None:
        reference_figures = (perplexity(reference, text.windows)[0], greedy_continuations(reference, text.prompts))
    float_ppl, continuations = reference_figures
    ppl, scored = perplexity(candidate, text.windows)
    increase = 100.0 * (ppl / float_ppl - 1.0)
    agree = agreement(candidate, text.prompts, continuations)
    why = []
    if increase > max_perplexity_increase:
        why.append(f"perplexity {increase:+.1f} % over float (at most {max_perplexity_increase:g} %)")
    if agree < min_agreement:
        why.append(f"greedy agreement {agree:.1f} % (at least {min_agreement:g} %)")
    return DecoderQuality(perplexity=ppl, float_perplexity=float_ppl, perplexity_increase_pct=increase,
                          agreement_pct=agree, prompts=len(text.prompts), tokens_scored=scored,
                          passed=not why, why="; ".join(why))
