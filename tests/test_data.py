"""Calibration/eval data: `.npz` files checked against the input specs, stand-in
random data, and batching into the exact static input shapes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.model.data import Dataset, batches, example_inputs, load_npz, random_dataset
from edgekit.errors import UsageError
from edgekit.model.spec import InputSpec

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "sample_apps" / "digits"

IMG = (InputSpec("img", (1, 1, 8, 8), "float32"),)
TOKENS = (InputSpec("ids", (1, 6), "int64"), InputSpec("mask", (1, 6), "int64"))


def save(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def rng_images(n: int, shape=(1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(n).random((n, *shape)).astype(np.float32)


# ---------------------------------------------------------------- load_npz: accepted forms


def test_load_digits_eval_split():
    data = load_npz(DIGITS / "eval.npz", (InputSpec("x", (1, 1, 8, 8)),), "--eval", need_labels=True)
    assert len(data) > 0
    assert data.arrays["x"].shape == (len(data), 1, 8, 8)
    assert data.arrays["x"].dtype == np.float32
    assert data.labels.shape == (len(data),) and data.labels.dtype == np.int64
    assert data.source == str(DIGITS / "eval.npz")


def test_single_input_accepts_array_named_x(tmp_path):
    x = rng_images(5)
    y = np.arange(5)
    data = load_npz(save(tmp_path, x=x, y=y), IMG, "--calib", need_labels=False)
    assert list(data.arrays) == ["img"]  # keyed by the input's name
    np.testing.assert_array_equal(data.arrays["img"], x)
    np.testing.assert_array_equal(data.labels, y)
    assert len(data) == 5


def test_single_input_accepts_array_named_as_input_and_prefers_it(tmp_path):
    img = rng_images(4)
    data = load_npz(save(tmp_path, img=img, x=np.zeros((4, 1, 8, 8), np.float32)), IMG, "--calib", False)
    np.testing.assert_array_equal(data.arrays["img"], img)
    assert data.labels is None


def test_samples_stored_with_batch_dim_are_reshaped(tmp_path):
    x = np.random.default_rng(0).random((3, 1, 1, 8, 8)).astype(np.float32)
    data = load_npz(save(tmp_path, x=x), IMG, "--calib", False)
    assert data.arrays["img"].shape == (3, 1, 8, 8)
    np.testing.assert_array_equal(data.arrays["img"], x[:, 0])


def test_samples_with_batch_dim_rejected_when_batch_is_not_one(tmp_path):
    spec = (InputSpec("x", (2, 3), "float32"),)
    with pytest.raises(UsageError, match=r"has shape \(4, 2, 3\)"):
        load_npz(save(tmp_path, x=np.zeros((4, 2, 3), np.float32)), spec, "--calib", False)


def test_float_input_given_integer_data_is_cast(tmp_path):
    data = load_npz(save(tmp_path, x=np.arange(2 * 64).reshape(2, 1, 8, 8)), IMG, "--calib", False)
    assert data.arrays["img"].dtype == np.float32
    assert data.arrays["img"][1, 0, 0, 0] == 64.0


def test_float16_input_is_cast(tmp_path):
    spec = (InputSpec("x", (1, 3), "float16"),)
    data = load_npz(save(tmp_path, x=np.ones((2, 3), np.float64)), spec, "--calib", False)
    assert data.arrays["x"].dtype == np.float16


def test_integer_inputs_by_name(tmp_path):
    ids = np.arange(12, dtype=np.int32).reshape(2, 6)
    mask = np.ones((2, 6), dtype=bool)
    data = load_npz(save(tmp_path, ids=ids, mask=mask, y=np.array([0, 1], np.int32)), TOKENS, "--eval", True)
    assert data.arrays["ids"].dtype == np.int64 and data.arrays["mask"].dtype == np.int64
    np.testing.assert_array_equal(data.arrays["ids"], ids)
    np.testing.assert_array_equal(data.arrays["mask"], np.ones((2, 6)))
    assert data.labels.dtype == np.int64


def test_bool_input(tmp_path):
    spec = (InputSpec("m", (1, 3), "bool"),)
    data = load_npz(save(tmp_path, m=np.array([[0, 1, 2]])), spec, "--calib", False)
    assert data.arrays["m"].dtype == np.bool_
    assert data.arrays["m"].tolist() == [[False, True, True]]


# ---------------------------------------------------------------- load_npz: mistakes


def test_wrong_sample_shape_names_file_array_and_both_shapes(tmp_path):
    path = save(tmp_path, x=np.zeros((5, 8, 8), np.float32))
    with pytest.raises(UsageError) as info:
        load_npz(path, IMG, "--calib", False)
    message = info.value.message
    assert message.startswith("--calib: ")
    assert f"'{path}'" in message
    assert "array 'x' has shape (5, 8, 8)" in message
    assert "input 'img' takes samples of shape (1, 8, 8)" in message
    assert "(input shape (1, 1, 8, 8))" in message
    assert "(N, 1, 8, 8)" in info.value.hint


def test_missing_array_lists_the_arrays_present(tmp_path):
    path = save(tmp_path, pixels=rng_images(2), y=np.arange(2))
    with pytest.raises(UsageError, match=re.escape(f"'{path}' has no array 'img' (it has: pixels, y)")):
        load_npz(path, IMG, "--calib", False)


def test_x_fallback_only_for_a_single_input(tmp_path):
    path = save(tmp_path, x=np.zeros((2, 6), np.int64), mask=np.zeros((2, 6), np.int64))
    with pytest.raises(UsageError, match=re.escape("has no array 'ids' (it has: mask, x)")):
        load_npz(path, TOKENS, "--calib", False)


def test_mismatched_counts_between_input_and_labels(tmp_path):
    path = save(tmp_path, x=rng_images(5), y=np.arange(4))
    with pytest.raises(UsageError, match=re.escape(f"'{path}': arrays hold different numbers of samples")) as info:
        load_npz(path, IMG, "--eval", True)
    assert "'img': 5" in info.value.message and "'y': 4" in info.value.message


def test_mismatched_counts_checked_even_without_need_labels(tmp_path):
    with pytest.raises(UsageError, match="different numbers of samples"):
        load_npz(save(tmp_path, x=rng_images(5), y=np.arange(6)), IMG, "--calib", False)


def test_mismatched_counts_between_inputs(tmp_path):
    path = save(tmp_path, ids=np.zeros((3, 6), np.int64), mask=np.zeros((2, 6), np.int64))
    with pytest.raises(UsageError, match=r"different numbers of samples: \{'ids': 3, 'mask': 2\}"):
        load_npz(path, TOKENS, "--calib", False)


@pytest.mark.parametrize(
    "y", [np.zeros((4, 1), np.int64), np.zeros(4, np.float32), np.array(["a", "b", "c", "d"])], ids=["2d", "float", "str"]
)
def test_labels_must_be_1d_integers(tmp_path, y):
    path = save(tmp_path, x=rng_images(4), y=y)
    with pytest.raises(UsageError, match=re.escape(f"'{path}' array 'y' must be 1-D integer class labels")):
        load_npz(path, IMG, "--eval", True)


def test_need_labels_without_y(tmp_path):
    path = save(tmp_path, x=rng_images(3))
    with pytest.raises(UsageError, match=re.escape(f"--eval: '{path}' has no labels array 'y'")):
        load_npz(path, IMG, "--eval", need_labels=True)
    # calibration needs no labels: the same file is fine there
    assert load_npz(path, IMG, "--calib", need_labels=False).labels is None


def test_integer_input_given_float_data(tmp_path):
    path = save(tmp_path, ids=np.zeros((2, 6), np.float32), mask=np.zeros((2, 6), np.int64))
    with pytest.raises(UsageError, match=r"array 'ids' has dtype float32, but input 'ids' is int64") as info:
        load_npz(path, TOKENS, "--calib", False)
    assert str(path) in info.value.message


def test_float_input_given_string_data(tmp_path):
    path = save(tmp_path, x=np.array([["a", "b", "c"]]))
    with pytest.raises(UsageError, match=r"array 'x' has dtype <U1, input 'x' is float32"):
        load_npz(path, (InputSpec("x", (1, 3)),), "--calib", False)


def test_no_samples(tmp_path):
    path = save(tmp_path, x=np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match=re.escape(f"'{path}' holds no samples")):
        load_npz(path, IMG, "--calib", False)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(UsageError, match=re.escape(f"--calib: '{path}' does not exist")):
        load_npz(path, IMG, "--calib", False)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_npz(tmp_path, IMG, "--calib", False)


@pytest.mark.parametrize("content", [b"hello, not numpy", b"PK\x03\x04broken zip"], ids=["text", "bad-zip"])
def test_non_npz_file(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(f"--calib: '{path}' is not a readable .npz file")) as info:
        load_npz(path, IMG, "--calib", False)
    assert "numpy.savez" in info.value.hint


def test_plain_npy_file_is_not_npz(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, rng_images(2))
    with pytest.raises(UsageError, match="is not a readable .npz file"):
        load_npz(path, IMG, "--calib", False)


def test_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UsageError, match="is not a readable .npz file"):
        load_npz(path, IMG, "--calib", False)


# ---------------------------------------------------------------- random_dataset


def test_random_dataset_shapes_and_dtypes():
    specs = (
        InputSpec("img", (1, 3, 4, 4), "float32"),
        InputSpec("half", (1, 2), "float16"),
        InputSpec("ids", (1, 7), "int64"),
        InputSpec("pos", (1, 7), "int32"),
        InputSpec("mask", (1, 7), "bool"),
    )
    data = random_dataset(specs, 50)
    assert len(data) == 50
    assert data.labels is None and data.source == "random"
    assert list(data.arrays) == ["img", "half", "ids", "pos", "mask"]
    for s in specs:
        a = data.arrays[s.name]
        assert a.shape == (50, *s.sample_shape), s.name
        assert a.dtype == np.dtype(s.dtype), s.name
    for name in ("ids", "pos"):
        assert set(np.unique(data.arrays[name]).tolist()) == {0, 1}
    assert data.arrays["mask"].any() and not data.arrays["mask"].all()
    img = data.arrays["img"]
    assert img.min() < 0 < img.max()  # standard normal, not 0/1
    assert len(np.unique(img)) > 100


def test_random_dataset_is_seeded():
    specs = (InputSpec("x", (1, 3)),)
    np.testing.assert_array_equal(random_dataset(specs, 4, seed=7).arrays["x"], random_dataset(specs, 4, seed=7).arrays["x"])
    assert not np.array_equal(random_dataset(specs, 4, seed=7).arrays["x"], random_dataset(specs, 4, seed=8).arrays["x"])


# ---------------------------------------------------------------- batches and example_inputs


def test_batches_group_by_spec_batch_and_drop_remainder():
    specs = (InputSpec("x", (4, 3), "float32"),)
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = list(batches(Dataset({"x": x}, None, "t"), specs))
    assert len(out) == 2
    for i, batch in enumerate(out):
        assert isinstance(batch, tuple) and len(batch) == 1
        (t,) = batch
        assert isinstance(t, torch.Tensor)
        assert tuple(t.shape) == (4, 3)
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), x[4 * i : 4 * i + 4])


def test_batches_exact_multiple_keeps_every_sample():
    specs = (InputSpec("x", (2, 1), "float32"),)
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    out = list(batches(Dataset({"x": x}, None, "t"), specs))
    assert [b[0].flatten().tolist() for b in out] == [[0, 1], [2, 3], [4, 5]]


def test_batches_fewer_samples_than_a_batch_yields_nothing():
    specs = (InputSpec("x", (4, 3), "float32"),)
    assert list(batches(Dataset({"x": np.zeros((3, 3), np.float32)}, None, "t"), specs)) == []


def test_batches_batch_one_with_multi_dim_input(tmp_path):
    x = np.random.default_rng(0).random((3, 1, 1, 8, 8)).astype(np.float32)
    data = load_npz(save(tmp_path, x=x), IMG, "--calib", False)
    out = list(batches(data, IMG))
    assert len(out) == 3
    assert all(tuple(b[0].shape) == (1, 1, 8, 8) for b in out)
    np.testing.assert_array_equal(out[2][0].numpy(), x[2])


def test_batches_multi_input_in_spec_order():
    specs = (InputSpec("mask", (2, 4), "int64"), InputSpec("ids", (2, 4), "int64"))
    data = Dataset({"ids": np.full((4, 4), 7, np.int64), "mask": np.ones((4, 4), np.int64)}, None, "t")
    out = list(batches(data, specs))
    assert len(out) == 2
    mask, ids = out[0]
    assert mask.dtype == torch.int64 and ids.dtype == torch.int64
    assert tuple(mask.shape) == (2, 4) and tuple(ids.shape) == (2, 4)
    assert torch.all(mask == 1) and torch.all(ids == 7)


def test_example_inputs_have_the_spec_shapes_and_dtypes():
    specs = (InputSpec("x", (2, 3, 4), "float32"), InputSpec("ids", (2, 5), "int64"))
    x, ids = example_inputs(specs)
    assert tuple(x.shape) == (2, 3, 4) and x.dtype == torch.float32
    assert tuple(ids.shape) == (2, 5) and ids.dtype == torch.int64


# ---------------------------------------------------------------- Dataset.take


def test_take_truncates_arrays_and_labels():
    data = Dataset({"a": np.arange(10), "b": np.arange(10) * 2}, np.arange(10) + 100, "f.npz")
    part = data.take(3)
    assert len(part) == 3
    assert part.arrays["a"].tolist() == [0, 1, 2]
    assert part.arrays["b"].tolist() == [0, 2, 4]
    assert part.labels.tolist() == [100, 101, 102]
    assert part.source == "f.npz"
    assert len(data) == 10  # the original is untouched


def test_take_without_labels():
    part = Dataset({"a": np.arange(5)}, None, "random").take(2)
    assert len(part) == 2 and part.labels is None


@pytest.mark.parametrize("n", [None, 10, 11, 1000])
def test_take_all_or_more_returns_everything(n):
    data = Dataset({"a": np.arange(10)}, np.arange(10), "f")
    assert data.take(n) is data
