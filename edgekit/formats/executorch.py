"""ExecuTorch `.pte` lowered to the XNNPACK delegate, quantized with PT2E.

PT2E + XNNPACKQuantizer is ExecuTorch's own int8 path: the quantizer annotates
exactly the patterns XNNPACK has int8 kernels for (conv, linear, add, pooling...),
so what is quantized is what the delegate will take. Ops it does not annotate
(embeddings, integer indexing, masks) stay as they are; integer and mask
tensors are kept out of quantization on purpose (formats/pt2e.py).

Everything edgekit knows about the format is here: quantize, export, the host
runtime, the lint (ops outside the delegate run on ExecuTorch's portable
kernels), the per-op profile (ETDump + Inspector), the device runtime's
footprint, the native runners and how the emulated board runs it.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgekit.emulator.check import EmulationFailed, generate_native_pte, run_native_pte
from edgekit.formats.base import (
    DYNAMIC_SHAPE,
    QuantConfig,
    finding,
    layer_selected,
    torch_export,
)
from edgekit.formats.pt2e import (
    GraphRunner,
    integer_safe,
    node_scopes,
    record_report,
    report_of,
    with_calibration,
)
from edgekit.formats.xnnpack_rewrites import keep_on_delegate, lower_float_ops, lowers_float_ops
from edgekit.quiet import native_stderr_captured, quiet_python_logs

NAME = "executorch"
DISPLAY_NAME = "ExecuTorch .pte (XNNPACK)"
SUFFIX = ".pte"
BACKEND = "xnnpack"
DEVICE_RUNTIME = "executorch"  # runtime/runner.py's name for executorch.runtime
DELEGATE_ID = "XnnpackBackend"
SCHEMES = ("static", "dynamic", "fp16")
# torchao's PT2E observers: MinMax, XNNPACK's own default, the histogram observer
# (searches the clipping range minimising quantization error), and percentile on
# the same histogram (formats/pt2e.py).
CALIBRATIONS = ("minmax", "histogram", "percentile")
DEFAULT_CALIBRATION = "histogram"
# The device runs the native ExecuTorch runner (~12 MB deployed with its libraries, no torch), while
# the Python runtime on this host imports torch (~350 MB resident): count 16 MB on the device (ESTIMATE).
DEVICE_RUNTIME_MB = 16
# Ops outside the XNNPACK delegate run on ExecuTorch's portable kernels: scalar C++, one thread.
OFF_FAST_PATH_IS_SCALAR = True
ARM_KERNELS = "xnnpack"  # its kernel library on ARM, for the cost model (validate/cost.py)
NATIVE_TOOLS = ("edgekit-et-runner", "executor_runner")
GUEST_WHEELS: dict[str, str | None] = {}  # runs in edgekit-et-runner, built from the executorch wheel (emulator/native_build.py)
PREFERRED_NATIVE_TOOL = "edgekit-et-runner"  # a Linux aarch64 board then needs no torch


def available() -> str | None:
    return None  # executorch is a dependency of edgekit itself


# ---------------------------------------------------------------- quantize and export


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
    """static: export -> prepare_pt2e -> calibrate -> convert_pt2e; dynamic: weights int8,
    activations quantized per call; fp16: the whole graph in half precision."""
    quiet_python_logs()
    if cfg.scheme == "fp16":
        return float16_model(model).eval()
    graph = torch_export(model, example_inputs).module()
    rewrites = keep_on_delegate(graph, example_inputs)
    float_graph = copy.deepcopy(graph) if lowers_float_ops(graph) else None  # prepare_pt2e changes `graph`
    quantized = quantize_exported(graph, example_inputs, calib_batches, cfg)
    if float_graph is not None:
        rewrites += lower_float_ops(quantized, float_graph, example_inputs)
    quantized.meta[REWRITES_KEY] = rewrites
    return quantized


REWRITES_KEY = "edgekit_rewrites"  # xnnpack_rewrites' records on the quantized graph, for the export record


def quantize_exported(graph, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
    """`quantize` from torch.export's module of the model (changed in place): for callers that
    quantize one graph many ways (build/sensitivity.py copies one export per layer)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer = _quantizer(cfg)
    prepared = prepare_pt2e(graph, quantizer)
    # Dynamic quantization needs no activation statistics, but the weight
    # observers only see the weights during a forward pass: one is enough.
    batches = calib_batches if cfg.scheme == "static" else [tuple(example_inputs)]
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return _converted(prepared, quantizer)


def _converted(prepared, quantizer):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    record_report(converted, quantizer)
    return converted


# ---------------------------------------------------------------- quantization-aware training (train/qat.py)


def prepare_qat(model, example_inputs: tuple, cfg: QuantConfig):
    """The model's graph with fake quantization where `quantize` puts int8 (the same quantizer,
    rewrites and float layers), to fine-tune: torchao's prepare_qat_pt2e, XNNPACK's QAT config
    (per-channel weights as `cfg` says; activations observed by moving-average min/max, the
    library's QAT recipe). The model itself is not changed (torch.export shares its parameters)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quiet_python_logs()
    graph = torch_export(copy.deepcopy(model), example_inputs).module()
    rewrites = keep_on_delegate(graph, example_inputs)
    float_graph = copy.deepcopy(graph) if lowers_float_ops(graph) else None
    quantizer = _quantizer(cfg, qat=True)
    prepared = prepare_qat_pt2e(graph, quantizer)
    prepared.meta[_QAT_KEY] = (quantizer, rewrites, float_graph, example_inputs)
    return prepared


_QAT_KEY = "edgekit_qat"


def convert_qat(prepared):
    """The fine-tuned graph as `quantize` returns its own (what `export` lowers)."""
    quantizer, rewrites, float_graph, example_inputs = prepared.meta[_QAT_KEY]
    converted = _converted(prepared, quantizer)
    if float_graph is not None:
        rewrites = rewrites + lower_float_ops(converted, float_graph, example_inputs)
    converted.meta[REWRITES_KEY] = rewrites
    return converted


SCREENED_AS = GraphRunner.validated_as  # how build/quality.py judges a try with `screen`


def screen(qmodel) -> GraphRunner:
    """The quantized graph before lowering, to judge a try without exporting it (build/quality.py)."""
    return GraphRunner(qmodel)


def pt2e_quantizer(cfg: QuantConfig, tutorial: bool = False):
    """The PT2E quantizer this format annotates with (`edgekit debug` replays it). `tutorial`:
    XNNPACKQuantizer exactly as ExecuTorch's PT2E tutorial configures it, for comparison."""
    if not tutorial:
        return _quantizer(cfg)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=cfg.per_channel))


def _quantizer(cfg: QuantConfig, qat: bool = False):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=cfg.per_channel, is_dynamic=cfg.scheme == "dynamic",
                                               is_qat=qat)
    if cfg.scheme == "static" and not qat:
        config = with_calibration(config, cfg.calibration or DEFAULT_CALIBRATION)
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
        if layer_selected(node_scopes(node), cfg):
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


def float16_model(inner):
    """The model computing in half precision, with float32 inputs/outputs at its edges
    so callers and the runner feed it the same arrays as the float model."""
    import torch

    class Float16Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(inner).half()

        def forward(self, *xs):
            xs = [x.half() if x.is_floating_point() else x for x in xs]
            out = self.inner(*xs)
            return out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)

    return Float16Model()


def export(qmodel, example_inputs: tuple, path: Path) -> dict:
    """Lower to XNNPACK and write the `.pte`; return what the partitioner delegated."""
    quiet_python_logs()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
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
    delegated = DELEGATE_ID in delegates
    warnings = [] if delegated else [f"nothing was delegated to {BACKEND}: the artifact runs on portable CPU kernels"]
    return {"delegates": delegates, "xnnpack_delegated": delegated, "ops_outside_delegate": outside,
            "planned_memory_bytes": planned, "quantizer": report_of(qmodel),
            "rewrites": list(getattr(qmodel, "meta", {}).get(REWRITES_KEY, [])), "warnings": warnings}


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


# ---------------------------------------------------------------- the host runtime


class ExecutorchRunner:
    """A `.pte` loaded by ExecuTorch's Python runtime (the same C++ runtime as on the device)."""

    runtime = "executorch"
    validated_as = None  # the host's XNNPACK computes what the device's does

    def __init__(self, path: Path, threads: int | None = None):
        quiet_python_logs()
        from executorch.runtime import Runtime

        with native_stderr_captured():
            if threads:
                # XNNPACK's threadpool is process-wide; the pybindings expose no safer knob.
                from executorch.extension.pybindings.portable_lib import (
                    _unsafe_reset_threadpool,
                )

                _unsafe_reset_threadpool(threads)
            program = Runtime.get().load_program(str(path))
            self._method = program.load_method("forward")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        tensors = [torch.as_tensor(np.ascontiguousarray(a)) for a in inputs]
        return [o.detach().numpy().copy() for o in self._method.execute(tensors)]


def load(path: Path, threads: int | None = None) -> ExecutorchRunner:
    return ExecutorchRunner(path, threads)


def load_for_validation(path: Path) -> ExecutorchRunner:
    return ExecutorchRunner(path)


# ---------------------------------------------------------------- lint

NOT_COMPUTE = {"quantize_per_tensor", "dequantize_per_tensor", "_to_dim_order_copy", "_clone_dim_order"}
ADVICE = {
    "cumsum": "XNNPACK has no cumsum: compute it outside the model, or as a matmul with a triangular ones matrix",
    "sort": "sorting stays on portable kernels: do it after the model (e.g. top-k in the app)",
    "topk": "top-k stays on portable kernels: run it on the outputs in the app",
    "embedding": "embedding lookups are not delegated (cheap gathers); fine unless the table is large",
    "index": "advanced indexing is not delegated: use slicing, or move it out of forward()",
    "grid_sampler_2d": "grid_sample is not delegated: precompute the grid or resample outside the model",
    "native_layer_norm": ("XNNPACK has no layer norm: edgekit rewrites one over the last dim (nn.LayerNorm) into "
                          "delegated ops; one over other dims has no rewrite yet: normalise the last dim"),
    # what scaled_dot_product_attention's decomposition leaves (its safe softmax, its copies)
    **{op: ("left by F.scaled_dot_product_attention with dropout, grouped-query heads (enable_gqa) or both a "
            "mask and is_causal (edgekit rewrites the others, causal included, into delegated bmm + softmax); no "
            "rewrite exists for those yet: drop dropout at inference, repeat k and v to the query heads, or fold "
            "the causal triangle into attn_mask")
       for op in ("any", "eq", "logical_not", "where", "full_like")},
    "select_copy": "integer indexing (x[:, 0]) outside a float graph: edgekit rewrites a float one into a slice",
    "squeeze_copy": ("unbind / squeeze outside a float graph: edgekit rewrites a float tensor's unbind into "
                     "slices; otherwise index with slicing (x[:, :1]) and reshape"),
    "mean": ("XNNPACK takes only the mean over H and W of a 4-D tensor (its global average pooling; edgekit "
             "rewrites x.mean((2, 3)) to it): for other dims no rewrite exists yet, reshape so the mean is "
             "over the last two dims of a 4-D tensor"),
}
GENERIC_ADVICE = ("runs on ExecuTorch's portable kernels (scalar, one thread): replace it with ops XNNPACK takes "
                  "(conv, linear, add/mul, pooling, clamp/relu, softmax) or move it out of forward()")
DYNAMIC_ADVICE = ("ExecuTorch plans memory for the upper bound and XNNPACK rebuilds its operators whenever the shape "
                  "changes: export with the shape the device feeds (--input-shape) unless it really varies")


def lint(path: Path) -> dict:
    """Ops the XNNPACK delegate did not take (KernelCalls in the program itself), and inputs whose
    shape is not static. Each finding carries its MACs, read from the program's own tensor sizes."""
    program = _program(path)
    findings = [finding(op, r["count"], ADVICE.get(op, GENERIC_ADVICE), "ExecuTorch portable kernels", macs=r["macs"])
                for op, r in sorted(ops_outside(program).items())]
    findings += [finding(DYNAMIC_SHAPE, 1, DYNAMIC_ADVICE, f"input {name}", macs=0) for name in _dynamic_inputs(program)]
    return {"fast_path": "XNNPACK delegate", "findings": findings}


def _program(path: Path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    return deserialize_pte_binary(Path(path).read_bytes()).program


def ops_outside(program) -> dict[str, dict]:
    """{op short name: {"count", "macs"}} for KernelCalls outside every delegate.

    MACs: convolution: out elements x weight elements per output channel; linear/mm/addmm/bmm:
    out elements x the input's last dim; other ops: 0 (elementwise, data movement).
    """
    found: dict[str, dict] = {}
    for plan in program.execution_plan:
        for chain in plan.chains:
            for ins in chain.instructions:
                args = ins.instr_args
                if type(args).__name__ != "KernelCall":
                    continue
                name = plan.operators[args.op_index].name.split("::")[-1]
                if name in NOT_COMPUTE:
                    continue
                row = found.setdefault(name, {"count": 0, "macs": 0})
                row["count"] += 1
                row["macs"] += _kernel_macs(name, [_sizes(plan.values[i].val) for i in args.args])
    return found


def _sizes(val) -> list[int] | None:
    sizes = getattr(val, "sizes", None)
    return list(sizes) if sizes is not None else None


def _kernel_macs(name: str, sizes: list) -> int:
    tensors = [s for s in sizes if s is not None]
    if len(tensors) < 2:
        return 0
    out = math.prod(tensors[-1])  # out-variant kernels take their output last
    if name in ("convolution", "_convolution"):
        return out * math.prod(tensors[1][1:])  # weight (Cout, Cin/groups, k...)
    if name in ("linear", "mm", "addmm", "bmm", "matmul"):
        x = tensors[1] if name == "addmm" else tensors[0]
        return out * x[-1]
    return 0


def _dynamic_inputs(program) -> list[str]:
    found = []
    for plan in program.execution_plan:
        for n, index in enumerate(plan.inputs):
            val = plan.values[index].val
            dynamism = getattr(val, "shape_dynamism", None)
            if dynamism is not None and int(getattr(dynamism, "value", dynamism)) != 0:  # 0: TensorShapeDynamism.STATIC
                found.append(f"{n} of {plan.name} (sizes {list(val.sizes)} at most)")
    return found


# ---------------------------------------------------------------- profile

# ExecuTorch events that are containers, not operators.
_ET_SKIP = {"DELEGATE_CALL", "Method::execute", "OPERATOR_CALL"}


def profile(path: Path, batch: list[np.ndarray], runs: int, threads: int) -> list[dict]:
    """ETDump (`_load_for_executorch(enable_etdump=True)`) read by `executorch.devtools.Inspector`:
    XNNPACK's per-operator events inside the delegate."""
    import warnings

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib as pl

    inputs = [torch.as_tensor(np.ascontiguousarray(a)) for a in batch]
    with tempfile.TemporaryDirectory(prefix="edgekit-etdump-") as tmp, native_stderr_captured():
        pl._unsafe_reset_threadpool(threads)
        module = pl._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
        for _ in range(runs):
            module.forward(inputs)
        etdump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(etdump))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": we asked for times only
            inspector = Inspector(etdump_path=str(etdump))
    rows = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.name in _ET_SKIP or event.perf_data is None:
                continue
            raw = list(event.perf_data.raw)
            rows.append({"name": event.name, "ms": round(float(np.mean(raw)), 4), "calls": 1,
                         "delegated": bool(event.is_delegated_op)})
    return rows


# ---------------------------------------------------------------- the emulated board


def emulate(core, artifact: Path, samples: list[list[np.ndarray]], input_names: list[str]):
    """In edgekit-et-runner, the native runner a Linux board gets (no torch in the guest)."""

    return run_native_pte(core, artifact, samples, "artifact")


def emulated_baseline(core, model, example: tuple, one_sample) -> int | None:
    """Guest instructions of the float model lowered to XNNPACK the same way: what int8 is judged by."""

    graph = torch_export(model, example).module()
    keep_on_delegate(graph, example)  # the same rewrites as the int8 artifact's
    if lowers_float_ops(graph):
        lower_float_ops(graph, copy.deepcopy(graph), example)
    with tempfile.TemporaryDirectory(prefix="edgekit-float-pte-") as tmp:
        path = Path(tmp) / "float.pte"
        export(graph, example, path)
        try:
            _, count, _ = run_native_pte(core, path, one_sample, "float")
        except EmulationFailed:
            return None
    return count


# ---------------------------------------------------------------- decoders (--task text-generation)

# 8da4w, ExecuTorch's scheme for language models on XNNPACK: Linear weights in 4 bits in groups of
# `group_size` along the input dimension (one fp32 scale per group), activations quantized to int8 per
# token at run time (executorch.extension.llm.export.quantize's qlinear_config="8da4w").
# The embedding table and the output head stay 8-bit per row by default: they are the layers 4 bits
# hurt most (llama.cpp's Q4_K_M keeps them at 6 bits for the same reason). On the tinylm sample, 4-bit
# embedding and head add 13.0 % perplexity and keep 80.9 % greedy agreement against 9.1 % / 83.9 %
# with them at 8 bits, before QAT (sample_apps/tinylm/README.md).
DECODER_FILES = ("model.pte",)  # a text-generation build's artifact: the program holds its KV cache
DECODER_RUNTIME = "executorch"  # runtime/runner.py ExecutorchDecoder steps a decoder .pte


def decoder_scheme(weight_bits: int = 4, weight_method: str = "rtn") -> str:
    """8da4w: int8 dynamic activations, int4 weights (8da8w with --weight-bits 8); HQQ: its scales."""
    return f"8da{weight_bits}w" + (" (HQQ scales)" if weight_method == "hqq" else "")


def decoder_quant_configs(model, group_size: int, embedding_bits: int, weight_bits: int = 4,
                          weight_method: str = "rtn") -> list[tuple[object, object, str, int]]:
    """(torchao config, filter_fn, what, weight bits) for each kind of layer of a decoder, in the order applied.

    The same list drives post-training quantization (torchao's quantize_) and QAT (QATConfig
    prepare/convert), so the weights a QAT run learns for are the weights that ship. weight_method
    "hqq": the Linear layers' int4 scales are chosen by half-quadratic optimization of the rounding
    error (torchao's HQQ_SCALE_ONLY; Badri and Shaji, "Half-Quadratic Quantization of Large Machine
    Learning Models", 2023) instead of from each group's largest weight; the grid and the kernels are
    the same, only the scales differ."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quantize_.workflows import IntxChooseQParamsAlgorithm

    head = model.get_output_embeddings()

    def per(bits: int):
        return PerGroup(group_size) if bits == 4 else PerAxis(0)

    dtype = {4: torch.int4, 8: torch.int8}
    return [
        (IntxWeightOnlyConfig(weight_dtype=dtype[embedding_bits], granularity=per(embedding_bits)),
         lambda module, fqn: isinstance(module, torch.nn.Embedding), f"embeddings: int{embedding_bits} weights",
         embedding_bits),
        (Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype[embedding_bits], weight_granularity=per(embedding_bits)),
         lambda module, fqn: module is head, f"output head: int8 activations, int{embedding_bits} weights",
         embedding_bits),
        (Int8DynamicActivationIntxWeightConfig(
            weight_dtype=dtype[weight_bits], weight_granularity=per(weight_bits),
            intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY if weight_method == "hqq"
            else IntxChooseQParamsAlgorithm.AFFINE),
         lambda module, fqn: isinstance(module, torch.nn.Linear) and module is not head,
         f"linear layers: int8 activations, int{weight_bits} weights "
         + (f"in groups of {group_size}" if weight_bits == 4 else "per row"), weight_bits),
    ]


def decoder_layers(model, group_size: int, embedding_bits: int,
                   weight_bits: int = 4) -> list[tuple[object, str, int, int | None]]:
    """(filter_fn, what, weight bits, weights per scale; None: one scale per row) of decoder_quant_configs."""
    return [(selected, what, bits, group_size if bits == 4 else None)
            for _, selected, what, bits in decoder_quant_configs(model, group_size, embedding_bits, weight_bits)]


def quantize_decoder(model, group_size: int, embedding_bits: int, weight_bits: int = 4,
                     weight_method: str = "rtn") -> None:
    """Post-training 8da4w (decoder_quant_configs), in place."""
    quiet_python_logs()
    from torchao.quantization import quantize_

    for config, selected, *_ in decoder_quant_configs(model, group_size, embedding_bits, weight_bits, weight_method):
        quantize_(model, config, filter_fn=selected)


def prepare_decoder_qat(model, group_size: int, embedding_bits: int, weight_bits: int = 4) -> None:
    """Fake-quantize the weights (and activations) as quantize_decoder will, for training, in place."""
    quiet_python_logs()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    for config, selected, *_ in decoder_quant_configs(model, group_size, embedding_bits, weight_bits):
        quantize_(model, QATConfig(config, step="prepare"), filter_fn=selected)


def convert_decoder_qat(model, group_size: int, embedding_bits: int, weight_bits: int = 4) -> None:
    """The QAT-trained model to the real 8da4w layers quantize_decoder would give, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    # The filters are made again from the prepared model: prepare swapped its Linears and Embeddings
    # for fake-quantized subclasses of them, so isinstance still holds and the head is found anew.
    for config, selected, *_ in decoder_quant_configs(model, group_size, embedding_bits, weight_bits):
        quantize_(model, QATConfig(config, step="convert"), filter_fn=selected)


def export_decoder(model, path: Path, max_seq_len: int, metadata: dict) -> dict:
    """Export a decoder with its static KV cache to a `.pte` lowered to XNNPACK.

    One method, `forward(input_ids (1, n), cache_position (n,)) -> logits (1, n, vocab)`, with n
    from 1 to max_seq_len - 1: a prompt is prefilled in one call, then one token per call. The KV
    cache lives in the program's mutable buffers. `metadata` (max_seq_len, bos/eos ids, ...) is
    stored as constant methods, where ExecuTorch's LLM runner looks for it."""
    quiet_python_logs()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    from edgekit.formats.decoder_attention import exporting_with
    from edgekit.formats.xnnpack_rewrites import pool_means

    tokens = torch.export.Dim("tokens", min=1, max=max_seq_len - 1)
    example = min(4, max_seq_len - 1)
    # Grouped-query attention on the cache in place (formats/decoder_attention.py), not repeat_kv copies.
    with exporting_with(model):
        wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len)
        # strict=True: the non-strict trace of transformers' static cache fails in run_decompositions
        # with a dynamic token count (torch 2.13, transformers 5.24).
        program = wrapper.export(input_ids=torch.ones(1, example, dtype=torch.long),
                                 cache_position=torch.arange(example),
                                 dynamic_shapes={"input_ids": {1: tokens}, "cache_position": {0: tokens}}, strict=True)
    # RMSNorm's mean of squares over the last dim as XNNPACK's global average pooling (the rewrite the
    # classifiers' lowering uses): left as it was, each mean ran on the portable kernels and split a
    # delegate call in two (tinylm, 4 layers and 9 norms: 43 delegate calls a step, 34 after).
    rewrites = pool_means(program.graph_module)
    # _check_ir_validity=False: the cache update (index_copy_ into a mutable buffer) is not core ATen.
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                       constant_methods=metadata)
    # do_quant_fusion_and_const_prop folds the 4-bit embedding's dequantize into quantized_decomposed's
    # embedding_4bit kernel (executorch.kernels.quantized); alloc_graph_input=False: inputs are the caller's.
    # run_reinplace_pass: the cache update (index_put) writes into the cache's buffer, instead of into a
    # copy of it that is then copied back, twice the cache's bytes per layer at every step.
    executorch_program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, do_quant_fusion_and_const_prop=True, run_reinplace_pass=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    Path(path).write_bytes(executorch_program.buffer)
    # Read after the fusion: before it, the embedding's dequantize and lookup are two ops of their own.
    outside = [op for op in _ops_outside_delegate(executorch_program.exported_program().graph_module)
               if op != "alloc"]  # the memory plan's allocations, not ops
    plan = executorch_program.executorch_program.execution_plan
    forward = next(p for p in plan if p.name == "forward")
    return {"delegates": sorted({d.id for d in forward.delegates}), "ops_outside_delegate": outside,
            "rewrites": rewrites, "planned_memory_bytes": sum(forward.non_const_buffer_sizes)}


def emulate_generation(core, artifact: Path, prompt_ids, new_tokens: int, max_seq_len: int,
                       eos_id: int | None = None) -> tuple[dict, int | None]:
    """A decoder `.pte` generating on the emulated core, in the native runner a Linux board gets."""
    return generate_native_pte(core, artifact, prompt_ids, new_tokens, max_seq_len, eos_id)
