"""Input specifications: the name, static shape and dtype of each model input.

`--input-shape 1,3,32,32` is the short form for one float input named `x`;
`--input input_ids:1x128:int64` names each input of a multi-input model.
Kept torch-free so the CLI can parse options before any heavy import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import UsageError

# Dtypes a model input may have. Integer inputs (token ids, masks, indices) are
# never quantized: they feed embeddings and indexing, not arithmetic.
DTYPES = ("float32", "float16", "int64", "int32", "bool")
FLOAT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # static, batch dimension first
    dtype: str = "float32"

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: the shape without its batch dimension."""
        return self.shape[1:]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


# Positive integers, each pair separated by one comma or one x (the same one throughout; spaces
# around them are ignored): "1,3,32,32" or "1x3x32x32". "1,x,8" is a typo, not a shape.
_SHAPE = re.compile(r"^[1-9][0-9]*(?:(?P<sep>[,x×])[1-9][0-9]*(?:(?P=sep)[1-9][0-9]*)*)?$")


def parse_shape(text: str, flag: str) -> tuple[int, ...]:
    """'1,3,32,32' or '1x3x32x32' -> (1, 3, 32, 32)."""
    compact = re.sub(r"\s*([,x×])\s*", r"\1", text.strip()) if isinstance(text, str) else ""
    if not _SHAPE.match(compact):
        raise UsageError(
            f"{flag}: '{text}' is not a shape",
            hint=f"give positive integers with the batch first, separated by commas (or x), e.g. {flag} 1,3,32,32",
        )
    return tuple(int(p) for p in re.split(r"[,x×]", compact))


def parse_input(text: str) -> InputSpec:
    """'input_ids:1x128:int64' -> InputSpec; the dtype part defaults to float32."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].isidentifier():
        raise UsageError(
            f"--input: '{text}' is not NAME:SHAPE[:DTYPE]",
            hint="e.g. --input input_ids:1x128:int64 --input attention_mask:1x128:int64",
        )
    dtype = parts[2] if len(parts) == 3 else "float32"
    check_dtype(dtype, "--input")
    return InputSpec(parts[0], parse_shape(parts[1], "--input"), dtype)


def check_dtype(dtype: str, where: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(
            f"{where}: unknown dtype '{dtype}'", hint=f"use one of: {', '.join(DTYPES)}"
        )


def resolve_inputs(input_shape: str | None, inputs: tuple[str, ...] | list[str]) -> tuple[InputSpec, ...]:
    """Turn the two CLI forms into input specs; they are alternatives, not a mix."""
    if input_shape and inputs:
        raise UsageError(
            "--input-shape and --input were both given",
            hint="use --input-shape for one float input, or --input NAME:SHAPE:DTYPE for each input",
        )
    if input_shape:
        return (InputSpec("x", parse_shape(input_shape, "--input-shape")),)
    specs = tuple(parse_input(t) for t in inputs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("--input: an input name is given twice", hint=f"names given: {', '.join(names)}")
    return specs
