"""Export formats, one module each, all with the same three verbs.

    quantize(model, example_inputs, calib_batches, cfg) -> quantized model
    export(qmodel, example_inputs, path) -> facts about the artifact (dict)
    load(path) -> Runner  (runs the artifact in its real runtime)

Backends are found by format name so that adding one is adding a module.
"""

from __future__ import annotations

import importlib

from edgekit.errors import UsageError

# format name -> module under edgekit.backends
_MODULES = {"executorch": "executorch_xnnpack", "torchscript-lite": "torchscript_lite", "onnx": "onnx_qdq"}

FORMATS = tuple(_MODULES)


def get_backend(fmt: str):
    if fmt not in _MODULES:
        raise UsageError(f"unknown format '{fmt}'", hint=f"choose one of: {', '.join(FORMATS)}")
    return importlib.import_module(f"edgekit.backends.{_MODULES[fmt]}")
