"""What a model's layers are, read from the module tree (no forward pass), and the structural
changes a saved model replays on a fresh one (low-rank splits, dropped blocks)."""

from __future__ import annotations

import functools


def output_layers(model) -> list:
    """The layer that produces the model's output (the classifier): never pruned,
    or the number of classes would change. Taken as the last Conv/Linear
    registered, which is where every classifier we know of defines its head."""
    from torch import nn

    leaves = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    return leaves[-1:] if leaves else []


def split_layer(kind: str, in_f: int, out_f: int, rank: int, bias: bool):
    """The two layers low-rank factorisation replaces one with: (in -> rank, no bias) then
    (rank -> out). `kind`: "linear" or "conv1x1". Used to factorise (stages/lowrank.py), and to
    rebuild a saved factorised model (saved.py) before its weights are loaded."""
    from torch import nn

    if kind == "linear":
        return lowrank_type()(nn.Linear(in_f, rank, bias=False), nn.Linear(rank, out_f, bias=bias))
    return lowrank_type()(nn.Conv2d(in_f, rank, 1, bias=False), nn.Conv2d(rank, out_f, 1, bias=bias))


@functools.cache
def lowrank_type():
    """The marker type of a factorised layer (made on first use: torch is imported then)."""
    from torch import nn

    class LowRank(nn.Sequential):
        """A layer factorised in two."""

        @property
        def split(self) -> dict:
            first, second = self[0], self[1]
            kind = "linear" if isinstance(first, nn.Linear) else "conv1x1"
            return {"kind": kind, "in": first.weight.shape[1], "out": second.weight.shape[0],
                    "rank": first.weight.shape[0], "bias": second.bias is not None}

    return LowRank


# Blocks depth pruning (stages/depth.py) dropped, recorded on the model so a saved model (saved.py)
# is rebuilt from its factory with the same blocks gone: {container name: positions in the model as
# its factory builds it}.
DROPPED_ATTR = "edgekit_dropped_blocks"


def remove_blocks(model, dropped: dict[str, list[int]]) -> None:
    """Delete the blocks at these positions from each container (nn.Sequential / nn.ModuleList) of a model
    as its factory builds it, and record them on the model."""
    for container, indices in dropped.items():
        holder = model.get_submodule(container) if container else model
        for i in sorted(indices, reverse=True):  # containers renumber after a delete: last first
            del holder[i]
    setattr(model, DROPPED_ATTR, {k: sorted(v) for k, v in dropped.items()})
