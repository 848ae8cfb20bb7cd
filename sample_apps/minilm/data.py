"""Real sentences, tokenised with the model's own tokenizer: the calibration and evaluation sets.

The sentences are English prose that ships with every Python: the language
reference topics behind `help()` (`pydoc_data.topics`). They are split into
sentences, filtered to plain ones (40-160 characters, no markup or code),
shuffled with a fixed seed and split into two disjoint sets:

    calib.npz  64 sentences   input_ids, attention_mask (N, 32) int64
    eval.npz   128 sentences  the same keys, no labels: the artifact is judged
               against the float model's embeddings

    python sample_apps/minilm/data.py [--out DIR]      # writes calib.npz and eval.npz
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

CALIB, EVAL = 64, 128
SEED = 0


def sentences() -> list[str]:
    import pydoc_data.topics

    text = re.sub(r"\s+", " ", " ".join(pydoc_data.topics.topics.values()))
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    plain = sorted({s for s in found if 40 < len(s) < 160 and s[0].isupper()
                    and not any(c in s for c in "{}[]()=*`'\"<>|#:")})
    np.random.default_rng(SEED).shuffle(plain)
    return plain


def tokenise(texts: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    from model import MAX_TOKENS, model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def write(out: Path) -> tuple[Path, Path]:
    texts = sentences()
    assert len(texts) >= CALIB + EVAL, f"only {len(texts)} sentences found"
    out.mkdir(parents=True, exist_ok=True)
    calib, evaluation = out / "calib.npz", out / "eval.npz"
    np.savez(calib, **tokenise(texts[:CALIB]))
    np.savez(evaluation, **tokenise(texts[CALIB:CALIB + EVAL]))
    return calib, evaluation


if __name__ == "__main__":  # run as a script, its directory (with model.py) is on sys.path
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for path in write(parser.parse_args().out):
        print(path)
