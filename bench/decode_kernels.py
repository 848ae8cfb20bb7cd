"""How fast the matrix kernels a decode step runs read their weights, against this computer's memory
read bandwidth: what bounds a text-generation build's decode speed here.

    .venv/bin/python bench/decode_kernels.py [--rounds 15] [--threads 1,2]

A decode step multiplies one token's activations by every weight matrix once (llm_decode.md's limit:
bytes of weights per token over the memory bandwidth). That limit is reachable only by a kernel that
reads weights as fast as the memory delivers them. This bench times the kernels alone, on a stack of
matrices with SmolLM2-135M's shapes (30 layers of a fused q/k/v projection, the attention output and
the gated MLP, then the 49,152-token output head: 134 M weights, far past the caches), random weights,
one token per pass:

- float32 in torch eager (oneDNN/MKL sgemv): the control, 4 bytes per weight;
- int8 and int4 MatMulNBits, blocks of 32, accuracy_level 4 (onnxruntime): the `.onnx` builds' kernels
  (`--format onnx --weight-bits 8`, and the int4 default), quantized by the same onnxruntime quantizer
  edgekit uses (formats/onnx.py _matmul_nbits);
- 8da8w (int8 per row) and 8da4w (int4 in groups of 32) lowered to XNNPACK in a `.pte`: the `.pte`
  builds' kernels, quantized with the torchao configs formats/executorch.py decoder_quant_configs uses.

Per kernel: milliseconds a pass (median over --rounds passes, each kernel's passes in a block, one
process), bytes read a pass (the artifact's weights and scales), and so the rate it reads weights
at. `bandwidth / rate` is how far below the memory limit this kernel alone holds decode: a build that
runs it cannot come nearer the limit than that, whatever else it does. Writes bench/decode_kernels.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import facts  # noqa: E402

OUT = Path(__file__).resolve().parent / "decode_kernels.md"

# SmolLM2-135M's shapes (its config.json): hidden 576, 9 query heads and 3 key/value heads of 64,
# MLP 1,536, 30 layers, vocabulary 49,152.
HIDDEN, KV, FFN, LAYERS, VOCAB = 576, 192, 1536, 30, 49152


def matrix_stack():
    """The decode step's matrices in SmolLM2's order, with only cheap elementwise glue between them (the
    attention itself is left out: at one token it reads the cache, not weights)."""
    import torch

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(HIDDEN, HIDDEN + 2 * KV, bias=False)
            self.o = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
            self.gate = torch.nn.Linear(HIDDEN, FFN, bias=False)
            self.up = torch.nn.Linear(HIDDEN, FFN, bias=False)
            self.down = torch.nn.Linear(FFN, HIDDEN, bias=False)

        def forward(self, x):
            x = x + self.o(self.qkv(x)[..., :HIDDEN])
            return x + self.down(self.gate(x) * self.up(x))

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(LAYERS))
            self.head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.head(x)

        def get_output_embeddings(self):  # what decoder_quant_configs finds the head by, as in transformers
            return self.head

    torch.manual_seed(0)
    model = Stack().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)  # bounded activations through 30 layers
    return model


def onnx_artifact(model, bits: int, tmp: Path) -> Path:
    """The stack through torch.onnx and onnxruntime's MatMulNBitsQuantizer (edgekit's own call): its model.onnx."""
    import onnx
    import torch

    from edgekit.formats.onnx import _matmul_nbits, _save_with_weights_beside

    float_dir = tmp / "float-onnx"
    if not (float_dir / "model.onnx").exists():
        float_dir.mkdir(parents=True, exist_ok=True)
        # (1, 1, hidden): a 3-D input exports Linear as MatMul, which the quantizer takes (2-D: Gemm).
        torch.onnx.export(model, (torch.zeros(1, 1, HIDDEN),), str(float_dir / "model.onnx"), dynamo=True,
                          external_data=True, input_names=["x"])
    out = tmp / f"int{bits}-onnx"
    _save_with_weights_beside(_matmul_nbits(onnx.load(str(float_dir / "model.onnx")), bits, 32), out)
    return out / "model.onnx"


def onnx_kernel(path: Path, threads: int):
    """(run one pass, bytes read a pass) in an onnxruntime session."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal((1, 1, HIDDEN)).astype(np.float32)}
    return (lambda: session.run(None, feed)), path.with_suffix(".onnx.data").stat().st_size


def pte_artifact(model, bits: int, tmp: Path) -> Path:
    """The stack quantized by edgekit's own call (formats/executorch.py quantize_decoder: 8da8w per row,
    8da4w in groups of 32; the head at the same bits), lowered to XNNPACK: its .pte."""
    import copy

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgekit.formats.executorch import quantize_decoder

    quantized = copy.deepcopy(model)
    quantize_decoder(quantized, group_size=32, embedding_bits=bits, weight_bits=bits)
    program = torch.export.export(quantized, (torch.zeros(1, HIDDEN),))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path = tmp / f"8da{bits}w.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return path


def pte_kernel(path: Path, threads: int):
    """(run one pass, bytes read a pass) in edgekit's ExecuTorch runtime, XNNPACK's pool at `threads`."""
    import torch

    from edgekit.runtime.runner import ExecutorchRuntime

    runtime = ExecutorchRuntime()
    if not runtime.set_threads(threads):
        raise SystemExit(f"ExecuTorch's XNNPACK threadpool did not take {threads} threads")
    runtime.load(str(path))
    inputs = [torch.randn(1, HIDDEN, generator=torch.Generator().manual_seed(0))]
    return (lambda: runtime.run(inputs)), path.stat().st_size


def torch_kernel(model, threads: int):
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(1, HIDDEN, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            model(x)

    return run, sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    args = parser.parse_args()
    from edgekit.quiet import quiet_python_logs
    from edgekit.runtime.runner import memory_read_bandwidth

    quiet_python_logs()
    machine = facts()
    model = matrix_stack()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-kernels-") as tmp:
        onnx8, onnx4 = (onnx_artifact(model, bits, Path(tmp)) for bits in (8, 4))
        pte8, pte4 = (pte_artifact(model, bits, Path(tmp)) for bits in (8, 4))
        for threads in sorted({int(t) for t in args.threads.split(",")}):
            kernels = {
                "float32 (torch eager)": torch_kernel(model, threads),
                "int8 MatMulNBits (onnxruntime)": onnx_kernel(onnx8, threads),
                "int4 MatMulNBits (onnxruntime)": onnx_kernel(onnx4, threads),
                "8da8w (ExecuTorch, XNNPACK)": pte_kernel(pte8, threads),
                "8da4w (ExecuTorch, XNNPACK)": pte_kernel(pte4, threads),
            }
            times = {}
            # Each kernel's passes in a block, not alternating pass by pass: onnxruntime's and torch's
            # threads spin for a while after a call and would take cores from the next kernel's pass.
            for name, (run, _) in kernels.items():
                run()  # warm-up: first-call allocations and weight packing, not timed
                run()
                times[name] = []
                for _ in range(args.rounds):
                    start = time.perf_counter_ns()
                    run()
                    times[name].append((time.perf_counter_ns() - start) / 1e6)
            # After the timings: its buffer does not crowd them out.
            bandwidth = memory_read_bandwidth(threads=threads)["read_gbs"]
            for name, (_, nbytes) in kernels.items():
                ms = statistics.median(times[name])
                rate = nbytes / ms / 1e6
                results.append({"threads": threads, "kernel": name, "ms_per_pass": round(ms, 2),
                                "bytes_per_pass": nbytes, "read_gbs": round(rate, 2),
                                "memory_read_gbs": bandwidth,
                                "below_limit": round(bandwidth / rate, 2)})
            del kernels
    doc = {"machine": machine, "rounds": args.rounds, "weights": sum(p.numel() for p in model.parameters()),
           "results": results}
    OUT.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    OUT.write_text(markdown(doc))
    print(OUT.read_text())


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "# Decode's matrix kernels against the memory limit",
        "",
        f"`python bench/decode_kernels.py`, {m['date']}, {m['cpu']} ({m['cores']} cores, load average at start "
        f"{m['load_average_at_start']}); torch {m['torch']}, executorch {m['executorch']}, torchao {m['torchao']}, "
        f"onnxruntime {m['onnxruntime']}.",
        f"One token through SmolLM2-135M's matrices ({doc['weights']:,} random weights: 30 layers and the output "
        f"head), median of {doc['rounds']} passes, each kernel's passes in a block, in one process.",
        "",
        "| threads | kernel | ms a pass | MB read a pass | reads at GB/s | memory GB/s | limit / kernel |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        lines.append(f"| {r['threads']} | {r['kernel']} | {r['ms_per_pass']:.2f} | {r['bytes_per_pass'] / 1e6:,.1f} | "
                     f"{r['read_gbs']:.2f} | {r['memory_read_gbs']:.2f} | {r['below_limit']:.2f}x |")
    lines += [
        "",
        "MB read a pass: the artifact's weights and scales (torch: its float32 parameters). reads at: those "
        "bytes over the time a pass takes. memory: this computer's read bandwidth at the same threads "
        "(runtime/runner.py memory_read_bandwidth, in the same run). limit / kernel: memory over reads "
        "at; a decode step that runs this kernel stays at least this far below llm_decode.md's limit (1.00x "
        "would read at the memory's speed).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
