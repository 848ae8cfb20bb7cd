"""Save a transformed (pruned, factorised) float model so a fresh process can use it again.

Two files, for two kinds of reader:
- `float_model.pt` (this module's format, `torch.load(weights_only=True)`-safe):
  the blocks depth pruning dropped, the new layer sizes, the layers low-rank
  factorisation split in two, and the state_dict. `load_transformed` rebuilds the
  model from the user's own factory, drops the same blocks, re-splits and resizes
  each layer and loads the weights, so the result is a
  trainable nn.Module again (what distillation workers and `edgekit validate`
  use). The sizes include the attention attributes head pruning changes
  (`num_heads`, `head_dim`, `dim`), which the model's forward reshapes by.
- `float_model.pt2` (torch.export.save): the graph and weights for your own
  use; `torch.export.load(p).module()` runs and exports again with no Python
  code. torch.export.load unpickles, so edgekit itself never loads one from a
  build directory (a build dir may come from someone else).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UsageError
from edgekit.model.layers import DROPPED_ATTR, lowrank_type, remove_blocks, split_layer

FORMAT = "edgekit-transformed/1"
# Size attributes of the layers pruning changes (Conv, Linear, BN, LayerNorm, GroupNorm).
_SIZE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "normalized_shape", "num_channels", "num_groups")
# Plain int attributes an attention module's forward reshapes by; head pruning changes them
# (stages/prune.py), so a factory-fresh model must get the pruned values back. Only ints are
# recorded: other modules use these names for other things (nn.Softmax.dim), restored unchanged.
_ATTENTION_ATTRS = ("num_heads", "head_dim", "dim")


def layer_splits(model) -> dict:
    """{layer name: its low-rank split (kind, in, out, rank, bias)} for every factorised layer."""
    return {name: m.split for name, m in model.named_modules() if isinstance(m, lowrank_type())}


def layer_sizes(model) -> dict:
    sizes = {}
    for name, module in model.named_modules():
        attrs = {a: _plain(getattr(module, a)) for a in _SIZE_ATTRS if hasattr(module, a)}
        attrs.update({a: getattr(module, a) for a in _ATTENTION_ATTRS if _is_int(getattr(module, a, None))})
        if attrs:
            sizes[name] = attrs
    return sizes


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def save_transformed(model, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "dropped": getattr(model, DROPPED_ATTR, {}), "splits": layer_splits(model),
                "sizes": layer_sizes(model), "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)


def save_exported(model, example: tuple, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export.save wants a .pt2 name
    torch.export.save(torch.export.export(model.eval(), tuple(example)), str(tmp))
    tmp.replace(path)


def load_transformed(model, path: Path):
    """Resize `model` (fresh from its factory) to the saved layer sizes, then load the weights."""
    import torch


    doc = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"'{path}' is not a model saved by edgekit ({FORMAT})", hint="pass BUILD/float_model.pt")
    if doc.get("dropped"):  # the blocks depth pruning dropped, first: positions in the factory's model
        try:
            remove_blocks(model, doc["dropped"])
        except (AttributeError, IndexError, TypeError) as e:
            raise UsageError(f"'{path}' drops blocks the model factory does not build ({e})",
                             hint="load it with the factory that made the build") from None
    for name, split in (doc.get("splits") or {}).items():  # low-rank layers next: they change the module tree
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not hasattr(parent, leaf):
            raise UsageError(f"'{path}' splits layer '{name}' that the model factory does not build",
                             hint="load it with the factory that made the build")
        setattr(parent, leaf, split_layer(split["kind"], split["in"], split["out"], split["rank"], split["bias"]))
    modules = dict(model.named_modules())
    for name, attrs in doc["sizes"].items():
        if name not in modules:
            raise UsageError(f"'{path}' has layer '{name}' that the model factory does not build",
                             hint="load it with the factory that made the build")
        for attr, value in attrs.items():
            setattr(modules[name], attr, tuple(value) if isinstance(value, list) else value)
    state = doc["state_dict"]
    # Give every parameter/buffer the saved shape; load_state_dict then fills the values.
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules[owner]
        current = getattr(module, leaf)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, torch.nn.Parameter):
            setattr(module, leaf, torch.nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad))
        else:
            module.register_buffer(leaf, torch.empty_like(tensor))
    model.load_state_dict(state, strict=True)
    return model.eval()
