"""What to build: the model, its inputs, its data, and the float reference every check compares with.

    spec.py    input specs (--input-shape, --input NAME:SHAPE:DTYPE)
    app.py     the model spec: an app dir (edgekit.toml) or module:factory; safe weight loading
    data.py    .npz data files, checked once (shapes, dtypes, finite values, label range)
    saved.py   a transformed (pruned, factorised) float model saved safely and rebuilt
    loaded.py  LoadedModel: the float model with its example inputs, data and float outputs, once
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UsageError
from edgekit.model.app import ModelSpec, load_app
from edgekit.model.spec import resolve_inputs


def source(app: str | Path | None = None, *, model: str | None = None, input_shape: str | None = None,
           inputs: tuple[str, ...] | list[str] = (), weights=None, calib=None, eval=None, train=None) -> ModelSpec:
    """What to build: an app directory, or `model` ("module:factory") with its inputs
    (`input_shape` "1,3,32,32" for one float input, or `inputs` ("ids:1x128:int64", ...)).
    The file paths given here override the app file's."""
    overrides = {"weights": _path(weights), "calib": _path(calib), "eval": _path(eval), "train": _path(train)}
    if app is not None and model is not None:
        raise UsageError("both an app directory and --model were given", hint="use one or the other")
    if app is not None:
        if input_shape or inputs:
            raise UsageError("--input-shape/--input apply to --model only", hint="an app dir declares [[inputs]] in edgekit.toml")
        return load_app(app).with_overrides(**overrides)
    if model is not None:
        specs = resolve_inputs(input_shape, tuple(inputs))
        if not specs:
            raise UsageError("--model needs the input shape", hint="add --input-shape 1,3,32,32 (batch first) or --input NAME:SHAPE:DTYPE")
        return ModelSpec(name=_model_name(model), factory=model, inputs=specs, **overrides)
    raise UsageError("nothing to build", hint="pass an app directory (e.g. sample_apps/digits) or --model module:factory")


def _path(value) -> Path | None:
    return Path(value).resolve() if value is not None else None


def _model_name(model: str) -> str:
    """'pkg.nets:make_resnet' -> 'make_resnet': the build dir's name for a --model build."""
    return model.rpartition(":")[2] or model.replace(".", "_")
