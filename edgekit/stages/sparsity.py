"""Unstructured magnitude pruning: zero the smallest |w| of every Conv/Linear weight.

Made permanent with torch.nn.utils.prune.remove, so the model is an ordinary
one with zeros in it. Honest accounting: dense int8 kernels (XNNPACK, QNNPACK,
onnxruntime's CPU ones) multiply zeros like any other weight, so MACs and
latency do not change. What it buys is a smaller *compressed* download: the
build records the artifact's deflate (zip) size next to its raw size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UsageError


@dataclass(frozen=True)
class SparsityConfig:
    sparsity: float

    def check(self) -> None:
        if not 0 < self.sparsity < 1:
            raise UsageError(f"--sparsity must be between 0 and 1 (the fraction of weights zeroed), got {self.sparsity}")

    def to_json(self) -> dict:
        return {"sparsity": self.sparsity, "scope": "per layer, L1 magnitude, Conv/Linear weights"}


def _weighted(model):
    from torch import nn

    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def sparsify(model, cfg: SparsityConfig) -> dict:
    """Zero weights in place; returns the zero share measured afterwards."""
    from torch.nn.utils import prune

    cfg.check()
    for m in _weighted(model):
        prune.l1_unstructured(m, "weight", amount=cfg.sparsity)
        prune.remove(m, "weight")  # permanent: weight is a plain Parameter again, zeros included
    return {"weight_sparsity": zero_share(model)}


def zero_share(model) -> float:
    weights = [m.weight for m in _weighted(model)]
    total = sum(w.numel() for w in weights)
    return round(sum(int((w == 0).sum()) for w in weights) / total, 4) if total else 0.0


def deflate_bytes(path: Path) -> int:
    """Size of the file compressed as zip's deflate would (level 9): what a download costs."""
    return len(zlib.compress(Path(path).read_bytes(), 9))


def add_compressed_size(record: dict, build_dir: Path) -> None:
    artifact = record["artifact"]
    artifact["deflate_bytes"] = deflate_bytes(build_dir / artifact["file"])
