r"""A small vision transformer (project addition, issue 24): the architecture of the
VNN-COMP 2023 ViT benchmark and of Dosovitskiy et al. 2021 ("An image is worth 16x16
words"), shrunk to train in minutes on a CPU.

:class:`TinyViT` maps an image ``[N, C, H, W]`` to logits:

1. patch embedding ``Conv2d(C, D, p, stride=p)``, flattened to tokens ``[N, T, D]``
   (:math:`T = HW/p^2`), a learned class token prepended (``cls=True``), learned positions
   added;
2. ``depth`` pre-norm blocks
   :math:`z \leftarrow z + \mathrm{Attn}(\mathrm{LN}(z))`,
   :math:`z \leftarrow z + \mathrm{MLP}(\mathrm{LN}(z))`, with multi-head attention
   :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h})V` per head and a GELU MLP;
3. a final LayerNorm, the class token (or the mean over tokens, ``cls=False``), a linear
   head.

Every step is a plain torch call (``transpose``, ``reshape``, ``@``, ``torch.softmax``) so that
boundkit captures it as typed nodes (``permute``, ``reshape``, ``matmul``, ``softmax``...).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on tokens ``[N, T, D]``: ``heads`` heads of width
    :math:`d_h = D/\\text{heads}`,
    :math:`\\mathrm{out}(\\mathrm{concat}_h\\,\\mathrm{softmax}(Q_hK_h^\\top/\\sqrt{d_h})V_h)`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, D] -> [N, heads, T, d_h]``."""
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output ``[N, T, D]``."""
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        w = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        o = (w @ v).transpose(1, 2)
        return self.out(o.reshape(x.shape[0], x.shape[1], -1))


class Block(nn.Module):
    """A pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attn(ln(x))``, then ``+ mlp(ln(.))``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small vision transformer (see the module docstring).

    Args:
        image: input shape ``(C, H, W)``; ``H`` and ``W`` multiples of ``patch``.
        patch: patch side ``p``; ``dim``: token width ``D``; ``depth``: blocks;
        ``heads``: attention heads; ``mlp``: hidden width of the blocks' MLP;
        ``cls``: classify from a class token (else from the mean over tokens).
    """

    def __init__(self, image: tuple[int, int, int] = (3, 32, 32), patch: int = 8,
                 dim: int = 32, depth: int = 1, heads: int = 2, mlp: int = 64,
                 num_classes: int = 10, cls: bool = True) -> None:
        super().__init__()
        c, h, w = image
        if h % patch or w % patch:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
        tokens = (h // patch) * (w // patch) + int(cls)
        self.patch = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``."""
        z = self.patch(x).flatten(2).transpose(1, 2)  # [N, T, D]
        if self.cls is not None:
            z = torch.cat([self.cls.expand(x.shape[0], -1, -1), z], dim=1)
        z = self.norm(self.blocks(z + self.pos))
        return self.head(z[:, 0] if self.cls is not None else z.mean(dim=1))
