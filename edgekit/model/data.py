"""Calibration and evaluation data: `.npz` files checked against the input specs.

A file holds one array per input (named as the input; a single input may also
be called `x`), samples along the first axis, each sample of the input's shape
with or without its batch dimension; `y` holds integer labels where needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import UsageError
from edgekit.model.spec import InputSpec


@dataclass
class Dataset:
    arrays: dict[str, np.ndarray]  # input name -> (N, *sample_shape)
    labels: np.ndarray | None  # (N,) int64, or None
    source: str  # file path, or "random"
    origin: str = ""  # how the user named it: "--eval", "data.eval in app/edgekit.toml"

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def take(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.arrays.items()}, labels, self.source, self.origin)


def load_npz(path: Path, specs: tuple[InputSpec, ...], flag: str, need_labels: bool) -> Dataset:
    """Load and check a data file; every problem names the file, the array and the fix."""
    if not Path(path).is_file():
        raise UsageError(f"{flag}: '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise UsageError(f"{flag}: '{path}' is not a readable .npz file ({e})", hint="write it with numpy.savez") from None
    arrays = {s.name: _input_array(stored, s, path, flag, single=len(specs) == 1) for s in specs}
    counts = {name: len(a) for name, a in arrays.items()}
    labels = _labels(stored, path, flag, need_labels)
    if labels is not None:
        counts["y"] = len(labels)
    if len(set(counts.values())) != 1:
        raise UsageError(f"{flag}: '{path}': arrays hold different numbers of samples: {counts}")
    if next(iter(counts.values())) == 0:
        raise UsageError(f"{flag}: '{path}' holds no samples")
    return Dataset(arrays, labels, str(path), flag)


def _input_array(stored: dict, spec: InputSpec, path: Path, flag: str, single: bool) -> np.ndarray:
    key = spec.name if spec.name in stored else ("x" if single and "x" in stored else None)
    if key is None:
        raise UsageError(
            f"{flag}: '{path}' has no array '{spec.name}' (it has: {', '.join(sorted(stored)) or 'none'})",
            hint=f"save one array per input, e.g. numpy.savez(path, {spec.name}=...)",
        )
    a = stored[key]
    sample = spec.sample_shape
    if a.shape[1:] == sample:
        pass
    elif a.ndim == len(spec.shape) + 1 and a.shape[1:] == spec.shape and spec.batch == 1:
        a = a.reshape((a.shape[0],) + sample)  # samples stored with their batch dim of 1
    else:
        raise UsageError(
            f"{flag}: '{path}' array '{key}' has shape {a.shape}, but input '{spec.name}' takes "
            f"samples of shape {sample} (input shape {spec.shape})",
            hint=f"store N samples as an array of shape (N, {', '.join(map(str, sample))})",
        )
    return _cast(a, spec, path, flag, key)


def _cast(a: np.ndarray, spec: InputSpec, path: Path, flag: str, key: str) -> np.ndarray:
    if spec.is_float:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise UsageError(f"{flag}: '{path}' array '{key}' has dtype {a.dtype}, input '{spec.name}' is {spec.dtype}")
        _check_finite(a, path, flag, key)
        return a.astype(spec.dtype)
    if spec.dtype == "bool":
        return a.astype(bool)
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise UsageError(
            f"{flag}: '{path}' array '{key}' has dtype {a.dtype}, but input '{spec.name}' is {spec.dtype}",
            hint="store token ids and masks as integers",
        )
    return a.astype(spec.dtype)


def _check_finite(a: np.ndarray, path: Path, flag: str, key: str) -> None:
    """NaN or infinity in an input is a data error: observers would turn it into NaN ranges,
    and every comparison with it is meaningless."""
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UsageError(
            f"{flag}: '{path}' array '{key}' holds {int(bad.sum())} non-finite value(s) "
            f"(first: {a[index]} at index {list(index)}, sample {index[0]})",
            hint="remove or repair those samples (numpy.isfinite) and save the file again",
        )


def check_labels(data: Dataset, classes: int, flag: str) -> None:
    """Labels must index the model's class scores: 0 <= y < number of classes."""
    if data.labels is None:
        return
    bad = (data.labels < 0) | (data.labels >= classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise UsageError(
            f"{flag or data.origin}: '{data.source}' array 'y' holds {int(bad.sum())} label(s) outside 0..{classes - 1}, "
            f"the model's {classes} class scores (first: {int(data.labels[first])} at sample {first})",
            hint="labels are class indices of the model's output; fix y, or check the file belongs to this model",
        )


def _labels(stored: dict, path: Path, flag: str, need: bool) -> np.ndarray | None:
    if "y" not in stored:
        if need:
            raise UsageError(f"{flag}: '{path}' has no labels array 'y'", hint="save integer class labels as y=...")
        return None
    y = stored["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{flag}: '{path}' array 'y' must be 1-D integer class labels, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def random_dataset(specs: tuple[InputSpec, ...], n: int, seed: int = 0) -> Dataset:
    """Stand-in calibration data when the user gave none (the build warns loudly).

    Floats are standard normal; integer inputs are 0/1, which is a valid token id
    for any vocabulary and a valid mask value.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for s in specs:
        size = (n,) + s.sample_shape
        arrays[s.name] = rng.standard_normal(size).astype(s.dtype) if s.is_float else rng.integers(0, 2, size).astype(s.dtype)
    return Dataset(arrays, None, "random")


def batches(data: Dataset, specs: tuple[InputSpec, ...]):
    """Yield tuples of torch tensors shaped exactly as the static input specs.

    Artifacts are exported with static shapes, so samples are grouped into the
    spec's batch size and a remainder that doesn't fill a batch is dropped.
    """
    import torch

    batch = specs[0].batch
    for start in range(0, len(data) - batch + 1, batch):
        yield tuple(torch.from_numpy(np.ascontiguousarray(data.arrays[s.name][start : start + batch])) for s in specs)


def example_inputs(specs: tuple[InputSpec, ...]):
    """One batch of inputs of the right shapes and dtypes, for tracing and export."""
    return next(batches(random_dataset(specs, specs[0].batch, seed=1), specs))
