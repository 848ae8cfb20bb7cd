#!/usr/bin/env python3
"""Run an artifact on every sample of an .npz inside the emulated board; save the outputs.

Copied into the guest beside the device runner (runtime/runner.py, as runner.py)
and run with the guest venv's python: the runtime classes a board runs are the
ones used here (numpy + that runtime, no edgekit, no torch):

    python guest_predict.py RUNTIME model inputs.npz outputs.npz [--count]

RUNTIME is a device runner runtime name (onnxruntime, litert). inputs.npz holds
one array per model input, named as the input, stacked on a new first axis (K
samples). outputs.npz gets out0, out1, ... stacked the same way. --count runs
sample 0 once more between the marker syscalls the instruction-count plugin
listens for (insn_count.c).
"""

import ctypes
import sys

import numpy as np

from runner import runtime_for

MARK_SYSCALL = 0x4ED6  # keep in sync with insn_count.c


def main(argv) -> int:
    name, model, inputs, outputs = argv[:4]
    count = "--count" in argv[4:]
    runtime = runtime_for(name)
    runtime.set_threads(1)  # counts and comparisons at one thread: deterministic
    runtime.load(model)
    data = np.load(inputs)
    names = list(data.files)
    k = data[names[0]].shape[0]
    results = [[np.asarray(o) for o in runtime.run([data[n][i] for n in names])] for i in range(k)]
    np.savez(outputs, **{f"out{j}": np.stack([r[j] for r in results]) for j in range(len(results[0]))})
    if count:
        libc = ctypes.CDLL(None)
        feed = [data[n][0] for n in names]
        libc.syscall(MARK_SYSCALL, 1)
        runtime.run(feed)
        libc.syscall(MARK_SYSCALL, 2)
    print(f"ran {k} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
