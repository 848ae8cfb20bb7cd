#!/usr/bin/env python3
"""Run an .onnx on every sample of an .npz inside the emulated board; save the outputs.

Copied into the guest and run with its venv's python (numpy + onnxruntime, no
edgekit, no torch):

    python guest_predict.py model.onnx inputs.npz outputs.npz [--count]

inputs.npz holds one array per model input, named as the input, stacked on a
new first axis (K samples). outputs.npz gets out0, out1, ... stacked the same
way. --count runs sample 0 once more between the marker syscalls the
instruction-count plugin listens for (insn_count.c).
"""

import ctypes
import sys

import numpy as np
import onnxruntime as ort

MARK_SYSCALL = 0x4ED6  # keep in sync with insn_count.c


def main(argv) -> int:
    model, inputs, outputs = argv[:3]
    count = "--count" in argv[3:]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # counts and comparisons at one thread: deterministic
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    data = np.load(inputs)
    names = [i.name for i in session.get_inputs()]
    k = data[names[0]].shape[0]
    results = [session.run(None, {n: data[n][i] for n in names}) for i in range(k)]
    np.savez(outputs, **{f"out{j}": np.stack([r[j] for r in results]) for j in range(len(results[0]))})
    if count:
        libc = ctypes.CDLL(None)
        feed = {n: data[n][0] for n in names}
        libc.syscall(MARK_SYSCALL, 1)
        session.run(None, feed)
        libc.syscall(MARK_SYSCALL, 2)
    print(f"ran {k} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
