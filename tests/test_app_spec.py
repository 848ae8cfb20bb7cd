"""App directories (edgekit.toml) and building the float model from a spec.

Every mistake in an app file is a UsageError naming the file and the key; the
model loads with weights_only=True and each app's modules stay its own.
"""

from __future__ import annotations

import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.model.app import APP_FILE, ModelSpec, build_module, load_app
from edgekit.errors import UsageError
from edgekit.model.spec import InputSpec

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "sample_apps" / "digits"

# A valid app file; tests change one thing at a time.
VALID_TOML = """\
name = "tiny"

[model]
factory = "model:build"
weights = "weights.pt"

[[inputs]]
name = "x"
shape = [1, 4]
dtype = "float32"

[data]
calib = "calib.npz"
"""

TINY_MODEL = """\
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Linear(4, 2)
"""


def write_app(root: Path, toml: str | None = VALID_TOML, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if toml is not None:
        (root / APP_FILE).write_text(toml)
    for name, text in (files or {}).items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def app_error(root: Path) -> str:
    """The message of the UsageError load_app raises; asserts it names the app file."""
    with pytest.raises(UsageError) as info:
        load_app(root)
    message = info.value.message
    assert str(root / APP_FILE) in message
    return message


def spec_for(root: Path, factory: str = "model:build", weights: Path | None = None) -> ModelSpec:
    return ModelSpec(name="t", factory=factory, inputs=(InputSpec("x", (1, 4)),), root=root, weights=weights)


# ---------------------------------------------------------------- load_app: the sample


def test_load_app_digits_sample():
    spec = load_app(DIGITS)
    assert spec.name == "digits"
    assert spec.factory == "model:build_model"
    assert spec.inputs == (InputSpec("x", (1, 1, 8, 8), "float32"),)
    assert spec.root == DIGITS.resolve()
    assert spec.source == str(DIGITS / APP_FILE)
    for key, filename in [("weights", "weights.pt"), ("calib", "calib.npz"), ("eval", "eval.npz"), ("train", "train.npz")]:
        path = getattr(spec, key)
        assert path is not None and path.is_absolute(), key
        assert path == (DIGITS / filename).resolve()
        assert path.is_file(), path


def test_load_app_relative_dir_resolves_against_the_app_not_cwd(tmp_path, monkeypatch):
    write_app(tmp_path / "apps" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    spec = load_app("apps/tiny")
    monkeypatch.chdir(elsewhere)  # resolved paths must not depend on cwd any more
    assert spec.root == (tmp_path / "apps" / "tiny").resolve()
    assert spec.weights == (tmp_path / "apps" / "tiny" / "weights.pt").resolve()
    assert spec.calib == (tmp_path / "apps" / "tiny" / "calib.npz").resolve()
    assert spec.eval is None and spec.train is None


def test_load_app_name_defaults_to_the_directory_name(tmp_path):
    root = write_app(tmp_path / "my-app", VALID_TOML.replace('name = "tiny"\n', ""))
    assert load_app(root).name == "my-app"


def test_load_app_input_dtype_defaults_to_float32_and_name_to_x(tmp_path):
    toml = VALID_TOML.replace('name = "x"\n', "").replace('dtype = "float32"\n', "")
    spec = load_app(write_app(tmp_path / "a", toml))
    assert spec.inputs == (InputSpec("x", (1, 4), "float32"),)


def test_load_app_several_inputs(tmp_path):
    toml = VALID_TOML + '\n[[inputs]]\nname = "mask"\nshape = [1, 4]\ndtype = "int64"\n'
    # [[inputs]] after [data] is still a top-level array of tables
    spec = load_app(write_app(tmp_path / "a", toml))
    assert spec.inputs == (InputSpec("x", (1, 4), "float32"), InputSpec("mask", (1, 4), "int64"))


def test_with_overrides_and_to_json(tmp_path):
    spec = load_app(write_app(tmp_path / "a"))
    other = tmp_path / "other.npz"
    changed = spec.with_overrides(calib=other, eval=None, weights=None)
    assert changed.calib == other
    assert changed.weights == spec.weights  # None does not override
    doc = changed.to_json()
    assert doc["data"] == {"train": None, "calib": str(other), "eval": None}
    assert doc["inputs"] == [{"name": "x", "shape": [1, 4], "dtype": "float32"}]
    assert doc["source"] == str(tmp_path / "a" / APP_FILE)


# ---------------------------------------------------------------- load_app: mistakes


def test_load_app_missing_dir_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match=re.escape(f"app directory '{missing}' does not exist")):
        load_app(missing)


def test_load_app_file_instead_of_dir(tmp_path):
    f = tmp_path / "edgekit.toml"
    f.write_text(VALID_TOML)
    with pytest.raises(UsageError, match="does not exist"):
        load_app(f)


def test_load_app_dir_without_app_file(tmp_path):
    with pytest.raises(UsageError, match=re.escape(f"'{tmp_path}' has no {APP_FILE}")):
        load_app(tmp_path)


def test_load_app_invalid_toml(tmp_path):
    message = app_error(write_app(tmp_path, "name = \n[model\n"))
    assert "not valid TOML" in message


def test_load_app_unknown_top_level_key(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('name = "tiny"', 'name = "tiny"\nversion = 2')))
    assert "unknown key 'version'" in message


def test_load_app_unknown_model_key(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('weights = "weights.pt"', 'weight = "weights.pt"')))
    assert "unknown key 'model.weight'" in message


def test_load_app_unknown_data_key(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace("calib =", "calibration =")))
    assert "unknown key 'data.calibration'" in message


def test_load_app_unknown_input_key(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('dtype = "float32"', 'type = "float32"')))
    assert "unknown key 'inputs[0].type'" in message


def test_load_app_data_not_a_table(tmp_path):
    toml = VALID_TOML.replace('name = "tiny"', 'name = "tiny"\ndata = "calib.npz"').split("[data]")[0]
    message = app_error(write_app(tmp_path, toml))
    assert "'data' must be a table" in message


def test_load_app_missing_model_table(tmp_path):
    toml = 'name = "tiny"\n\n[[inputs]]\nname = "x"\nshape = [1, 4]\n'
    message = app_error(write_app(tmp_path, toml))
    assert "missing table [model]" in message


def test_load_app_model_not_a_table(tmp_path):
    toml = 'name = "tiny"\nmodel = "model:build"\n\n[[inputs]]\nshape = [1, 4]\n'
    assert "missing table [model]" in app_error(write_app(tmp_path, toml))


def test_load_app_missing_factory(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('factory = "model:build"\n', "")))
    assert "missing 'model.factory'" in message


@pytest.mark.parametrize("value", ['""', "3"])
def test_load_app_factory_not_a_string(tmp_path, value):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('"model:build"', value)))
    assert "'model.factory' must be a non-empty string" in message


@pytest.mark.parametrize("value", ['"cat"', "[]", '["cat", 3]'])
def test_load_app_labels_must_be_class_names(tmp_path, value):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('factory = "model:build"\n',
                                                               f'factory = "model:build"\nlabels = {value}\n')))
    assert "'model.labels' must be a non-empty list of class names" in message


def test_load_app_digits_names_its_classes():
    assert load_app(DIGITS).labels == tuple(str(d) for d in range(10))


def test_load_app_weights_not_a_string(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('"weights.pt"', "1")))
    assert "'model.weights' must be a non-empty string" in message


def test_load_app_missing_inputs(tmp_path):
    toml = re.sub(r"\[\[inputs\]\].*?\n\n", "", VALID_TOML, flags=re.S)
    assert "[[inputs]]" not in toml
    message = app_error(write_app(tmp_path, toml))
    assert "missing [[inputs]]" in message


@pytest.mark.parametrize("shape", ["[1, 0]", "[-1, 4]", "[]", '"1,4"', "4", "[1.5, 4]", '["1", "4"]'])
def test_load_app_bad_shape(tmp_path, shape):
    message = app_error(write_app(tmp_path, VALID_TOML.replace("shape = [1, 4]", f"shape = {shape}")))
    assert "'inputs[0].shape' must be a list of positive integers" in message


def test_load_app_missing_shape(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace("shape = [1, 4]\n", "")))
    assert "'inputs[0].shape' must be a list of positive integers, got None" in message


def test_load_app_bad_shape_in_second_input_names_its_index(tmp_path):
    toml = VALID_TOML + '\n[[inputs]]\nname = "m"\nshape = [1, 0]\n'
    assert "'inputs[1].shape'" in app_error(write_app(tmp_path, toml))


def test_load_app_unknown_dtype(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('dtype = "float32"', 'dtype = "int8"')))
    assert "'inputs[0].dtype': unknown dtype 'int8'" in message


def test_load_app_empty_input_name(tmp_path):
    message = app_error(write_app(tmp_path, VALID_TOML.replace('name = "x"', 'name = ""')))
    assert "'inputs[0].name' must be a non-empty string" in message


# ---------------------------------------------------------------- build_module


def test_build_module_returns_module_in_eval_mode(tmp_path):
    root = write_app(tmp_path, files={"model.py": "from torch import nn\ndef build():\n    return nn.Dropout(0.5).train()\n"})
    model = build_module(spec_for(root))
    assert isinstance(model, nn.Dropout)
    assert model.training is False


def test_build_module_digits_sample_loads_its_weights():
    spec = load_app(DIGITS)
    model = build_module(spec)
    assert model.training is False
    saved = torch.load(spec.weights, weights_only=True)
    assert torch.equal(model.state_dict()["classifier.weight"], saved["classifier.weight"])
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_build_module_loads_state_dict(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    saved = nn.Linear(4, 2)
    with torch.no_grad():
        saved.weight.fill_(0.25)
        saved.bias.copy_(torch.tensor([1.0, -2.0]))
    torch.save(saved.state_dict(), tmp_path / "weights.pt")
    model = build_module(spec_for(root, weights=tmp_path / "weights.pt"))
    assert torch.equal(model.weight, torch.full((2, 4), 0.25))
    assert torch.equal(model.bias, torch.tensor([1.0, -2.0]))


def test_build_module_without_weights_keeps_factory_init(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    model = build_module(spec_for(root))
    torch.manual_seed(0)
    assert torch.equal(model.weight, nn.Linear(4, 2).weight)


def test_build_module_loads_checkpoint_with_state_dict(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    saved = nn.Linear(4, 2)
    with torch.no_grad():
        saved.weight.fill_(-3.0)
    torch.save({"epoch": 7, "state_dict": saved.state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    model = build_module(spec_for(root, weights=tmp_path / "ckpt.pt"))
    assert torch.equal(model.weight, torch.full((2, 4), -3.0))


def test_build_module_weights_of_another_model(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).state_dict(), weights)
    with pytest.raises(UsageError, match=re.escape(f"weights file '{weights}' does not match the model")):
        build_module(spec_for(root, weights=weights))


def test_build_module_weights_with_missing_keys(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "partial.pt"
    torch.save({"weight": torch.zeros(2, 4)}, weights)
    with pytest.raises(UsageError, match=r"does not match the model.*bias") as info:
        build_module(spec_for(root, weights=weights))
    assert str(weights) in info.value.message


def test_build_module_weights_file_missing(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "nope.pt"
    with pytest.raises(UsageError, match=re.escape(f"weights file '{weights}' does not exist")):
        build_module(spec_for(root, weights=weights))


def test_build_module_weights_file_not_torch(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "junk.pt"
    weights.write_bytes(b"this is not a torch file")
    with pytest.raises(UsageError, match=re.escape(f"weights file '{weights}'")):
        build_module(spec_for(root, weights=weights))


def test_build_module_weights_holding_a_tensor_not_a_dict(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "t.pt"
    torch.save(torch.zeros(3), weights)
    with pytest.raises(UsageError, match="holds a Tensor, not a state_dict"):
        build_module(spec_for(root, weights=weights))


# Loading these with plain pickle would run make_state(): it even returns weights
# that fit the tiny model, so only weights_only=True keeps the build from working.
_CALLS: list[str] = []


def _make_state():
    _CALLS.append("ran")
    return {"weight": torch.ones(2, 4), "bias": torch.ones(2)}


class _Payload:
    def __reduce__(self):
        return (_make_state, ())


def test_build_module_refuses_to_unpickle_code(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "evil.pt"
    torch.save(_Payload(), weights)
    _CALLS.clear()
    with pytest.raises(UsageError, match=r"holds a pickled Python object \(test_app_spec\._make_state\), which could "
                                          r"run code when loaded; edgekit refused it and nothing in the file ran") as info:
        build_module(spec_for(root, weights=weights))
    assert str(weights) in info.value.message
    assert _CALLS == []
    assert "weights_only=False" not in str(info.value)  # torch's advice to unpickle anyway is never passed on
    assert "torch.save(model.state_dict(), path)" in info.value.hint


class SomeClass:
    def __init__(self):
        self.weight = torch.zeros(2, 4)


def test_build_module_refuses_arbitrary_object(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    weights = tmp_path / "obj.pt"
    torch.save(SomeClass(), weights)
    with pytest.raises(UsageError, match=re.escape(f"weights file '{weights}' holds a pickled Python object")):
        build_module(spec_for(root, weights=weights))


def test_build_module_factory_missing_attr(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    with pytest.raises(UsageError, match=r"model spec 'model:nope': module 'model' has no callable 'nope'"):
        build_module(spec_for(root, factory="model:nope"))


def test_build_module_factory_not_callable(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL + "\nbuild_me = 42\n"})
    with pytest.raises(UsageError, match=r"model spec 'model:build_me': module 'model' has no callable 'build_me'"):
        build_module(spec_for(root, factory="model:build_me"))


@pytest.mark.parametrize("factory", ["model", "model:", ":build"])
def test_build_module_factory_not_module_colon_callable(tmp_path, factory):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    with pytest.raises(UsageError, match=re.escape(f"model spec '{factory}' is not MODULE:FACTORY")):
        build_module(spec_for(root, factory=factory))


def test_build_module_app_module_file_missing(tmp_path):
    root = write_app(tmp_path, files={"model.py": TINY_MODEL})
    with pytest.raises(UsageError, match=r"model.factory names 'nets', but .*nets\.py does not exist"):
        build_module(spec_for(root, factory="nets:build"))


def test_build_module_factory_returns_non_module(tmp_path):
    root = write_app(tmp_path, files={"model.py": "def build():\n    return {'not': 'a module'}\n"})
    with pytest.raises(UsageError, match=r"model factory 'model:build' returned dict, not a torch.nn.Module"):
        build_module(spec_for(root))


def test_build_module_factory_raises(tmp_path):
    root = write_app(tmp_path, files={"model.py": "def build():\n    raise ValueError('bad config 123')\n"})
    with pytest.raises(UsageError, match=r"model factory 'model:build' raised ValueError: bad config 123") as info:
        build_module(spec_for(root))
    assert isinstance(info.value.__cause__, ValueError)


def test_build_module_module_raises_at_import(tmp_path):
    root = write_app(tmp_path, files={"model.py": "raise RuntimeError('boom at import')\n"})
    with pytest.raises(UsageError, match=r"model\.py: importing it raised RuntimeError: boom at import") as info:
        build_module(spec_for(root))
    assert str(root / "model.py") in info.value.message
    assert str(root) not in sys.path  # the app dir is taken off sys.path again


def test_build_module_app_module_can_import_a_sibling(tmp_path):
    helper = f"ek_helper_{uuid.uuid4().hex}"
    root = write_app(
        tmp_path,
        files={
            f"{helper}.py": "WIDTH = 5\n",
            "model.py": f"from torch import nn\nimport {helper}\ndef build():\n    return nn.Linear({helper}.WIDTH, 1)\n",
        },
    )
    try:
        model = build_module(spec_for(root))
    finally:
        sys.modules.pop(helper, None)
    assert model.in_features == 5
    assert str(root) not in sys.path


def test_build_module_app_module_in_a_subpackage_path(tmp_path):
    root = write_app(tmp_path)
    (root / "nets").mkdir()
    (root / "nets" / "small.py").write_text("from torch import nn\ndef make():\n    return nn.Linear(4, 3)\n")
    model = build_module(spec_for(root, factory="nets.small:make"))
    assert model.out_features == 3


def test_two_apps_with_same_module_name_stay_apart(tmp_path):
    a = write_app(tmp_path / "a", files={"model.py": "from torch import nn\ndef build():\n    return nn.Linear(4, 2)\n"})
    b = write_app(tmp_path / "b", files={"model.py": "from torch import nn\ndef build():\n    return nn.Tanh()\n"})
    model_a = build_module(spec_for(a))
    model_b = build_module(spec_for(b))
    assert isinstance(model_a, nn.Linear)
    assert isinstance(model_b, nn.Tanh)
    # and a bare `import model` elsewhere is not hijacked by either app
    assert getattr(sys.modules.get("model"), "build", None) is None
    # asking for app a again still gives app a's model
    assert isinstance(build_module(spec_for(a)), nn.Linear)


def test_two_apps_with_same_module_and_factory_names_give_different_outputs(tmp_path):
    body = "import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n        return x * {k}\ndef build():\n    return M()\n"
    a = write_app(tmp_path / "a", files={"model.py": body.format(k=2)})
    b = write_app(tmp_path / "b", files={"model.py": body.format(k=3)})
    x = torch.ones(1, 4)
    out_a, out_b = build_module(spec_for(a))(x), build_module(spec_for(b))(x)
    assert torch.equal(out_a, torch.full((1, 4), 2.0))
    assert torch.equal(out_b, torch.full((1, 4), 3.0))
    assert type(build_module(spec_for(a))) is not type(build_module(spec_for(b)))


# ---------------------------------------------------------------- build_module without an app dir


def test_build_module_unimportable_module():
    spec = ModelSpec(name="t", factory="no_such_module_xyz:f", inputs=(InputSpec("x", (1, 4)),), root=None)
    with pytest.raises(UsageError, match=r"model spec 'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"):
        build_module(spec)


def test_build_module_imports_user_module_from_cwd(tmp_path, monkeypatch):
    name = f"ek_user_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\ndef make():\n    return nn.Linear(4, 6).train()\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    try:
        model = build_module(ModelSpec(name="t", factory=f"{name}:make", inputs=(InputSpec("x", (1, 4)),)))
    finally:
        sys.modules.pop(name, None)
    assert isinstance(model, nn.Linear) and model.out_features == 6
    assert model.training is False
    assert sys.path == path_before  # cwd was only on sys.path while importing


def test_build_module_user_module_raising_at_import(tmp_path, monkeypatch):
    name = f"ek_user_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("raise KeyError('nope')\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(UsageError, match=rf"importing '{name}' raised KeyError"):
            build_module(ModelSpec(name="t", factory=f"{name}:make", inputs=(InputSpec("x", (1, 4)),)))
    finally:
        sys.modules.pop(name, None)


def test_build_module_user_module_with_missing_dependency(tmp_path, monkeypatch):
    name = f"ek_user_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(UsageError, match=rf"importing '{name}' failed: No module named 'no_such_dependency_xyz'"):
            build_module(ModelSpec(name="t", factory=f"{name}:make", inputs=(InputSpec("x", (1, 4)),)))
    finally:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------- regressions


def test_two_apps_with_same_sibling_module_name_stay_apart(tmp_path):
    helper = f"ek_helper_{uuid.uuid4().hex}"
    model_py = f"from torch import nn\nimport {helper}\ndef build():\n    return nn.Linear({helper}.WIDTH, 1)\n"
    a = write_app(tmp_path / "a", files={f"{helper}.py": "WIDTH = 2\n", "model.py": model_py})
    b = write_app(tmp_path / "b", files={f"{helper}.py": "WIDTH = 3\n", "model.py": model_py})
    try:
        assert build_module(spec_for(a)).in_features == 2
        assert build_module(spec_for(b)).in_features == 3
    finally:
        sys.modules.pop(helper, None)


def test_app_module_may_define_a_dataclass(tmp_path):
    body = """\
    from __future__ import annotations
    from dataclasses import dataclass
    from torch import nn

    @dataclass
    class Config:
        width: int = 4

    def build():
        return nn.Linear(Config().width, 1)
    """
    root = write_app(tmp_path, files={"model.py": body})
    assert build_module(spec_for(root)).in_features == 4


def test_load_app_inputs_entry_not_a_table(tmp_path):
    toml = 'inputs = [1]\n[model]\nfactory = "model:build"\n'
    assert "inputs[0]" in app_error(write_app(tmp_path, toml))


def test_load_app_duplicate_input_names(tmp_path):
    toml = VALID_TOML + '\n[[inputs]]\nname = "x"\nshape = [1, 4]\n'
    assert "inputs[1].name" in app_error(write_app(tmp_path, toml))


def test_build_module_missing_dependency_sharing_a_prefix(tmp_path, monkeypatch):
    name = f"ek_user_{uuid.uuid4().hex}"
    (tmp_path / f"{name}_net.py").write_text(f"import {name}\n")  # depends on '{name}', which is missing
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(UsageError, match=rf"importing '{name}_net' failed"):
            build_module(ModelSpec(name="t", factory=f"{name}_net:make", inputs=(InputSpec("x", (1, 4)),)))
    finally:
        sys.modules.pop(f"{name}_net", None)
