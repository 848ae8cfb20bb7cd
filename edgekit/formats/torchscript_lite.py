"""TorchScript Lite `.ptl` for PyTorch Mobile's lite interpreter, int8 on QNNPACK.

FX graph mode quantization with QNNPACK's qconfig: QNNPACK is the int8 kernel
library the lite interpreter uses on ARM (it runs on x86 too, so the host
validates the same kernels). The quantized model is traced and saved for the
lite interpreter. Also here: the lint (float aten:: compute ops beside the
quantized:: ones), torch.profiler's per-op profile; the emulated board cannot
run it (the lite interpreter needs torch on the device).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgekit.errors import FormatUnsupported, UsageError
from edgekit.formats.base import (
    QuantConfig,
    finding,
    layer_selected,
    op_row,
    quantizable_layers,
)
from edgekit.quiet import native_stderr_captured, quiet_python_logs

NAME = "torchscript-lite"
DISPLAY_NAME = "TorchScript Lite .ptl (QNNPACK)"
BACKEND = "qnnpack"
SUFFIX = ".ptl"
DEVICE_RUNTIME = "torch-lite-interpreter"
DEVICE_RUNTIME_MB = None  # the lite interpreter is torch's: the Python runtime measured here runs there too
OFF_FAST_PATH_IS_SCALAR = False  # float leftovers run on torch's vectorized kernels
ARM_KERNELS = "qnnpack"  # on ARM (validate/cost.py): its quantized ops run on PyTorch's QNNPACK
NATIVE_TOOLS = ()
GUEST_WHEELS: dict[str, str | None] = {}  # not run there (EMULATION_UNSUPPORTED)
PREFERRED_NATIVE_TOOL = None
EMULATION_UNSUPPORTED = ("the lite interpreter needs torch on the device; no CPU build of torch for aarch64 "
                         "is available")
SCHEMES = ("static", "dynamic")
UNSUPPORTED_WHY = {"fp16": "QNNPACK has no fp16 kernels; use --format executorch or onnx for fp16"}
# torch.ao observers for activations: MinMax and the histogram observer that
# QNNPACK's default qconfig uses.
CALIBRATIONS = ("minmax", "histogram")
DEFAULT_CALIBRATION = "histogram"


def available() -> str | None:
    return None  # torch is a dependency of edgekit


def _use_qnnpack() -> None:
    """Quantized ops dispatch on the global engine; set it before quantizing and running."""
    import torch

    torch.backends.quantized.engine = "qnnpack"


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
    import torch

    quiet_python_logs()
    _use_qnnpack()
    if cfg.scheme == "dynamic":
        return _quantize_dynamic(model, cfg)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with _fx_limits("trace", traced=False):
        prepared = prepare_fx(copy.deepcopy(model), _qconfig_mapping(model, cfg), tuple(example_inputs))
    _drop_integer_observers(prepared, example_inputs)
    with torch.no_grad():
        for batch in calib_batches:
            prepared(*batch)
    with _fx_limits("convert"):
        return _contiguous_before_clamps(convert_fx(prepared))


def _contiguous_before_clamps(converted):
    """QNNPACK's quantized ReLU6 / hardtanh / clamp (torch 2.13) read a channels_last input as if
    it were contiguous: the values come back in NCHW strides while the data is still in NHWC
    order, so every channel is scrambled (plain ReLU is exact either way). QNNPACK's quantized
    conv writes channels_last, so a ReLU6 after a conv that FX did not fuse with it (a conv
    written as F.conv2d inside a module, as EfficientNet-Lite's "same"-padding conv is) got
    scrambled input: pretrained EfficientNet-Lite0's .ptl kept the float top-1 on 0 % of the photo
    crops (logit cosine 0.04). Each such op now reads a contiguous copy of its input (a no-op when
    it already is): 56-62 % and cosine 0.89-0.92 (GPTQ or nearest weights). What it still loses is
    FX's own: that conv is neither folded with its batch norm nor its ReLU6 observed after the
    clamp (README, "Lite0's .ptl")."""
    import torch
    import torch.nn.functional as F

    clamp_modules = (torch.nn.ReLU6, torch.nn.Hardtanh, torch.ao.nn.quantized.ReLU6)
    clamp_functions = {F.relu6, F.hardtanh, torch.clamp, torch.clip, F.hardtanh_}
    graph = converted.graph
    changed = False
    for node in list(graph.nodes):
        hit = (node.op == "call_module" and isinstance(converted.get_submodule(node.target), clamp_modules)) or \
            (node.op == "call_function" and node.target in clamp_functions) or \
            (node.op == "call_method" and node.target in ("clamp", "clip", "clamp_", "clip_"))
        if hit and node.args:
            with graph.inserting_before(node):
                contiguous = graph.call_method("contiguous", (node.args[0],))
            node.args = (contiguous, *node.args[1:])
            changed = True
    if changed:
        graph.lint()
        converted.recompile()
    return converted


@contextlib.contextmanager
def _fx_limits(step: str, traced: bool = True):
    """Say clearly what FX graph-mode quantization cannot do, and which formats cope.

    Symbolic tracing (prepare_fx) runs the model's Python with proxies instead of tensors, so a
    forward that branches on a tensor's value or shape, or slices by a size (Hugging Face
    transformers do both, and transformers 5 ships no FX tracer), cannot be traced. Once traced,
    FX still lacks quantized forms of some ops (e.g. clamp with one bound)."""
    try:
        yield
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        if traced and not isinstance(e, (RuntimeError, NotImplementedError, AssertionError)):
            raise  # not one of FX's limits: a bug, reported as one
        if not traced:  # anything the user's forward raised under symbolic tracing
            raise FormatUnsupported(
                f"torchscript-lite: FX graph-mode quantization cannot trace this model's forward "
                f"({type(e).__name__}: {first}); static int8 for the lite interpreter needs a forward without "
                "control flow or slicing on tensor values and shapes",
                hint="use --quant dynamic (int8 Linear weights: the lite interpreter's path for transformers), "
                "or --format executorch / --format onnx for static int8",
            ) from e
        raise FormatUnsupported(
            f"torchscript-lite: FX quantization could not {step} this model: {first}",
            hint="the executorch and onnx formats quantize it; use --format executorch or --format onnx",
        ) from e


def _drop_integer_observers(prepared, example_inputs: tuple) -> None:
    """Take out observers that FX put on integer tensors.

    FX shares observers through shape ops, so an attention mask that is
    unsqueezed and cast before use gets observed as int64 (and an observer can't
    histogram, nor convert quantize, integers). Integer index paths must stay
    as they are: one forward pass finds which observers see integers, and they
    are removed from the graph before calibration.
    """
    import torch
    from torch.ao.quantization.observer import ObserverBase

    integer_fed, originals = set(), {}  # observers by identity: FX shares one under several names
    for module in prepared.modules():
        if isinstance(module, ObserverBase):
            originals[module] = module.forward

            def passthrough(x, _module=module, _forward=module.forward):
                if isinstance(x, torch.Tensor) and not x.is_floating_point():
                    integer_fed.add(_module)
                    return x
                return _forward(x)

            module.forward = passthrough
    with torch.no_grad():
        prepared(*example_inputs)
    for module, forward in originals.items():
        module.forward = forward
    if not integer_fed:
        return
    for node in list(prepared.graph.nodes):
        if node.op == "call_module" and prepared.get_submodule(node.target) in integer_fed:
            node.replace_all_uses_with(node.args[0])
            prepared.graph.erase_node(node)
    prepared.recompile()


def _qconfig(cfg: QuantConfig):
    import torch
    from torch.ao.quantization import observer
    from torch.ao.quantization.qconfig import QConfig

    # reduce_range=False: QNNPACK has no int16 accumulator overflow issue (that's FBGEMM's).
    act_obs = observer.MinMaxObserver if (cfg.calibration or DEFAULT_CALIBRATION) == "minmax" else observer.HistogramObserver
    # Weights on -127..127 (scale max |w| / 127), not torch's default -128..127 (max |w| / 127.5): the
    # grid XNNPACK's, ONNX Runtime's and LiteRT's symmetric int8 weights use, so weights rounded
    # once on the float model (formats/rounding.py) keep their levels in this format too.
    grid = {"dtype": torch.qint8, "quant_min": -127, "quant_max": 127}
    weight = (
        observer.PerChannelMinMaxObserver.with_args(qscheme=torch.per_channel_symmetric, **grid)
        if cfg.per_channel
        else observer.MinMaxObserver.with_args(qscheme=torch.per_tensor_symmetric, **grid)
    )
    return QConfig(activation=act_obs.with_args(dtype=torch.quint8, reduce_range=False), weight=weight)


def _qconfig_mapping(model, cfg: QuantConfig):
    """Global qconfig, or only the selected layers; skipped layers stay float."""
    import torch
    from torch.ao.quantization import QConfigMapping

    qconfig = _qconfig(cfg)
    mapping = QConfigMapping()
    if cfg.only_layers is None:
        mapping.set_global(qconfig)
    # Embeddings take integer indices: an activation observer there would try to
    # histogram int64 token ids. Integer index paths stay float, as in the other backends.
    for embedding in (torch.nn.Embedding, torch.nn.EmbeddingBag):
        mapping.set_object_type(embedding, None)
    for name in quantizable_layers(model):
        if not layer_selected(_scopes(name), cfg):
            mapping.set_module_name(name, None)
        elif cfg.only_layers is not None:
            mapping.set_module_name(name, qconfig)
    return mapping


def _scopes(name: str) -> list[str]:
    """'blocks.0.fc' is inside 'blocks', 'blocks.0' and 'blocks.0.fc'."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _quantize_dynamic(model, cfg: QuantConfig):
    import torch
    from torch.ao.quantization import quantize_dynamic
    from torch.ao.quantization.qconfig import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
    )

    qconfig = per_channel_dynamic_qconfig if cfg.per_channel else default_dynamic_qconfig
    dynamic_types = (torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU)  # weights int8, activations per call
    spec = {
        name: qconfig
        for name, m in model.named_modules()
        if type(m) in dynamic_types and layer_selected(_scopes(name), cfg)
    }
    if not spec:
        raise UsageError("--quant dynamic: the model has no Linear/LSTM/GRU layers to quantize dynamically",
                         hint="use --quant static for convolutional models")
    return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def export(qmodel, example_inputs: tuple, path: Path) -> dict:
    """Trace, try the mobile optimizer, save for the lite interpreter."""
    import torch

    quiet_python_logs()
    _use_qnnpack()
    with torch.no_grad(), _fx_limits("trace"):
        traced = torch.jit.trace(qmodel, tuple(example_inputs), check_trace=False)
    traced = torch.jit.freeze(traced.eval())
    module, optimizer = _optimize_for_mobile(traced)
    module._save_for_lite_interpreter(str(path))
    from torch.jit.mobile import _export_operator_list, _load_for_lite_interpreter

    ops = sorted(_export_operator_list(_load_for_lite_interpreter(str(path))))
    return {"optimize_for_mobile": optimizer, "operators": ops,
            "quantized_operators": [op for op in ops if op.startswith("quantized::")], "warnings": []}


def _optimize_for_mobile(traced):
    """optimize_for_mobile needs XNNPACK compiled into torch; some torch builds lack it.

    Recorded as skipped rather than failing: the artifact is still valid, only
    missing the optimizer's fusions.
    """
    import torch
    from torch.utils.mobile_optimizer import optimize_for_mobile

    if not torch._C._is_xnnpack_enabled():
        return traced, "skipped: this torch build has no XNNPACK, which optimize_for_mobile needs"
    try:
        return optimize_for_mobile(traced), "applied"
    except Exception as e:
        return traced, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


class LiteRunner:
    """A `.ptl` loaded by the lite interpreter, the runtime PyTorch Mobile ships."""

    runtime = "torch-lite-interpreter"
    validated_as = None  # QNNPACK runs on the host too: the same kernels as on the device

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from torch.jit.mobile import _load_for_lite_interpreter

        _use_qnnpack()
        if threads:
            torch.set_num_threads(threads)  # the lite interpreter runs on torch's intra-op pool
        self._module = _load_for_lite_interpreter(str(path))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            out = self._module(*[torch.as_tensor(np.ascontiguousarray(a)) for a in inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().numpy().copy() for o in outs]


def load(path: Path, threads: int | None = None) -> LiteRunner:
    return LiteRunner(path, threads)


def load_for_validation(path: Path) -> LiteRunner:
    return LiteRunner(path)


# ---------------------------------------------------------------- lint

# aten ops that cost real arithmetic: left in float beside quantized:: ones they matter.
COMPUTE_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "linear", "addmm", "mm", "matmul", "bmm", "lstm", "gru",
               "conv_transpose2d", "embedding_bag", "einsum", "baddbmm"}
ADVICE = ("runs in float in the lite interpreter: make it a quantizable module (nn.Conv2d/nn.Linear, not a "
          "functional call) so FX quantization replaces it with a quantized:: op")


def lint(path: Path) -> dict:
    """Compute ops left as aten:: float ops next to quantized:: ones (QNNPACK takes only the
    quantized:: ones). The lite interpreter takes any shape its graph takes: no dynamic-shape finding."""
    from torch.jit.mobile import _export_operator_list, _load_for_lite_interpreter

    ops = _export_operator_list(_load_for_lite_interpreter(str(path)))
    findings = []
    for full in sorted(ops):
        ns, _, rest = full.partition("::")
        op = rest.split(".")[0]
        if ns == "aten" and op in COMPUTE_OPS:
            findings.append(finding(op, 1, ADVICE, "lite interpreter, float"))
    return {"fast_path": "QNNPACK quantized ops", "findings": findings}


# ---------------------------------------------------------------- profile


def profile(path: Path, batch: list[np.ndarray], runs: int, threads: int) -> list[dict]:
    """torch.profiler around the lite interpreter: per aten/quantized op."""
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter

    module = _load_for_lite_interpreter(str(path))
    inputs = [torch.as_tensor(np.ascontiguousarray(a)) for a in batch]
    # Kineto writes "USDT: ... profiler_start/stop" to fd 2 from C++ at start and stop: not the user's.
    with native_stderr_captured(), torch.no_grad(), \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            module(*inputs)
    return [op_row(avg.key, avg.self_cpu_time_total / 1000.0, avg.count, runs)
            for avg in prof.key_averages() if avg.key.startswith(("aten::", "quantized::"))]
