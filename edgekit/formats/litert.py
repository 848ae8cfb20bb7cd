"""LiteRT `.tflite` (TensorFlow Lite's successor), static int8 through litert-torch's own PT2E path.

The float model is captured with torch.export, annotated by litert-torch's
PT2EQuantizer (wrapped so integer and mask tensors stay float: formats/pt2e.py),
calibrated and converted with torchao's `convert_pt2e(fold_quantize=False)` (the
folded form fails in litert-torch's lowering), then `litert_torch.convert` with the
quantizer in its QuantConfig writes a fully int8 flatbuffer: int8 inputs and
outputs with their scales, conv/linear/pooling in int8. Inputs arrive as float32
here and on the device: the runner quantizes them with the model's own input
scale and dequantizes the outputs, as an app on the board would.

Validated in `ai_edge_litert`'s interpreter. tflite-runtime 2.14 (the last
release of that package) cannot be used beside numpy 2 and does not read every
current converter's file: on a board, install ai-edge-litert (or tflite-runtime
with numpy < 2).

An optional extra (`pip install 'edgekit[litert]'`: litert-torch pulls jax and
LiteRT's converter, ~750 MB); without it the format names the extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgekit.emulator.check import run_in_guest_python
from edgekit.errors import FormatUnsupported
from edgekit.formats.base import QuantConfig, finding, torch_export
from edgekit.formats.pt2e import (
    GraphRunner,
    integer_safe,
    record_report,
    report_of,
    with_calibration,
)
from edgekit.quiet import native_stderr_captured, quiet_python_logs
from edgekit.runtime.runner import litert_input, litert_output

NAME = "litert"
DISPLAY_NAME = "LiteRT .tflite (int8)"
SUFFIX = ".tflite"
BACKEND = "litert"
DEVICE_RUNTIME = "litert"
SCHEMES = ("static",)
UNSUPPORTED_WHY = {"dynamic": "edgekit builds LiteRT as static int8 only; use --format executorch or onnx",
                   "fp16": "edgekit builds LiteRT as static int8 only; use --format executorch or onnx"}
# litert-torch's PT2E observers: the same two torchao offers the ExecuTorch format.
CALIBRATIONS = ("minmax", "histogram", "percentile")  # formats/pt2e.py: with_calibration
DEFAULT_CALIBRATION = "histogram"
INSTALL_HINT = "pip install 'edgekit[litert]' (litert-torch and ai-edge-litert), then build again"
DEVICE_RUNTIME_MB = None  # ai-edge-litert's Python interpreter runs on the device as on this host
OFF_FAST_PATH_IS_SCALAR = False  # float ops run on LiteRT's optimized (XNNPACK) float kernels
ARM_KERNELS = "xnnpack"  # on ARM (validate/cost.py): LiteRT applies its XNNPACK delegate by default
NATIVE_TOOLS = ("benchmark_model",)
PREFERRED_NATIVE_TOOL = None
# The newest aarch64 ai-edge-litert for Python 3.11 is 1.4.0 (the host's 2.3 has no aarch64 wheel);
# it reads what litert-torch 0.10 writes. It needs numpy only at run time.
GUEST_WHEELS = {"ai-edge-litert": "1.4.0"}
# Quiet by default: litert-torch prints a progress tree on stdout, the converter logs via absl (C++).
_QUIET_ENV = {"LITERT_TORCH_SHOW_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _quiet_env() -> None:
    """Before TensorFlow loads (litert-torch imports it): its log level and the converter's progress."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def available() -> str | None:
    import importlib.util

    missing = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs the litert extra ({', '.join(missing)} not installed)"
    return None


@dataclass
class LiteRtQuantized:
    """A converted PT2E graph and the quantizer that annotated it (litert_torch.convert needs both)."""

    module: object
    quantizer: object


def quantize(model, example_inputs: tuple, calib_batches: Iterable[tuple], cfg: QuantConfig) -> LiteRtQuantized:
    quiet_python_logs()  # before the imports: torchao logs its optional CUDA kernels while it is imported
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # litert-torch imports TensorFlow, whose native code writes to fd 2 as it loads: absl's
    # "All log messages before absl::InitializeLog()" and, on CPUs with AVX-512, oneDNN's note.
    _quiet_env()
    with native_stderr_captured():
        quantizer = _litert_quantizer(cfg)
    graph = torch_export(model, example_inputs).module()
    safe = integer_safe(quantizer, cfg.skip_layers)
    prepared = prepare_pt2e(graph, safe)
    with torch.no_grad():
        for batch in calib_batches:
            prepared(*batch)
    converted = convert_pt2e(prepared, fold_quantize=False)  # litert-torch lowers the unfolded form only
    converted.training = False  # litert-torch warns about "training mode" from this flag alone
    record_report(converted, safe)
    return LiteRtQuantized(converted, quantizer)


# ---------------------------------------------------------------- quantization-aware training (train/qat.py)


def prepare_qat(model, example_inputs: tuple, cfg: QuantConfig):
    """The model's graph with fake quantization where `quantize` puts int8 (the same quantizer and
    float layers), to fine-tune: torchao's prepare_qat_pt2e with litert-torch's QAT config (its
    activations observed by moving-average min/max fake quantization). The model is not changed."""
    import copy

    quiet_python_logs()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    _quiet_env()
    with native_stderr_captured():
        quantizer = _litert_quantizer(cfg, qat=True)
    graph = torch_export(copy.deepcopy(model), example_inputs).module()
    # Batch norms folded into their convs first, as prepare_pt2e does for post-training, and the
    # quantizer's QAT-only conv+bn annotators left out (_litert_quantizer): litert-torch 0.10's hand
    # torchao 0.18 a function where it takes a module (ValueError), whether or not a batch norm is
    # there. train/qat.py keeps batch norm on its running statistics, so the folded conv is the same.
    _fuse_conv_bn_(graph)
    safe = integer_safe(quantizer, cfg.skip_layers)
    prepared = prepare_qat_pt2e(graph, safe)
    prepared.meta[_QAT_KEY] = (quantizer, safe)
    return prepared


_QAT_KEY = "edgekit_qat"


def convert_qat(prepared) -> LiteRtQuantized:
    """The fine-tuned graph as `quantize` returns its own (what `export` converts)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    quantizer, safe = prepared.meta[_QAT_KEY]
    converted = convert_pt2e(prepared, fold_quantize=False)
    converted.training = False
    record_report(converted, safe)
    return LiteRtQuantized(converted, quantizer)


def _litert_quantizer(cfg: QuantConfig, tutorial: bool = False, qat: bool = False):
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=cfg.per_channel, is_qat=qat)
    if tutorial:  # litert-torch's README: the global symmetric config, nothing else
        return PT2EQuantizer().set_global(config)
    if not qat:  # QAT's ranges are its fake quantizers' (train/qat.py), not a calibration method's
        config = with_calibration(config, cfg.calibration or DEFAULT_CALIBRATION)
    # The float layers (mixed precision, the accuracy fallback) are left out by integer_safe:
    # PT2EQuantizer.set_module_name takes no None ("quantization_config == None is not supported").
    quantizer = PT2EQuantizer().set_global(config)
    if qat:  # its batch norms are folded before annotation (prepare_qat)
        quantizer.STATIC_QAT_ONLY_OPS = [op for op in PT2EQuantizer.STATIC_QAT_ONLY_OPS if "bn" not in op]
    return quantizer


SCREENED_AS = GraphRunner.validated_as  # how build/quality.py judges a try with `screen`


def screen(qmodel: LiteRtQuantized) -> GraphRunner:
    """The quantized graph before conversion, to judge a try without converting it (build/quality.py)."""
    return GraphRunner(qmodel.module)


def pt2e_quantizer(cfg: QuantConfig, tutorial: bool = False):
    """The PT2E quantizer this format annotates with (`edgekit debug` replays it); `tutorial`:
    litert-torch's documented default, for comparison."""
    quantizer = _litert_quantizer(cfg, tutorial)
    return quantizer if tutorial else integer_safe(quantizer, cfg.skip_layers)


def export(qmodel: LiteRtQuantized, example_inputs: tuple, path: Path) -> dict:
    _quiet_env()
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig as LiteRtQuantConfig

    with native_stderr_captured():
        try:
            # enable_x64: int64 inputs (token ids) stay int64, as the manifest and the runner feed them.
            edge = litert_torch.convert(qmodel.module, tuple(example_inputs),
                                        quant_config=LiteRtQuantConfig(pt2e_quantizer=qmodel.quantizer),
                                        enable_x64=True)
        except Exception as e:  # noqa: BLE001 - the converter's own limits surface as assorted errors
            # e.g. on Hugging Face MobileNetV2, its NHWC layout pass: "Attempting to convert non-NHWC
            # compatible node to NHWC: dequantize_per_tensor_11" (litert-torch 0.10's layout pass)
            raise FormatUnsupported(
                f"litert-torch could not convert this model: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}",
                hint="--format executorch or --format onnx build it; --format all skips LiteRT and builds the others",
            ) from e
        edge.export(str(path))
    ops = operators(Path(path))
    return {"operators": sorted(set(ops)), "quantize_ops": ops.count("QUANTIZE"), "dequantize_ops": ops.count("DEQUANTIZE"),
            "quantizer": report_of(qmodel.module), "warnings": []}


def operators(path: Path) -> list[str]:
    """The builtin op of every operator in the flatbuffer, in graph order (LiteRT's own schema reader)."""
    return [name for name, _, _ in _walk(path)]


def _walk(path: Path):
    """(builtin op name, operator, its subgraph) for every operator, read with LiteRT's own schema."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            # Builtin codes above 127 live in builtinCode; older files keep them in the deprecated field.
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            yield names.get(builtin, str(builtin)), op, graph


# ---------------------------------------------------------------- the host runtime


class LiteRtRunner:
    """A `.tflite` in ai_edge_litert's interpreter. Float inputs are quantized with each input's own
    scale and zero point, outputs dequantized (the device runner's own helpers: host, board and
    emulator do the same arithmetic): the caller sees the model's float interface."""

    runtime = "litert"
    validated_as = None

    def __init__(self, path: Path, threads: int | None = None):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interp = Interpreter(model_path=str(path), num_threads=threads or 1)
            self._interp.allocate_tensors()
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for detail, value in zip(self._inputs, inputs):
            self._interp.set_tensor(detail["index"], litert_input(np, value, detail))
        self._interp.invoke()
        return [litert_output(np, self._interp.get_tensor(d["index"]), d) for d in self._outputs]


def load(path: Path, threads: int | None = None) -> LiteRtRunner:
    return LiteRtRunner(path, threads)


def load_for_validation(path: Path) -> LiteRtRunner:
    return LiteRtRunner(path)


# ---------------------------------------------------------------- lint

# Ops that do arithmetic worth int8: left in float they matter.
COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D"}
ADVICE = ("runs in float in LiteRT (between DEQUANTIZE and QUANTIZE): litert-torch's PT2E quantizer covers conv, "
          "linear, add, max/avg pooling; other ops stay float")


def lint(path: Path) -> dict:
    """Compute ops that read a float (dequantized) tensor instead of an int8 one."""
    from ai_edge_litert import schema_py_generated as schema

    counts: dict[str, int] = {}
    for name, op, graph in _walk(path):
        first = graph.tensors[op.inputs[0]] if len(op.inputs) else None
        if name in COMPUTE and first is not None and first.type == schema.TensorType.FLOAT32:
            counts[name] = counts.get(name, 0) + 1
    return {"fast_path": "LiteRT int8 kernels",
            "findings": [finding(op, n, ADVICE, "LiteRT, float") for op, n in sorted(counts.items())]}


PROFILE_UNSUPPORTED = "ai_edge_litert's Python interpreter has no per-op profiler; use benchmark_model on the device"


def profile(path: Path, batch: list[np.ndarray], runs: int, threads: int) -> list[dict]:
    raise NotImplementedError(PROFILE_UNSUPPORTED)


# ---------------------------------------------------------------- the emulated board


def emulate(core, artifact: Path, samples: list[list[np.ndarray]], input_names: list[str]):
    """In ai-edge-litert's interpreter under the guest's python (its aarch64 wheel, as on a Pi)."""

    return run_in_guest_python(core, artifact, samples, input_names, "artifact", DEVICE_RUNTIME)
