"""The model spec: what to build, from an app directory or from command-line options.

An app directory holds `edgekit.toml` (see sample_apps/digits) naming a model
factory, its trained weights, its inputs and its data. A user's own model needs
no app dir: `--model pkg.module:factory --input-shape 1,3,32,32`.

Loading is safe by default: weights load with `torch.load(weights_only=True)`;
the only code that runs is the module the user names.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.compare import TASKS
from edgekit.errors import UsageError
from edgekit.manifest import TEXT_GENERATION  # decoder apps (edgekit/llm): [model] task, pretrained; [data] eval, train text
from edgekit.model.spec import InputSpec, check_dtype

APP_FILE = "edgekit.toml"
_APP_KEYS = {"name", "model", "inputs", "data", "recipe"}
_MODEL_KEYS = {"factory", "weights", "task", "labels"}
_DECODER_MODEL_KEYS = {"task", "pretrained"}
_INPUT_KEYS = {"name", "shape", "dtype"}
_DATA_KEYS = {"train", "calib", "eval"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str  # "module:callable"
    inputs: tuple[InputSpec, ...]
    root: Path | None = None  # app dir the factory module lives in; None: import normally
    weights: Path | None = None
    calib: Path | None = None
    eval: Path | None = None
    train: Path | None = None
    source: str = "options"  # the edgekit.toml path, or "options"
    task: str = "auto"  # what the first output is: edgekit.compare.TASKS (class scores or not)
    from_app: frozenset[str] = frozenset()  # which of weights/calib/eval/train came from edgekit.toml
    recipe: dict | None = None  # the app's own build recipe, as written ([recipe] in edgekit.toml; edgekit.recipe reads it)
    labels: tuple[str, ...] | None = None  # class names, in output order: the server's top_k names them

    def with_overrides(self, **paths: Path | None) -> "ModelSpec":
        """Command-line paths (--weights, --calib, --eval) win over the app file."""
        given = {k: v for k, v in paths.items() if v is not None}
        return replace(self, **given, from_app=self.from_app - set(given))

    def origin(self, key: str) -> str:
        """Where a file path came from, as the user wrote it: `--calib`, or `data.calib in APP/edgekit.toml`."""
        if key in self.from_app:
            table = "model" if key == "weights" else "data"
            return f"{table}.{key} in {self.source}"
        return f"--{key}"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "factory": self.factory,
            "source": self.source,
            "weights": str(self.weights) if self.weights else None,
            "inputs": [s.to_json() for s in self.inputs],
            "task": self.task,
            **({"labels": list(self.labels)} if self.labels else {}),
            "data": {k: str(getattr(self, k)) if getattr(self, k) else None for k in ("train", "calib", "eval")},
        }


# ---------------------------------------------------------------- app dirs


def load_app(app_dir: str | Path) -> ModelSpec:
    """Read `APP_DIR/edgekit.toml` into a ModelSpec; every mistake names the file and key."""
    root = Path(app_dir)
    if not root.is_dir():
        raise UsageError(
            f"app directory '{app_dir}' does not exist",
            hint="pass a directory holding edgekit.toml (e.g. sample_apps/digits), "
            "or --model module:factory --input-shape ... for a model without one",
        )
    path = root / APP_FILE
    if not path.is_file():
        raise UsageError(f"'{root}' has no {APP_FILE}", hint="see sample_apps/digits/edgekit.toml for the format")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    _check_keys(doc, _APP_KEYS, path, "")
    model = _table(doc, "model", path)
    if model.get("task") == TEXT_GENERATION:
        raise UsageError(f"{path}: a text-generation app; this command does not take those yet",
                         hint=f"build it with `edgekit build {root}`")
    _check_keys(model, _MODEL_KEYS, path, "model.")
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise UsageError(f"{path}: 'data' must be a table")
    _check_keys(data, _DATA_KEYS, path, "data.")
    if "factory" not in model:
        raise UsageError(f"{path}: missing 'model.factory'", hint='e.g. factory = "model:build_model"')
    return ModelSpec(
        name=str(doc.get("name", root.resolve().name)),
        factory=_str(model["factory"], path, "model.factory"),
        inputs=_inputs(doc.get("inputs"), path),
        root=root.resolve(),
        weights=_rel(root, model.get("weights"), path, "model.weights"),
        calib=_rel(root, data.get("calib"), path, "data.calib"),
        eval=_rel(root, data.get("eval"), path, "data.eval"),
        train=_rel(root, data.get("train"), path, "data.train"),
        source=str(path),
        task=check_task(model.get("task", "auto"), f"{path}: 'model.task'"),
        from_app=frozenset(k for k in ("weights", "calib", "eval", "train")
                           if (model if k == "weights" else data).get(k) is not None),
        recipe=_recipe_table(doc.get("recipe"), path),
        labels=_labels(model.get("labels"), path),
    )


@dataclass(frozen=True)
class DecoderSource:
    """A causal LM to build: its model directory, held-out text, and where that was said."""

    name: str
    model_dir: Path
    eval_text: Path | None = None  # held-out text: perplexity and the agreement prompts
    train_text: Path | None = None
    source: str = "options"  # the edgekit.toml path, or "options"

    def to_json(self) -> dict:
        return {"name": self.name, "task": TEXT_GENERATION, "source": self.source,
                "model_dir": str(self.model_dir),
                "data": {"eval": str(self.eval_text) if self.eval_text else None,
                         "train": str(self.train_text) if self.train_text else None}}


def check_model_dir(model_dir: Path, where: str) -> Path:
    """The directory (or a .gguf file), or a UsageError naming what is missing and how to make it."""
    model_dir = Path(model_dir)
    if model_dir.suffix.lower() == ".gguf" and model_dir.is_file():
        return model_dir  # llama.cpp's single-file format: config, tokenizer and weights (llm/decoder.py)
    if not model_dir.is_dir():
        raise UsageError(f"{where}: '{model_dir}' is not a directory or a .gguf file",
                         hint="pass a Hugging Face model directory (config.json, model.safetensors, "
                              "tokenizer.json), as model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR) write it, "
                              "or a GGUF file")
    for needed, how in (("config.json", "model.save_pretrained(DIR)"),
                        ("tokenizer.json", "tokenizer.save_pretrained(DIR) (a fast tokenizer)")):
        if not (model_dir / needed).is_file():
            raise UsageError(f"{where}: '{model_dir}' has no {needed}", hint=f"write it with {how}")
    if not any(model_dir.glob("*.safetensors")):
        raise UsageError(f"{where}: '{model_dir}' has no .safetensors weights",
                         hint="edgekit reads only safetensors (no pickled code): "
                              "model.save_pretrained(DIR, safe_serialization=True)")
    return model_dir


def load_decoder_app(app_dir: str | Path) -> DecoderSource | None:
    """A text-generation app's DecoderSource, or None for any other app."""
    root = Path(app_dir)
    path = root / APP_FILE
    if not path.is_file():
        return None  # load_app says what is wrong
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError:
        return None
    model = doc.get("model")
    if not isinstance(model, dict) or model.get("task") != TEXT_GENERATION:
        return None
    _check_keys(doc, _APP_KEYS - {"inputs", "recipe"}, path, "")
    _check_keys(model, _DECODER_MODEL_KEYS, path, "model.")
    data = doc.get("data", {})
    if not isinstance(data, dict):
        raise UsageError(f"{path}: 'data' must be a table")
    _check_keys(data, {"eval", "train"}, path, "data.")
    if "pretrained" not in model:
        raise UsageError(f"{path}: missing 'model.pretrained'",
                         hint='the Hugging Face model directory, relative to the app: pretrained = "model"')
    model_dir = _rel(root, model["pretrained"], path, "model.pretrained")
    return DecoderSource(name=str(doc.get("name", root.resolve().name)),
                         model_dir=check_model_dir(model_dir, f"{path}: model.pretrained"),
                         eval_text=_rel(root, data.get("eval"), path, "data.eval"),
                         train_text=_rel(root, data.get("train"), path, "data.train"), source=str(path))


def _labels(value, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{path}: 'model.labels' must be a non-empty list of class names",
                         hint='one per output class, in order, e.g. labels = ["cat", "dog"]')
    return tuple(value)


def _recipe_table(table, path: Path) -> dict | None:
    if table is not None and not isinstance(table, dict):
        raise UsageError(f"{path}: 'recipe' must be a table", hint="write it as [recipe] (see the README's build recipes)")
    return table


def check_task(value: Any, where: str) -> str:
    if value not in TASKS:
        raise UsageError(f"{where}: unknown task {value!r}", hint=f"use one of: {', '.join(TASKS)}")
    return value


def _check_keys(table: dict, allowed: set[str], path: Path, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise UsageError(
                f"{path}: unknown key '{prefix}{key}'",
                hint=f"allowed here: {', '.join(sorted(prefix + k for k in allowed))}",
            )


def _table(doc: dict, key: str, path: Path) -> dict:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise UsageError(f"{path}: missing table [{key}]", hint="see sample_apps/digits/edgekit.toml")
    return value


def _str(value: Any, path: Path, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{path}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _rel(root: Path, value: Any, path: Path, key: str) -> Path | None:
    return None if value is None else (root / _str(value, path, key)).resolve()


def _inputs(value: Any, path: Path) -> tuple[InputSpec, ...]:
    if not isinstance(value, list) or not value:
        raise UsageError(
            f"{path}: missing [[inputs]]",
            hint='add one table per input: [[inputs]] name = "x", shape = [1, 1, 8, 8], dtype = "float32"',
        )
    specs = []
    for i, item in enumerate(value):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{path}: '{where}' must be a table", hint='write each input as [[inputs]] name = "x", shape = [...]')
        _check_keys(item, _INPUT_KEYS, path, f"{where}.")
        shape = item.get("shape")
        if not isinstance(shape, list) or not shape or not all(_positive_int(d) for d in shape):
            raise UsageError(f"{path}: '{where}.shape' must be a list of positive integers, got {shape!r}")
        dtype = item.get("dtype", "float32")
        check_dtype(dtype, f"{path}: '{where}.dtype'")
        specs.append(InputSpec(_str(item.get("name", "x"), path, f"{where}.name"), tuple(shape), dtype))
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UsageError(f"{path}: 'inputs[{i}].name' repeats input name '{name}'", hint="each [[inputs]] needs its own name")
    return tuple(specs)


def _positive_int(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d > 0


# ---------------------------------------------------------------- the model


def build_module(spec: ModelSpec):
    """Call the factory, load the weights, and return the float model in eval mode."""
    import contextlib

    import torch

    # The user's code may print ("Loaded pretrained weights for ..."): to stderr, so that
    # `--json` on stdout stays one JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        factory = _import_factory(spec)
        try:
            model = factory()
        except Exception as e:  # the user's own code failed: say where, not ours
            raise UsageError(f"model factory '{spec.factory}' raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"model factory '{spec.factory}' returned {type(model).__name__}, not a torch.nn.Module",
            hint="the factory must return the model (an nn.Module instance)",
        )
    if spec.weights is not None:
        _load_weights(model, spec.weights)
    return model.eval()


def _import_factory(spec: ModelSpec):
    module_name, sep, attr = spec.factory.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"model spec '{spec.factory}' is not MODULE:FACTORY",
            hint="e.g. --model mypkg.models:build_model",
        )
    module = _import_app_module(spec.root, module_name) if spec.root else _import_user_module(module_name, spec.factory)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(
            f"model spec '{spec.factory}': module '{module_name}' has no callable '{attr}'",
            hint=f"define `def {attr}():` returning an nn.Module in {module_name}",
        )
    return factory


def _import_user_module(module_name: str, factory: str):
    """Import from the current directory or PYTHONPATH, as `python -c 'import m'` would."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            raise UsageError(
                f"model spec '{factory}': cannot import module '{module_name}'",
                hint="run from the directory holding it, or add its directory to PYTHONPATH",
            ) from None
        raise UsageError(f"model spec '{factory}': importing '{module_name}' failed: {e}") from e
    except Exception as e:
        raise UsageError(f"model spec '{factory}': importing '{module_name}' raised {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(cwd)


def _import_app_module(root: Path, module_name: str):
    """Import `module_name` from an app dir under a private name.

    Two apps may both have a `model.py` (and a `layers.py` it imports): the app
    module gets a private name, and the sibling modules it imported are taken
    back out of sys.modules afterwards (the app module keeps its references),
    so the next app's `import layers` finds its own file, not this one.
    """
    path = root.joinpath(*module_name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise UsageError(f"{root / APP_FILE}: model.factory names '{module_name}', but {path} does not exist")
    private = f"edgekit_app_{abs(hash(str(root)))}_{module_name.replace('.', '_')}"
    if private in sys.modules:
        return sys.modules[private]
    loader_spec = importlib.util.spec_from_file_location(private, path)
    module = importlib.util.module_from_spec(loader_spec)
    before = set(sys.modules)
    # Registered before it runs, as importlib does: dataclasses and pickling look it up.
    sys.modules[private] = module
    sys.path.insert(0, str(root))
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(private, None)
        raise UsageError(f"{path}: importing it raised {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(root))
        _forget_app_siblings(root, set(sys.modules) - before - {private})
    return module


def _forget_app_siblings(root: Path, names: set[str]) -> None:
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            del sys.modules[name]


def _load_weights(model, path: Path) -> None:
    import pickle

    import torch

    if not path.is_file():
        raise UsageError(f"weights file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(_refused_pickle(path, str(e)), hint=SAVE_STATE_DICT) from None
    except Exception as e:  # truncated, empty, or not a torch file at all
        raise UsageError(f"weights file '{path}' is not a file torch.save wrote ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})", hint=SAVE_STATE_DICT) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state_dict
    if not isinstance(state, dict):
        raise UsageError(f"weights file '{path}' holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UsageError(
            f"weights file '{path}' does not match the model: {str(e).splitlines()[0]} {_first_keys(str(e))}",
            hint="check that --weights belongs to this --model factory",
        ) from None


SAVE_STATE_DICT = "save the weights as a plain state_dict: torch.save(model.state_dict(), path)"


def _refused_pickle(path: Path, message: str) -> str:
    """What torch.load(weights_only=True) refused, in full sentences, without torch's advice to load
    with weights_only=False (that runs whatever code the file holds: edgekit never suggests it)."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found is None:  # not a pickle of objects at all: random or corrupt bytes
        return f"weights file '{path}' is not a file torch.save wrote (its bytes are no pickle torch reads)"
    name = found.group(1)
    if name.startswith("torch.nn.modules.") or name.startswith("torch.nn."):
        return (f"weights file '{path}' holds a whole pickled model ({name}), not a state_dict; edgekit loads "
                "weights only, never pickled objects, so no code in the file ran")
    return (f"weights file '{path}' holds a pickled Python object ({name}), which could run code when loaded; "
            "edgekit refused it and nothing in the file ran")


def _first_keys(message: str) -> str:
    """The first detail line of a load_state_dict error (missing/unexpected keys)."""
    lines = [ln.strip() for ln in message.splitlines()[1:] if ln.strip()]
    return lines[0][:300] if lines else ""
