"""Channel pruning: dependency-aware structured pruning with torch-pruning's DepGraph.

Removing an output channel of one conv means removing the matching input
channel of every layer that reads it (BN, the next conv, a residual add's other
branch, a depthwise conv's group): DepGraph finds those groups, so the pruned
model is an ordinary smaller nn.Module that exports like the original.

Channel counts are kept a multiple of `round_to` (the target profile's): the
ARM int8 GEMM kernels tile output channels by 8, so 60 channels cost as much
as 64 and pruning to 60 would save MACs on paper but not time.

Transformers: an attention module is found by its int `num_heads` attribute
and its q, k, v Linears (attributes q/k/v, query/key/value, q_proj/k_proj/v_proj
or to_q/to_k/to_v; or one fused `qkv`/`to_qkv` Linear). Whole heads are removed
(the same fraction as the channels: --prune 0.5 keeps 2 of 4 heads), with the
same output channels cut from q, k and v and the matching inputs of the output
projection, and the module's `num_heads` (and `dim`, when it named the heads'
total width) are updated so its forward's reshapes still fit. Whole heads
rather than narrower ones: head_dim, and with it the softmax scale
head_dim ** -0.5 the weights were trained with, stays exact, and the q/k/v
widths stay multiples of head_dim (16 in the sample, already a multiple of
round_to); at least one head is always kept. The MLP hidden
widths are pruned as channels. The residual width stays: models written like
the ViT sample reshape the token stream by a stored `dim`, so the first layer
(the patch embedding, which sets that width) is never pruned. An attention
module not understood this way keeps its width, with a warning (see
`fixed_width_layers`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.errors import EdgekitError, UsageError
from edgekit.model.layers import output_layers
from edgekit.stages.macs import count

IMPORTANCE = ("l1", "l2", "taylor", "bn-scale")
# --prune-macs prunes in this many equal steps of ratio up to MAX_RATIO and stops
# at the first step that meets the MAC target (finer steps: closer to the target).
MACS_STEPS = 20
MAX_RATIO = 0.95
# With distillation, --prune-macs F cuts in rounds (prune, distill, prune again, ...): every cut before
# the last keeps HALVING of the MACs the one before it left, for as long as the last cut, to F, would
# still remove at least as much (0.25 -> 0.5, 0.25; 0.1 -> 0.5, 0.25, 0.1; anything above 0.25: one
# cut). Gradual pruning with training between the cuts recovers more than one large cut (Han et al.,
# 2015, "Learning both weights and connections", section 3.3; Zhu & Gupta, 2017, "To prune, or not to
# prune"). bench/prune_steps.md: the digits CNN in three rounds keeps 0.090 of its MACs at 99.33 % on
# its labelled calibration data (seeds 0 and 1; 99.33 % unpruned); one cut lands on 0.074 at 98.33 /
# 98.00 %, or on 0.121 at 99.33 / 99.00 %.
HALVING = 0.5


@dataclass(frozen=True)
class PruneConfig:
    ratio: float | None = None  # fraction of channels removed per prunable layer (uniform) or overall (global)
    macs_target: float | None = None  # keep at most this fraction of the MACs instead of a fixed ratio
    importance: str = "l2"
    global_pruning: bool = False
    round_to: int | None = None  # channel multiple; None: the target profile's (stages/options.py fills it)
    steps: int | None = None  # cuts, with distillation after each (needs it); None: schedule()'s choice

    def check(self) -> None:
        if (self.ratio is None) == (self.macs_target is None):
            raise UsageError("give one of --prune RATIO or --prune-macs FRACTION", hint="e.g. --prune 0.5")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise UsageError(f"--prune must be between 0 and 1 (the fraction of channels removed), got {self.ratio}")
        if self.macs_target is not None and not 0 < self.macs_target < 1:
            raise UsageError(f"--prune-macs must be between 0 and 1 (the fraction of MACs kept), got {self.macs_target}")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"--prune-importance '{self.importance}' is not one of {', '.join(IMPORTANCE)}")
        if self.round_to is not None and self.round_to < 1:
            raise UsageError(f"round_to must be a positive number of channels, got {self.round_to}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--prune-steps must be at least 1, got {self.steps}")

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "macs_target": self.macs_target, "importance": self.importance,
                "global": self.global_pruning, "round_to": self.round_to, "steps": self.steps}


def schedule(cfg: PruneConfig, distilling: bool) -> list[PruneConfig]:
    """The cuts `cfg` asks for, in order, each a one-cut config; distillation runs after every one.

    --prune-macs: each cut's `macs_target` is a share of the MACs that entered the *first* cut (the
    chain's stage turns it into a share of what the cut itself receives). `steps` N: N cuts keeping
    F^(k/N); by default, with distillation, the HALVING ladder; without it, one cut (rounds of pruning
    with nothing trained between them end where one cut does). --prune RATIO: N cuts of the channels
    that are left, 1 - (1 - RATIO)^(1/N) each, so the N together remove RATIO of them; one by default
    (the direct knob does what it says).
    """
    one = dataclasses.replace(cfg, steps=1)
    steps = cfg.steps
    if cfg.ratio is not None:
        n = steps or 1
        return [dataclasses.replace(one, ratio=round(1 - (1 - cfg.ratio) ** (1 / n), 6))] * n
    f = cfg.macs_target
    if steps is not None:
        return [dataclasses.replace(one, macs_target=round(f ** (k / steps), 6)) for k in range(1, steps + 1)]
    kept = []
    while distilling and HALVING ** (len(kept) + 1) >= f / HALVING - 1e-9:
        kept.append(HALVING ** (len(kept) + 1))
    return [dataclasses.replace(one, macs_target=k) for k in kept + [f]]


# The names attention code conventionally gives its projections (timm, HF, diffusers, the ViT sample).
_QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("to_q", "to_k", "to_v"))
_FUSED_QKV_NAMES = ("qkv", "to_qkv")


@dataclass
class Attention:
    """An attention module whose heads can be pruned: its q, k, v Linears (or the one fused Linear)."""

    module: object
    projections: tuple  # (q, k, v), or (qkv,) with the three stacked along the output
    head_dim: int  # kept: whole heads are removed, never parts of one
    dim_is_width: bool  # the module's `dim` was num_heads * head_dim, so it follows the heads

    def width(self) -> int:
        """num_heads * head_dim as the layers are now (a fused qkv stacks three of them)."""
        return self.projections[0].out_features // (3 if len(self.projections) == 1 else 1)


def _heads(module) -> int | None:
    n = getattr(module, "num_heads", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def find_attention(model) -> tuple[list[Attention], list]:
    """(attention modules whose heads can be pruned, modules with `num_heads` that cannot be read)."""
    understood, other = [], []
    for module in model.modules():
        if _heads(module) is None:
            continue
        found = _read_attention(module)
        (understood if found else other).append(found or module)
    return understood, other


def _read_attention(module) -> Attention | None:
    from torch import nn

    heads, children = module.num_heads, dict(module.named_children())
    if heads < 1:
        return None
    for names in _QKV_NAMES:
        layers = tuple(children.get(n) for n in names)
        if all(isinstance(layer, nn.Linear) for layer in layers):
            widths = {layer.out_features for layer in layers}
            # one width for q, k and v: grouped-query attention (fewer k/v heads) is not handled
            return _attention(module, layers, widths.pop()) if len(widths) == 1 else None
    for name in _FUSED_QKV_NAMES:
        layer = children.get(name)
        if isinstance(layer, nn.Linear) and layer.out_features % 3 == 0:
            return _attention(module, (layer,), layer.out_features // 3)
    return None


def _attention(module, layers: tuple, width: int) -> Attention | None:
    heads = module.num_heads
    declared = getattr(module, "head_dim", None)
    if width % heads or (isinstance(declared, int) and declared * heads != width):
        return None
    dim = getattr(module, "dim", None)
    return Attention(module, layers, width // heads, isinstance(dim, int) and dim == width)


def fixed_width_layers(model, prunable_attention=()) -> list:
    """Layers whose widths the model's own code hard-codes, so pruning them breaks its forward.

    Transformers written like the ViT sample reshape the token stream by a
    stored `dim`: the residual width must stay, so the first layer (the patch
    embedding, which sets it) is kept whole whenever the model has attention
    modules (found by an int `num_heads`). Every Linear inside an attention
    module is kept too, except the q, k, v projections of the modules in
    `prunable_attention`, whose heads `prune` removes and whose size attributes
    it updates. An attention module this code cannot read keeps all its widths:
    what is left to prune there is the MLP hidden width.
    """
    from torch import nn

    attention = [m for m in model.modules() if _heads(m) is not None]
    if not attention:
        return []
    pruned = {id(layer) for a in prunable_attention for layer in a.projections}
    fixed = [m for a in attention for m in a.modules() if isinstance(m, nn.Linear) and id(m) not in pruned]
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return fixed + ([first] if first is not None else [])


def _importance(name: str):
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
    }[name]()


def prune(model, example: tuple, cfg: PruneConfig, calib_batches=None):
    """Prune `model` in place; returns it. `calib_batches` ((inputs, labels) pairs)
    feed the Taylor importance, which needs gradients of the loss.

    With attention modules, the heads are pruned on a copy first and the copy's
    forward is run: if the model's code does not follow the new sizes (it
    reshapes by a width this module did not update), a warning says so and the
    model is pruned with its attention widths kept instead.
    """
    import copy
    import warnings

    import torch


    cfg.check()
    if cfg.importance == "taylor" and not calib_batches:
        raise UsageError("--prune-importance taylor needs labelled training data", hint="pass --train train.npz (x and y) or use l2")
    if cfg.importance == "bn-scale" and not _has_batchnorm(model):
        # BNScaleImportance scores only channels that feed a BatchNorm: without one it would prune nothing.
        raise UsageError("--prune-importance bn-scale ranks channels by their BatchNorm scale (gamma), "
                         "and this model has no BatchNorm layer", hint="use --prune-importance l2 (or l1, taylor)")
    understood, unreadable = find_attention(model)
    for module in unreadable:
        warnings.warn(f"cannot prune the heads of {type(module).__name__} (num_heads={module.num_heads}): found no "
                      "q/k/v Linears (or one fused qkv Linear) that split into its heads; its layers keep their widths",
                      stacklevel=2)
    if understood:
        with torch.no_grad():
            expected = _output_shapes(model(*example))
        trial = copy.deepcopy(model)
        try:
            _prune(trial, example, cfg, calib_batches, find_attention(trial)[0])
            with torch.no_grad():
                got = _output_shapes(trial(*example))
            if got != expected:
                raise RuntimeError(f"output shape {got} instead of {expected}")
        except EdgekitError:
            raise
        except Exception as err:  # the model's own code did not accept the new sizes
            kinds = ", ".join(sorted({type(a.module).__name__ for a in understood}))
            warnings.warn(f"pruning the heads of {kinds} broke the model's forward ({type(err).__name__}: {err}); "
                          "the attention layers keep their widths", stacklevel=2)
        else:
            # Callers hold `model`: give it the pruned copy's layers and attributes (same object, new contents).
            model.__dict__.update(trial.__dict__)
            return model.eval()
    _prune(model, example, cfg, calib_batches, [])
    return model.eval()


def _has_batchnorm(model) -> bool:
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules())


def _output_shapes(out) -> list:
    import torch

    outs = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]


def _prune(model, example: tuple, cfg: PruneConfig, calib_batches, attention: list) -> None:
    import warnings


    ratio = cfg.ratio if cfg.ratio is not None else MAX_RATIO
    steps = 1 if cfg.ratio is not None else MACS_STEPS
    with warnings.catch_warnings():
        # torch-pruning notes each bare nn.Parameter it will prune along its last dim: for a ViT's
        # position embedding that is the residual width, which is right (and kept here anyway).
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = _new_pruner(model, example, cfg, ratio, steps, attention)
    base = count(model, example)["macs"]
    for _ in range(steps):
        if cfg.importance == "taylor":
            _taylor_gradients(model, calib_batches)
        pruner.step()
        _sync_attention(pruner, attention)
        if cfg.macs_target is not None and count(model, example)["macs"] <= cfg.macs_target * base:
            break
    model.zero_grad(set_to_none=True)


def _new_pruner(model, example: tuple, cfg: PruneConfig, ratio: float, steps: int, attention: list):
    return _pruner_class()(
        model, tuple(example), importance=_importance(cfg.importance), global_pruning=cfg.global_pruning,
        pruning_ratio=ratio, iterative_steps=steps, round_to=cfg.round_to,
        ignored_layers=output_layers(model) + fixed_width_layers(model, attention),
        num_heads={layer: a.module.num_heads for a in attention for layer in a.projections},
        prune_num_heads=bool(attention), prune_head_dims=False, head_pruning_ratio=ratio if attention else 0.0,
        # fresh dicts: torch-pruning's defaults for these are shared, mutable, and it writes into them
        in_channel_groups={}, out_channel_groups={},
    )


def _sync_attention(pruner, attention: list) -> None:
    """Give each attention module (and torch-pruning's bookkeeping) the head count its layers now have.

    Counted from the layers, not taken from the pruner: torch-pruning lowers its
    count even when it then refuses a group (one that would leave no channel).
    head_dim stays, and so does the softmax scale (head_dim ** -0.5) the
    weights were trained with, because only whole heads are removed.
    """
    for a in attention:
        width = a.width()
        heads = width // a.head_dim
        for layer in a.projections:
            pruner.num_heads[layer] = pruner.out_channel_groups[layer] = heads
        a.module.num_heads = heads
        if a.dim_is_width:
            a.module.dim = width


def _pruner_class():
    import torch_pruning as tp

    class HeadPruner(tp.pruner.MetaPruner):
        """MetaPruner whose head ratio is a share of each module's initial heads, never all of them.

        torch-pruning removes ceil(ratio * current heads) at every step, with the
        ratio meant for the initial count: over the iterative steps of --prune-macs
        that removes heads far faster than the schedule, down to zero. Here the
        ratio returned makes it remove exactly the heads the schedule asks for.
        """

        def get_target_head_pruning_ratio(self, module) -> float:
            initial, current = self.init_num_heads[module], self.num_heads[module]
            share = self.per_step_head_pruning_ratio[self.current_step]
            keep = max(1, int(initial * (1 - share) + 1e-9))  # as channels: int() of what stays; 1e-9 absorbs float error
            remove = current - keep
            return max(0.0, (remove - 0.5) / current)  # ceil((remove - 0.5)) == remove

    return HeadPruner


def _taylor_gradients(model, batches) -> None:
    import torch.nn.functional as F

    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(*x), y).backward()
