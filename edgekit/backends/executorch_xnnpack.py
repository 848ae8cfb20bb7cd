"""ExecuTorch `.pte` lowered to the XNNPACK delegate, quantized with PT2E.

PT2E + XNNPACKQuantizer is ExecuTorch's own int8 path: the quantizer annotates
exactly the patterns XNNPACK has int8 kernels for (conv, linear, add, pooling...),
so what is quantized is what the delegate will take. Ops it does not annotate
(embeddings, integer indexing, masks) stay as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgekit.backends.base import QuantConfig
from edgekit.errors import UsageError
from edgekit.quiet import native_stderr_captured, quiet_python_logs

FORMAT = "executorch"
BACKEND = "xnnpack"
SUFFIX = ".pte"
DELEGATE_ID = "XnnpackBackend"


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
    """Static int8: export -> prepare_pt2e -> run calibration batches -> convert_pt2e."""
    quiet_python_logs()
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if cfg.scheme != "static-int8":
        raise UsageError(f"quantization scheme '{cfg.scheme}' is not available for the executorch format yet")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=cfg.per_channel))
    graph = _export(model, example_inputs).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calib_batches:
            prepared(*batch)
    return convert_pt2e(prepared)


def export(qmodel, example_inputs: tuple, path: Path) -> dict:
    """Lower to XNNPACK and write the `.pte`; return what the partitioner delegated."""
    quiet_python_logs()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(_export(qmodel, example_inputs), partitioner=[XnnpackPartitioner()])
    # Read the partition before to_executorch(), which rewrites ops into out-variants and allocs.
    outside = _ops_outside_delegate(edge.exported_program().graph_module)
    program = edge.to_executorch()
    Path(path).write_bytes(program.buffer)
    plan = program.executorch_program.execution_plan[0]
    delegates = [d.id for d in plan.delegates]
    return {
        "delegates": delegates,
        "xnnpack_delegated": DELEGATE_ID in delegates,
        "ops_outside_delegate": outside,
    }


def _export(model, example_inputs: tuple):
    import torch

    try:
        return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as e:
        raise UsageError(
            f"torch.export could not capture the model with inputs of shapes "
            f"{[tuple(t.shape) for t in example_inputs]}: {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="make the forward pass traceable (no data-dependent Python control flow)",
        ) from e


def _ops_outside_delegate(graph_module) -> list[str]:
    """Call targets left in the top-level graph: they run on ExecuTorch's portable CPU kernels."""
    skip = {"executorch_call_delegate", "getitem"}
    ops = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            name = name.removeprefix("aten.").split(".")[0]  # "aten.embedding.default" -> "embedding"
            if name not in skip:
                ops.append(name)
    return sorted(set(ops))


class ExecutorchRunner:
    """A `.pte` loaded by ExecuTorch's Python runtime (the same C++ runtime as on the device)."""

    runtime = "executorch"

    def __init__(self, path: Path):
        quiet_python_logs()
        from executorch.runtime import Runtime

        with native_stderr_captured():
            program = Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        tensors = [torch.as_tensor(np.ascontiguousarray(a)) for a in inputs]
        return [o.detach().numpy().copy() for o in self._method.execute(tensors)]


def load(path: Path) -> ExecutorchRunner:
    return ExecutorchRunner(path)
