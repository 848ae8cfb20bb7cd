"""Input specs from the command line: `--input-shape 1,3,32,32` and
`--input NAME:SHAPE[:DTYPE]`; every bad form is a UsageError naming the flag."""

from __future__ import annotations

import pytest

from edgekit.errors import EXIT_USAGE, UsageError
from edgekit.model.spec import DTYPES, InputSpec, check_dtype, parse_input, parse_shape, resolve_inputs

# ---------------------------------------------------------------- parse_shape


@pytest.mark.parametrize(
    "text, shape",
    [
        ("1,3,32,32", (1, 3, 32, 32)),
        ("1x3x32x32", (1, 3, 32, 32)),
        (" 1, 3, 32, 32 ", (1, 3, 32, 32)),
        ("1×3×32×32", (1, 3, 32, 32)),
        ("16", (16,)),
        ("2x128", (2, 128)),
    ],
)
def test_parse_shape_accepts_commas_and_x(text, shape):
    assert parse_shape(text, "--input-shape") == shape


@pytest.mark.parametrize("text", ["", "   ", "a,b", "1,b", "0,3", "1,0", "-1,3", "1x-3", "1.5,2"])
def test_parse_shape_rejects_bad_shapes_naming_the_flag(text):
    with pytest.raises(UsageError, match=r"^--some-flag: '.*' is not a shape") as info:
        parse_shape(text, "--some-flag")
    assert info.value.exit_code == EXIT_USAGE
    assert f"'{text}'" in info.value.message
    # the hint shows the fix with the same flag
    assert info.value.hint is not None and "--some-flag 1,3,32,32" in info.value.hint
    assert "fix:" in str(info.value)


# ---------------------------------------------------------------- parse_input


def test_parse_input_with_dtype():
    spec = parse_input("ids:1x128:int64")
    assert spec == InputSpec("ids", (1, 128), "int64")
    assert spec.is_float is False


def test_parse_input_dtype_defaults_to_float32():
    spec = parse_input("pixels:1,3,32,32")
    assert spec == InputSpec("pixels", (1, 3, 32, 32), "float32")
    assert spec.is_float is True


@pytest.mark.parametrize("dtype", DTYPES)
def test_parse_input_accepts_every_known_dtype(dtype):
    assert parse_input(f"a:2x4:{dtype}").dtype == dtype


@pytest.mark.parametrize("text", ["ids", "1bad:1x2", "my-ids:1x2", ":1x2", "ids:1x2:int64:extra", ""])
def test_parse_input_rejects_malformed(text):
    with pytest.raises(UsageError, match=r"^--input: '.*' is not NAME:SHAPE\[:DTYPE\]"):
        parse_input(text)


def test_parse_input_rejects_unknown_dtype():
    with pytest.raises(UsageError, match=r"^--input: unknown dtype 'int8'") as info:
        parse_input("ids:1x2:int8")
    assert "int64" in info.value.hint  # lists the allowed dtypes


@pytest.mark.parametrize("text", ["ids:0x2", "ids:1xa", "ids::int64"])
def test_parse_input_rejects_bad_shape_naming_the_flag(text):
    with pytest.raises(UsageError, match=r"^--input: '.*' is not a shape"):
        parse_input(text)


def test_check_dtype_names_where():
    check_dtype("float16", "somewhere")  # no error
    with pytest.raises(UsageError, match=r"^somewhere: unknown dtype 'double'"):
        check_dtype("double", "somewhere")


# ---------------------------------------------------------------- InputSpec


def test_input_spec_properties_and_json():
    spec = InputSpec("x", (4, 3, 8, 8), "float16")
    assert spec.batch == 4
    assert spec.sample_shape == (3, 8, 8)
    assert spec.is_float
    assert spec.to_json() == {"name": "x", "shape": [4, 3, 8, 8], "dtype": "float16"}
    assert not InputSpec("m", (1, 8), "bool").is_float


# ---------------------------------------------------------------- resolve_inputs


def test_resolve_inputs_input_shape_gives_one_float_input_named_x():
    assert resolve_inputs("1,3,32,32", ()) == (InputSpec("x", (1, 3, 32, 32), "float32"),)


def test_resolve_inputs_input_shape_error_names_its_flag():
    with pytest.raises(UsageError, match=r"^--input-shape: '0,3' is not a shape"):
        resolve_inputs("0,3", ())


def test_resolve_inputs_named_inputs_keep_their_order():
    specs = resolve_inputs(None, ["input_ids:1x128:int64", "attention_mask:1x128:int64", "scale:1x1"])
    assert [s.name for s in specs] == ["input_ids", "attention_mask", "scale"]
    assert [s.dtype for s in specs] == ["int64", "int64", "float32"]
    assert all(s.shape[0] == 1 for s in specs)


def test_resolve_inputs_both_forms_is_an_error():
    with pytest.raises(UsageError, match="--input-shape and --input were both given"):
        resolve_inputs("1,3,32,32", ["ids:1x128:int64"])


def test_resolve_inputs_duplicate_names_is_an_error():
    with pytest.raises(UsageError, match="an input name is given twice") as info:
        resolve_inputs(None, ("ids:1x128:int64", "mask:1x128:int64", "ids:1x64:int64"))
    assert "ids, mask, ids" in info.value.hint


def test_resolve_inputs_nothing_given_is_empty():
    # the caller (api.build) turns this into "--model needs the input shape"
    assert resolve_inputs(None, ()) == ()
    assert resolve_inputs("", []) == ()
