"""What every backend shares: the runner interface and the quantization config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize. Static int8 with per-channel weights is the default
    because it is what the ARM int8 kernels (XNNPACK, QNNPACK) run fastest."""

    scheme: str = "static-int8"
    per_channel: bool = True

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "per_channel": self.per_channel}


class Runner(Protocol):
    """An artifact loaded in its real runtime."""

    runtime: str  # e.g. "executorch"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on one batch; returns every output as a numpy array."""
        ...
