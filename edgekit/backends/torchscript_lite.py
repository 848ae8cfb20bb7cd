"""TorchScript Lite `.ptl` for PyTorch Mobile's lite interpreter, int8 on QNNPACK.

FX graph mode quantization with QNNPACK's qconfig: QNNPACK is the int8 kernel
library the lite interpreter uses on ARM (it runs on x86 too, so the host
validates the same kernels). The quantized model is traced and saved for the
lite interpreter.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from edgekit.backends.base import QuantConfig, layer_selected, quantizable_layers
from edgekit.errors import FormatUnsupported, UsageError
from edgekit.quiet import quiet_python_logs

FORMAT = "torchscript-lite"
BACKEND = "qnnpack"
SUFFIX = ".ptl"
SCHEMES = ("static", "dynamic")
UNSUPPORTED_WHY = {"fp16": "QNNPACK has no fp16 kernels; use --format executorch or onnx for fp16"}
# torch.ao observers for activations: MinMax and the histogram observer that
# QNNPACK's default qconfig uses.
CALIBRATIONS = ("minmax", "histogram")
DEFAULT_CALIBRATION = "histogram"
# Layers dynamic quantization converts (weights int8, activations quantized per call).
_DYNAMIC_TYPES = {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}


def _use_qnnpack() -> None:
    """Quantized ops dispatch on the global engine; set it before quantizing and running."""
    torch.backends.quantized.engine = "qnnpack"


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig):
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
        return convert_fx(prepared)


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
    from torch.ao.quantization import observer
    from torch.ao.quantization.qconfig import QConfig

    # reduce_range=False: QNNPACK has no int16 accumulator overflow issue (that's FBGEMM's).
    act_obs = observer.MinMaxObserver if (cfg.calibration or DEFAULT_CALIBRATION) == "minmax" else observer.HistogramObserver
    weight = (
        observer.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        if cfg.per_channel
        else observer.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    )
    return QConfig(activation=act_obs.with_args(dtype=torch.quint8, reduce_range=False), weight=weight)


def _qconfig_mapping(model, cfg: QuantConfig):
    """Global qconfig, or only the selected layers; skipped layers stay float."""
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
    from torch.ao.quantization import quantize_dynamic
    from torch.ao.quantization.qconfig import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if cfg.per_channel else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, m in model.named_modules()
        if type(m) in _DYNAMIC_TYPES and layer_selected(_scopes(name), cfg)
    }
    if not spec:
        raise UsageError("--quant dynamic: the model has no Linear/LSTM/GRU layers to quantize dynamically",
                         hint="use --quant static for convolutional models")
    return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def export(qmodel, example_inputs: tuple, path: Path) -> dict:
    """Trace, try the mobile optimizer, save for the lite interpreter."""
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
            "quantized_operators": [op for op in ops if op.startswith("quantized::")]}


def _optimize_for_mobile(traced):
    """optimize_for_mobile needs XNNPACK compiled into torch; some torch builds lack it.

    Recorded as skipped rather than failing: the artifact is still valid, only
    missing the optimizer's fusions.
    """
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

    def __init__(self, path: Path, threads: int | None = None):
        from torch.jit.mobile import _load_for_lite_interpreter

        _use_qnnpack()
        if threads:
            torch.set_num_threads(threads)  # the lite interpreter runs on torch's intra-op pool
        self._module = _load_for_lite_interpreter(str(path))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self._module(*[torch.as_tensor(np.ascontiguousarray(a)) for a in inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().numpy().copy() for o in outs]


def load(path: Path, threads: int | None = None) -> LiteRunner:
    return LiteRunner(path, threads)
