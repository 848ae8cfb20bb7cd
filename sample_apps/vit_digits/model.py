"""A tiny Vision Transformer for scikit-learn's 8x8 handwritten digits.

Input: float32 tensor of shape (N, 1, 8, 8), pixel values scaled to [0, 1]
(the raw 0..16 values divided by 16). Output: logits of shape (N, 10).

The model is written so that every exporter and quantizer sees plain ops:
attention is spelled out with nn.Linear (q, k, v, proj), torch.matmul and
torch.softmax -- no nn.MultiheadAttention, no F.scaled_dot_product_attention.
Every reshape uses sizes fixed by the module's configuration (the batch axis is
-1), so there is no shape-dependent or data-dependent Python control flow, and
torch.export, torch.jit.trace, FX symbolic tracing and torch.onnx.export all
capture the same graph. Tokens are mean-pooled (no class token) before the head.
"""

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over (N, tokens, dim), written out explicitly."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_tokens = num_tokens
        self.dim = dim
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # (N, T, dim) -> (N, heads, T, head_dim)
        return t.reshape(-1, self.num_tokens, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(x) * self.scale)
        k = self._heads(self.k(x))
        v = self._heads(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)  # (N, H, T, T)
        out = torch.matmul(attn, v)                                          # (N, H, T, hd)
        out = out.permute(0, 2, 1, 3).reshape(-1, self.num_tokens, self.dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, num_tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio),
            nn.GELU(),
            nn.Linear(dim * mlp_ratio, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """(N, 1, 8, 8) float32 in [0, 1] -> (N, 10) logits."""

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 8,
        patch_size: int = 2,
        dim: int = 64,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.dim = dim
        self.num_tokens = (image_size // patch_size) ** 2  # 16 patches of 2x2 pixels
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, self.num_tokens, mlp_ratio) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # Linear/Conv2d keep PyTorch's default init: on 1,137 training images it
        # converges much faster than the ViT-style trunc_normal(std=0.02).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)                                  # (N, dim, 4, 4)
        x = x.reshape(-1, self.dim, self.num_tokens).permute(0, 2, 1)  # (N, 16, dim)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x).mean(dim=1)                             # mean-pool the tokens
        return self.head(x)


def build_model() -> nn.Module:
    """Return an untrained TinyViT in eval mode (the toolchain's factory)."""
    return TinyViT().eval()
