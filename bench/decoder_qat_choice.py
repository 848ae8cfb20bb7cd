"""How train/decoder_qat.py's settings are chosen: on a validation part of tinylm's training text, not
on the held-out text its quality gate judges.

    .venv/bin/python bench/decoder_qat_choice.py [--seeds 0 1]

The training topics of sample_apps/tinylm (train.py split_text: every tenth topic of
pydoc_data.topics is eval.txt, the gate's text) are split once more: every tenth training topic
is the validation text, the rest is the QAT text. Each candidate (steps, learning rate) trains the
8da4w model (group 32, 8-bit embedding and head: the build's default) from float on the QAT text
with every seed, and is judged on the validation text with the gate's own code
(llm/quality.py judge: perplexity over float, greedy agreement over 20 prompts) as an eager
torchao model. The candidate with the best mean agreement over the seeds (perplexity breaks ties)
is the choice; only then is the choice read on eval.txt, once, and that figure is the one the README
quotes. Writes bench/decoder_qat_choice.md and .json.

The float model was trained on all training topics, the validation ones included: it has seen the
validation text, the QAT student (started from it) is not trained on it here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import facts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINYLM = REPO / "sample_apps" / "tinylm"
OUT = Path(__file__).resolve().parent / "decoder_qat_choice.md"
MAX_SEQ_LEN = 256  # the build's default --max-seq-len
# (steps, learning rate): around 300 steps at 5e-4, the default before this choice.
CANDIDATES = [(150, 5e-4), (300, 2.5e-4), (300, 5e-4), (300, 1e-3), (600, 5e-4)]


def validation_split() -> tuple[str, str]:
    """(QAT text, validation text): tinylm's training topics, every tenth one set aside."""
    sys.path.insert(0, str(TINYLM))
    from train import split_text

    train_docs, _ = split_text()
    fit = [d for i, d in enumerate(train_docs) if i % 10 != 5]
    validation = [d for i, d in enumerate(train_docs) if i % 10 == 5]
    return "\n\n".join(fit), "\n\n".join(validation)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    import copy

    import torch

    from edgekit.formats import executorch as fmt
    from edgekit.llm import decoder, quality
    from edgekit.llm.build import DecoderRecipe
    from edgekit.train import decoder_qat

    torch.manual_seed(0)
    recipe = DecoderRecipe()
    bits = (recipe.group_size, recipe.embedding_bits, recipe.weight_bits)
    model, tokenizer = decoder.load(TINYLM / "model")
    decoder.exportable(model, MAX_SEQ_LEN)
    fit_text, validation_text = validation_split()
    fit_ids = tokenizer.encode(fit_text)
    texts = {"validation": quality.HeldOutText.from_tokens(tokenizer.encode(validation_text), MAX_SEQ_LEN, "validation"),
             "eval": quality.HeldOutText.from_tokens(tokenizer.encode((TINYLM / "eval.txt").read_text()), MAX_SEQ_LEN,
                                                     "eval.txt")}
    reference = decoder.CachedStep(model, MAX_SEQ_LEN)
    float_figures = {name: (quality.perplexity(reference, t.windows)[0], quality.greedy_continuations(reference, t.prompts))
                     for name, t in texts.items()}

    def judged(quantized, on: str) -> dict:
        q = quality.judge(decoder.CachedStep(quantized, MAX_SEQ_LEN), reference, texts[on], recipe.max_perplexity_increase,
                          recipe.min_agreement, float_figures[on])
        return {"perplexity_increase_pct": round(q.perplexity_increase_pct, 2), "agreement_pct": round(q.agreement_pct, 2)}

    def trained(steps: int, lr: float, seed: int):
        if steps == 0:
            quantized = copy.deepcopy(model)
            fmt.quantize_decoder(quantized, *bits)
            return quantized
        return decoder_qat.train(model, fit_ids, lambda m: fmt.prepare_decoder_qat(m, *bits),
                                 lambda m: fmt.convert_decoder_qat(m, *bits),
                                 decoder_qat.DecoderQatConfig(steps=steps, lr=lr, seed=seed))["model"]

    rows = [{"steps": 0, "lr": None, "seeds": {"-": judged(trained(0, 0, 0), "validation")}}]
    for steps, lr in CANDIDATES:
        row = {"steps": steps, "lr": lr, "seeds": {}}
        for seed in args.seeds:
            start = time.perf_counter()
            row["seeds"][str(seed)] = judged(trained(steps, lr, seed), "validation")
            print(f"{steps} steps, lr {lr:g}, seed {seed}: {row['seeds'][str(seed)]} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        rows.append(row)
    for row in rows:
        figures = list(row["seeds"].values())
        row["mean_agreement_pct"] = round(statistics.mean(f["agreement_pct"] for f in figures), 2)
        row["mean_perplexity_increase_pct"] = round(statistics.mean(f["perplexity_increase_pct"] for f in figures), 2)
    chosen = max(rows[1:], key=lambda r: (r["mean_agreement_pct"], -r["mean_perplexity_increase_pct"]))
    chosen["eval"] = {str(seed): judged(trained(chosen["steps"], chosen["lr"], seed), "eval") for seed in args.seeds}
    doc = {"machine": facts(), "shipped": {"steps": decoder_qat.DEFAULT_STEPS, "lr": decoder_qat.LR},
           "qat_tokens": len(fit_ids), "rows": rows, "chosen": {"steps": chosen["steps"], "lr": chosen["lr"]}}
    OUT.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    OUT.write_text(markdown(doc, args.seeds))
    print(OUT.read_text())


def markdown(doc: dict, seeds: list[int]) -> str:
    m = doc["machine"]
    lines = [
        "# QAT settings for decoders, chosen on validation text",
        "",
        f"Written by `bench/decoder_qat_choice.py` on {m.get('date', '?')}, {m.get('cpu', '?')}. tinylm (sample_apps/tinylm), "
        f"8da4w with group 32 and an 8-bit embedding and head; QAT on {doc['qat_tokens']:,} tokens of its training "
        "topics, judged on the tenth of them set aside (validation). Perplexity is over the float model's; agreement "
        "is greedy next-token agreement over 20 prompts (the gate's own code).",
        "",
        "| steps | lr | " + " | ".join(f"seed {s}: ppl / agree" for s in seeds) + " | mean agree |",
        "|---:|---:|" + "---:|" * len(seeds) + "---:|",
    ]
    for row in doc["rows"]:
        cells = [f"{f['perplexity_increase_pct']:+.1f} % / {f['agreement_pct']:.1f} %" for f in row["seeds"].values()]
        cells += [""] * (len(seeds) - len(cells))
        label = "0 (post-training)" if row["steps"] == 0 else str(row["steps"])
        lr = "" if row["lr"] is None else f"{row['lr']:g}"
        lines.append(f"| {label} | {lr} | " + " | ".join(cells) + f" | {row['mean_agreement_pct']:.1f} % |")
    chosen = next(r for r in doc["rows"] if "eval" in r)
    shipped = doc["shipped"]
    lines += [
        "",
        f"Chosen on validation: **{chosen['steps']} steps at lr {chosen['lr']:g}** "
        + ("(what train/decoder_qat.py ships)" if (chosen["steps"], chosen["lr"]) == (shipped["steps"], shipped["lr"])
           else f"(train/decoder_qat.py shipped {shipped['steps']} at {shipped['lr']:g} when this ran)")
        + ". Read once on eval.txt, the gate's text, afterwards: "
        + "; ".join(f"seed {s}: {f['perplexity_increase_pct']:+.1f} % / {f['agreement_pct']:.1f} %"
                    for s, f in chosen["eval"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
