"""Low-rank factorisation: W (out x in) ~ A (out x r) @ B (r x in) by truncated SVD.

One Linear (or 1x1 Conv) becomes two smaller ones. A layer is replaced only
where it saves MACs: r * (in + out) < in * out. The rank is either a fraction
of min(in, out) or the smallest one keeping `energy` of the squared singular
values (sum s_i^2). The output layer is factorised too (its out_features stay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit.errors import UsageError
from edgekit.model.layers import split_layer


@dataclass(frozen=True)
class LowRankConfig:
    rank_fraction: float | None = None
    energy: float | None = None

    def check(self) -> None:
        if (self.rank_fraction is None) == (self.energy is None):
            raise UsageError("give one of --lowrank FRACTION or --lowrank-energy E")
        if self.rank_fraction is not None and not 0 < self.rank_fraction < 1:
            raise UsageError(f"--lowrank must be between 0 and 1 (the rank kept, as a fraction of the full rank), got {self.rank_fraction}")
        if self.energy is not None and not 0 < self.energy < 1:
            raise UsageError(f"--lowrank-energy must be between 0 and 1 (the share of sum(s^2) kept), got {self.energy}")

    def to_json(self) -> dict:
        return {"rank_fraction": self.rank_fraction, "energy": self.energy}


def _rank(s, cfg: LowRankConfig) -> int:
    import torch

    if cfg.rank_fraction is not None:
        return max(1, math.ceil(cfg.rank_fraction * len(s)))
    share = torch.cumsum(s ** 2, 0) / torch.sum(s ** 2)
    return int(torch.searchsorted(share, torch.tensor(cfg.energy)).item()) + 1


def _factorisable(module) -> bool:
    from torch import nn

    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1) and module.padding in ((0, 0), "valid"))


def _factor(module, cfg: LowRankConfig):
    """The two-layer replacement, or None where the rank would not save MACs."""
    import torch
    from torch import nn

    w = module.weight.detach().reshape(module.weight.shape[0], -1)  # (out, in)
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = _rank(s, cfg)
    if r * (in_f + out_f) >= in_f * out_f:
        return None
    root = s[:r].sqrt()
    a, b = u[:, :r] * root, root[:, None] * vh[:r]  # split sqrt(S) between the two factors
    has_bias = module.bias is not None
    new = split_layer("linear" if isinstance(module, nn.Linear) else "conv1x1", in_f, out_f, r, has_bias)
    first, second = new[0], new[1]
    with torch.no_grad():
        first.weight.copy_(b.reshape(first.weight.shape))
        second.weight.copy_(a.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(module.bias)
    return new


def factorise(model, cfg: LowRankConfig) -> list[dict]:
    """Replace layers in place; returns one row per replaced layer (name, shape, rank)."""
    cfg.check()
    rows = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not _factorisable(child):
                continue
            new = _factor(child, cfg)
            if new is not None:
                setattr(parent, name, new)
                full = f"{parent_name}.{name}" if parent_name else name
                rows.append({"layer": full, "in": new[0].weight.shape[1], "out": new[1].weight.shape[0],
                             "rank": new[0].weight.shape[0]})
    return rows
