"""ExecuTorch `.pte` lowered to the XNNPACK delegate, quantized with PT2E.

PT2E + XNNPACKQuantizer is ExecuTorch's own int8 path: the quantizer annotates
exactly the patterns XNNPACK has int8 kernels for (conv, linear, add, pooling...),
so what is quantized is what the delegate will take. Ops it does not annotate
(embeddings, integer indexing, masks) stay as they are.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from edgekit.backends.base import QuantConfig, layer_selected, torch_export
from edgekit.backends.pt2e import integer_safe
from edgekit.quiet import native_stderr_captured, quiet_python_logs

FORMAT = "executorch"
BACKEND = "xnnpack"
SUFFIX = ".pte"
DELEGATE_ID = "XnnpackBackend"
SCHEMES = ("static", "dynamic", "fp16")
# torchao's PT2E observers: MinMax, and XNNPACK's own default, the histogram
# observer (searches the clipping range minimising quantization error).
CALIBRATIONS = ("minmax", "histogram")
DEFAULT_CALIBRATION = "histogram"


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
    """static: export -> prepare_pt2e -> calibrate -> convert_pt2e; dynamic: weights int8,
    activations quantized per call; fp16: the whole graph in half precision."""
    quiet_python_logs()
    if cfg.scheme == "fp16":
        return Float16Model(model).eval()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch_export(model, example_inputs).module()
    prepared = prepare_pt2e(graph, _quantizer(cfg))
    # Dynamic quantization needs no activation statistics, but the weight
    # observers only see the weights during a forward pass: one is enough.
    batches = calib_batches if cfg.scheme == "static" else [tuple(example_inputs)]
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return convert_pt2e(prepared)


def _quantizer(cfg: QuantConfig):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=cfg.per_channel, is_dynamic=cfg.scheme == "dynamic")
    if cfg.scheme == "static" and (cfg.calibration or DEFAULT_CALIBRATION) == "minmax":
        config = _with_activation_observer(config, "MinMaxObserver")
    quantizer = XNNPACKQuantizer().set_global(config)
    if cfg.skip_layers or cfg.only_layers is not None:
        # The quantizer can't take `None` per module; a node filter on the module
        # stack recorded by torch.export does the same job.
        quantizer.set_filter_function(_node_filter(cfg))
    return integer_safe(quantizer)


def _node_filter(cfg: QuantConfig):
    """Select the nodes of the chosen layers.

    XNNPACK annotates fused patterns (conv -> batch_norm -> relu) only when every
    node passes the filter, so a layer quantized alone brings its epilogue: the
    unweighted ops fed by it.
    """

    def selected(node, depth: int = 0) -> bool:
        if node.op != "call_function":
            # Weights and folded batch-norm biases (get_attr) carry no module
            # stack; the op that uses them decides.
            return True
        if layer_selected(_node_scopes(node), cfg):
            return True
        if cfg.only_layers is None or depth >= _EPILOGUE_DEPTH or _is_weighted(node):
            return False
        return any(selected(arg, depth + 1) for arg in node.all_input_nodes if arg.op == "call_function")

    return selected


# conv -> batch_norm -> relu: the longest epilogue XNNPACK fuses.
_EPILOGUE_DEPTH = 2


def _is_weighted(node) -> bool:
    name = str(node.target)
    return "conv" in name or "linear" in name


def _with_activation_observer(config, observer_name: str):
    from torchao.quantization.pt2e import observer

    ctr = getattr(observer, observer_name).with_args(eps=2**-12)  # eps as in XNNPACK's own config
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def _node_scopes(node) -> list[str]:
    return [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


class Float16Model(torch.nn.Module):
    """The model computing in half precision, with float32 inputs/outputs at its edges
    so callers and the runner feed it the same arrays as the float model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, *xs):
        xs = [x.half() if x.is_floating_point() else x for x in xs]
        out = self.inner(*xs)
        return out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)


def export(qmodel, example_inputs: tuple, path: Path) -> dict:
    """Lower to XNNPACK and write the `.pte`; return what the partitioner delegated."""
    quiet_python_logs()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch_export(qmodel, example_inputs), partitioner=[XnnpackPartitioner()])
    # Read the partition before to_executorch(), which rewrites ops into out-variants and allocs.
    outside = _ops_outside_delegate(edge.exported_program().graph_module)
    program = edge.to_executorch()
    Path(path).write_bytes(program.buffer)
    plan = program.executorch_program.execution_plan[0]
    delegates = [d.id for d in plan.delegates]
    # The memory plan: the arena ExecuTorch allocates for the graph's own tensors, fixed here
    # (buffer 0 is reserved). Read now: deserializing a big .pte later costs its size in memory.
    planned = sum(plan.non_const_buffer_sizes)
    return {"delegates": delegates, "xnnpack_delegated": DELEGATE_ID in delegates, "ops_outside_delegate": outside,
            "planned_memory_bytes": planned}


def _ops_outside_delegate(graph_module) -> list[str]:
    """Call targets left in the top-level graph: they run on ExecuTorch's portable CPU kernels."""
    skip = {"executorch_call_delegate", "getitem", "_to_dim_order_copy"}  # dtype casts at the edges
    ops = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            parts = name.split(".")  # "aten.embedding.default" -> "embedding"
            name = parts[-2] if len(parts) >= 3 else parts[0]
            if name not in skip:
                ops.append(name)
    return sorted(set(ops))


class ExecutorchRunner:
    """A `.pte` loaded by ExecuTorch's Python runtime (the same C++ runtime as on the device)."""

    runtime = "executorch"

    def __init__(self, path: Path, threads: int | None = None):
        quiet_python_logs()
        from executorch.runtime import Runtime

        if threads:
            # XNNPACK's threadpool is process-wide; the pybindings expose no safer knob.
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        with native_stderr_captured():
            program = Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.as_tensor(np.ascontiguousarray(a)) for a in inputs]
        return [o.detach().numpy().copy() for o in self._method.execute(tensors)]


def load(path: Path, threads: int | None = None) -> ExecutorchRunner:
    return ExecutorchRunner(path, threads)
