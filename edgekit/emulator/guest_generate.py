#!/usr/bin/env python3
"""Greedy generation with a text-generation `.onnx` inside the emulated board; print one JSON object.

Copied into the guest beside the device runner (runtime/runner.py, as runner.py)
and run with the guest venv's python, so the decoder class and the generation
loop are the ones a board runs (numpy + onnxruntime, no edgekit, no torch):

    python guest_generate.py model.onnx prompt.ids NEW_TOKENS [--eos ID] [--count]

prompt.ids holds the prompt's token ids as little-endian int64. genai_config.json
lies beside the model. --count brackets the decode calls (every token after the
first) with the marker syscalls the instruction-count plugin listens for
(insn_count.c), as edgekit-et-runner --generate --count does.
"""

import ctypes
import json
import sys

import numpy as np

from runner import OnnxDecoder, generate_greedy

MARK_SYSCALL = 0x4ED6  # keep in sync with insn_count.c


def main(argv) -> int:
    model, prompt_file, new_tokens = argv[0], argv[1], int(argv[2])
    eos = int(argv[argv.index("--eos") + 1]) if "--eos" in argv else None
    libc = ctypes.CDLL(None) if "--count" in argv else None
    decoder = OnnxDecoder()
    decoder.set_threads(1)  # counts and comparisons at one thread: deterministic
    decoder.load(model)
    prompt = [int(t) for t in np.fromfile(prompt_file, dtype="<i8")]
    made = []

    def on_token(token):
        made.append(token)
        if libc is not None and len(made) == 1:  # the prefill is done: count from here
            libc.syscall(MARK_SYSCALL, 1)

    tokens, timing = generate_greedy(decoder.step, prompt, new_tokens, decoder.max_seq_len, eos, on_token)
    if libc is not None:
        libc.syscall(MARK_SYSCALL, 2)
    print(json.dumps({"ok": True, "tokens": tokens, "stopped": timing["stopped"], "decoded_tokens": len(tokens) - 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
