"""Grouped-query attention without copying the KV cache per head, for the `.pte` export.

Llama, Qwen2 and SmolLM share each key/value head among several query heads (GQA, Ainslie et
al., 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints"). transformers' SDPA attention under torch.export repeats the key and value heads
to the query heads' number (repeat_kv: an expand and a reshape of the whole static cache, in
every layer, at every step), and the decomposed SDPA handles fully-masked rows with a chain of
portable ops. In SmolLM2's 8da8w `.pte` (30 layers, 9 query heads on 3 key/value heads, a
256-token cache) those copies and the delegate calls between them took about three quarters of
a decode step (ExecuTorch's ETDump: expand_copy, XNNPACK's Static Reshape, index_put, where),
the int8 GEMMs the rest.

Here the query heads are folded onto their key/value head instead (the groups become extra
query rows: (batch, kv_heads, groups * tokens, head_dim)), as transformers' own `pack_gqa` does
for a single eager token, for any token count: the cache is read in place, and the attention
is written out (bmm, add the mask, softmax, bmm) so that XNNPACK takes all of it. The mask is
made additive once per forward (transformers' eager_mask), not in every layer.

Only the export uses it (`exporting_with`): the float reference the artifact is judged against
keeps transformers' attention, so a mistake here shows as lost agreement, not as a match.
"""

from __future__ import annotations

import contextlib

NAME = "edgekit_grouped_sdpa"


def grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query (batch, heads, tokens, dim), key and value
    (batch, kv_heads, cache, dim), an additive or boolean mask (batch, 1, tokens, cache); returns
    ((batch, tokens, heads, dim), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1 or attention_mask is None or kwargs.get("position_bias") is not None:
        # Nothing to fold, or a case the static-cache export does not produce (no mask: a causal prefill
        # without a cache): transformers' own.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, tokens, dim = query.shape
    kv_heads, cache = key.shape[1], key.shape[2]
    # Query head h uses key/value head h // groups (repeat_kv's order), so the heads of one group are
    # adjacent: the reshape puts them one after another as rows. 3-D bmm, not a 4-D matmul: torch
    # decomposes the latter into expand_copy of both operands, a copy of the cache again.
    q = (query * (scaling if scaling is not None else dim ** -0.5)).reshape(batch * kv_heads, groups * tokens, dim)
    k = key.reshape(batch * kv_heads, cache, dim)
    v = value.reshape(batch * kv_heads, cache, dim)
    scores = torch.bmm(q, k.transpose(1, 2)).view(batch, kv_heads, groups, tokens, cache)
    mask = attention_mask
    if mask.dtype == torch.bool:  # True: may attend (sdpa_mask's); eager_mask below gives the additive form
        mask = torch.where(mask, 0.0, torch.finfo(scores.dtype).min)
    # One additive mask for every group: broadcast over the groups' axis, not copied to each (a view; unsqueeze
    # would be a copy in ExecuTorch's portable kernels).
    scores = (scores + mask.view(mask.shape[0], 1, 1, tokens, cache)).view(batch, kv_heads, groups * tokens, cache)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.bmm(probs.reshape(batch * kv_heads, groups * tokens, cache), v)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, grouped_sdpa)
    # The additive float mask (0 or the dtype's minimum, as eager attention takes it), made once per forward from
    # the same boolean mask SDPA gets, rather than converted in every layer.
    AttentionMaskInterface.register(NAME, eager_mask)


@contextlib.contextmanager
def exporting_with(model):
    """`model` attends with grouped_sdpa inside the block (its config's attention implementation switched),
    and as before after it."""
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield model
    finally:
        config._attn_implementation = before
