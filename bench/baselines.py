"""The paths users take today without edgekit, each written the way its own docs show.

Float: PyTorch eager, torch.compile (inductor), ONNX Runtime on a plain
`torch.onnx.export(..., dynamo=True)`. Int8 by hand: onnxruntime's
`quantize_static` with nothing but its required arguments, and ExecuTorch's
PT2E + XNNPACK flow as in its tutorial
(https://docs.pytorch.org/executorch/stable/tutorial-xnnpack-delegate-lowering.html).

Artifacts are loaded for timing with edgekit's backend loaders: those are the
runtimes' plain sessions with the thread setting, so every .onnx / .pte is
timed by identical code and only the artifact differs.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from measure import Contender, prepare, set_torch_threads, stage


def _torch_run(module):
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def _file_bytes(path: Path) -> int:
    """The model file plus any external-data file the exporter wrote beside it."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def state_dict_bytes(model) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def eager(model) -> Contender:
    def build(c: Contender) -> None:
        c.size_bytes = state_dict_bytes(model)

        def runner(threads: int):
            set_torch_threads(threads)
            return _torch_run(model)

        c.runner = runner

    return prepare("eager_fp32", "PyTorch eager fp32", "float", build)


def compile_stage(threads: int) -> str:
    return f"compile ({threads} thread{'s' if threads > 1 else ''})"


def compiled(model, sample: np.ndarray) -> Contender:
    """torch.compile, compiled once per thread count: inductor's C++ kernels bake in
    torch.get_num_threads() at compile time, so one compile can't serve both counts."""

    def build(c: Contender) -> None:
        c.size_bytes = state_dict_bytes(model)

        def runner(threads: int):
            import torch

            torch._dynamo.reset()
            set_torch_threads(threads)
            module = torch.compile(model)
            run = _torch_run(module)
            with stage(c, compile_stage(threads)):
                run(sample)  # the first call compiles
            return run

        c.runner = runner

    return prepare("compile_fp32", "torch.compile fp32 (inductor)", "float", build)


def _onnx_runner(path: Path):
    from edgekit.formats import onnx as onnx_format

    def runner(threads: int):
        session = onnx_format.load(path, threads=threads)
        return lambda x: session.run([x])[0]

    return runner


def ort_fp32(model, sample: np.ndarray, out: Path) -> Contender:
    def build(c: Contender) -> None:
        import torch

        path = out / "ort-fp32" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        # The exporter narrates each step on stdout; keep the progress display readable.
        with stage(c, "torch.onnx.export"), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (torch.from_numpy(sample),), str(path), dynamo=True)
        c.size_bytes = _file_bytes(path)
        c.runner = _onnx_runner(path)

    return prepare("ort_fp32", "ONNX Runtime fp32 (torch.onnx.export dynamo)", "float", build)


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    saved = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(saved)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: one feed dict per call, None at the end."""

    def __init__(self, path: Path, batches: list[np.ndarray]):
        import onnxruntime as ort

        name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        self._feeds = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


def ort_int8_default(fp32: Contender, calib: list[np.ndarray], out: Path) -> Contender:
    """quantize_static(model_in, model_out, reader) and nothing else: QDQ, int8
    activations and weights, per-tensor, MinMax: onnxruntime's defaults."""

    def build(c: Contender) -> None:
        from onnxruntime.quantization import quantize_static

        if fp32.error:
            raise RuntimeError(f"needs the fp32 ONNX export, which failed ({fp32.error})")
        src = out / "ort-fp32" / "model.onnx"
        dst = out / "ort-int8" / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        c.stages.update(fp32.stages)  # the same export feeds it
        c.note = "QDQ, S8 activations and weights, per-tensor, MinMax; no quant_pre_process"
        # Its advice to pre-process first is the step the defaults skip: keep it off the progress display.
        with stage(c, "quantize_static"), _root_log_level(logging.ERROR):
            quantize_static(str(src), str(dst), _Reader(src, calib))
        c.size_bytes = _file_bytes(dst)
        c.runner = _onnx_runner(dst)

    return prepare("ort_int8_default", "ONNX Runtime int8, quantize_static defaults", "int8 by hand", build)


def tutorial_edge(model, example: tuple, calib: list[tuple]):
    """ExecuTorch's PT2E + XNNPACK tutorial in one go, as written there: the lowered program
    (EdgeProgramManager; `.to_executorch().buffer` is the .pte). pt2e_xnnpack below times its steps."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(model, example).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with torch.no_grad():
        for batch in calib:
            prepared(*batch)
    converted = convert_pt2e(prepared)
    return to_edge_transform_and_lower(torch.export.export(converted, example), partitioner=[XnnpackPartitioner()])


def pt2e_xnnpack(model, sample: np.ndarray, calib: list[np.ndarray], out: Path) -> Contender:
    """ExecuTorch's tutorial, step by step, each step timed."""

    def build(c: Contender) -> None:
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from edgekit.formats import executorch as executorch_format

        inputs = (torch.from_numpy(sample),)
        with stage(c, "torch.export"):
            graph = torch.export.export(model, inputs).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        with stage(c, "prepare_pt2e + calibrate"), torch.no_grad():
            prepared = prepare_pt2e(graph, quantizer)
            for batch in calib:
                prepared(torch.from_numpy(batch))
        with stage(c, "convert_pt2e"):
            converted = convert_pt2e(prepared)
        with stage(c, "to_edge_transform_and_lower"):
            edge = to_edge_transform_and_lower(torch.export.export(converted, inputs), partitioner=[XnnpackPartitioner()])
        with stage(c, "to_executorch"):
            program = edge.to_executorch()
        path = out / "pt2e-xnnpack" / "model.pte"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(program.buffer)
        c.size_bytes = path.stat().st_size

        def runner(threads: int):
            method = executorch_format.load(path, threads=threads)
            return lambda x: method.run([x])[0]

        c.runner = runner

    return prepare("pt2e_xnnpack_hand", "ExecuTorch int8 .pte, PT2E + XNNPACK by hand (tutorial)", "int8 by hand", build)


def all_paths(model, sample: np.ndarray, calib: list[np.ndarray], out: Path, say) -> list[Contender]:
    """Build every hand path in turn, reporting each as it is ready."""
    from edgekit.quiet import quiet_python_logs

    quiet_python_logs()
    contenders = [eager(model), compiled(model, sample)]
    say("exporting ONNX fp32 (torch.onnx.export, dynamo)")
    contenders.append(ort_fp32(model, sample, out))
    say("onnxruntime quantize_static with its defaults")
    contenders.append(ort_int8_default(contenders[-1], calib, out))
    say("PT2E + XNNPACK by hand (ExecuTorch tutorial)")
    contenders.append(pt2e_xnnpack(model, sample, calib, out))
    return contenders
