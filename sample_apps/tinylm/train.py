"""Train the tinylm sample: a 4-layer Llama-class decoder on Python's own docs.

The text is `pydoc_data.topics.topics` (the help texts `help("if")` shows;
79 topics, 465k characters), which ships with CPython: nothing is downloaded.
Every tenth topic (sorted by name) is held out as eval.txt; the rest trains the
byte-level BPE tokenizer (512 tokens) and the model.

    python sample_apps/tinylm/train.py      # about 5 minutes on 2 cores

Writes model/ (config.json, model.safetensors, tokenizer.json: a Hugging Face
model directory, as a user's would be), train.txt and eval.txt.
"""

import math
import time
from pathlib import Path

import torch
from pydoc_data.topics import topics
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
EOS = "<|endoftext|>"
VOCAB = 512
SEQ = 128        # training window, tokens
BATCH = 32
STEPS = 900
LR = 3e-3


def split_text() -> tuple[list[str], list[str]]:
    names = sorted(topics)
    train = [topics[n] for i, n in enumerate(names) if i % 10 != 5]
    held_out = [topics[n] for i, n in enumerate(names) if i % 10 == 5]
    return train, held_out


def train_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train_docs, held_out = split_text()
    (HERE / "train.txt").write_text("\n\n".join(train_docs))
    (HERE / "eval.txt").write_text("\n\n".join(held_out))
    tokenizer = train_tokenizer(train_docs)
    ids: list[int] = []
    for doc in train_docs:
        ids += [tokenizer.eos_token_id] + tokenizer.encode(doc)
    data = torch.tensor(ids)
    print(f"{len(train_docs)} topics, {len(data)} tokens ({sum(map(len, train_docs)) / len(data):.2f} chars/token)")

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    start = time.time()
    model.train()
    for step in range(STEPS):
        lr = LR * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(data) - SEQ - 1, (BATCH,))
        batch = torch.stack([data[i : i + SEQ] for i in idx])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    model.eval()
    out = HERE / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
