"""Early-layer fusion over open_clip's CLIP ViT (CLIPer, "Early-layer fusion"; official code
``modified_clip/model.py``).

For a ``B x 3 x H x W`` image (``H``, ``W`` multiples of the patch size; ``N = 1 + h*w`` tokens,
class token first), with ``L`` vision blocks:

1. Blocks ``0 .. L-2`` run as usual. Their per-head attention maps ``A_l`` (``B x heads x N x N``,
   softmax over keys) are summed, ``S = sum_l A_l``; their ``ln_1`` outputs ``e_l`` are kept, and
   so is the residual stream ``e_{L-1}`` entering the last block.
2. For each ``k = 0 .. L-1`` in turn, ``S`` is normalised in place once more over its columns
   (queries) and then its rows (keys); the official code repeats this on every call, so layer ``k``
   sees ``k + 1`` such rounds. The fused attention is then
   ``W = rownorm(clamp(sym(S) - colmean(sym(S)), 0))`` with ``sym(S) = (S + S^T) / 2``, per head.
3. ``e_k`` goes through the last block's attention only: ``out_proj(W · v(ln_1(e_k))))``, with no
   residual and no MLP, then ``ln_post`` and ``proj``: ``L x B x N x C`` features.

The attention is computed explicitly from each block's ``nn.MultiheadAttention`` weights
(``in_proj_weight``/``bias``, ``out_proj``); the open_clip model is not modified.
"""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.errors import EscnetError


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``B x N x D`` -> ``B x heads x N x D/heads``."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``B x heads x N x d`` -> ``B x N x heads*d``."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def qkv_projections(attn: nn.MultiheadAttention, x: torch.Tensor):
    """Per-head ``(q, k, v)``, each ``B x heads x N x d``, of ``x`` (``B x N x D``)."""
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(split_heads(t, attn.num_heads) for t in (q, k, v))


def attention_probabilities(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``B x heads x N x N`` (scaled dot product, as nn.MultiheadAttention)."""
    scale = q.shape[-1] ** -0.5
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)


def sinkhorn_round_(attention_sum: torch.Tensor) -> torch.Tensor:
    """One in-place round: divide by the column sums (over queries), then by the row sums."""
    attention_sum /= attention_sum.sum(dim=-2, keepdim=True)
    attention_sum /= attention_sum.sum(dim=-1, keepdim=True)
    return attention_sum


def fused_attention(normalised_sum: torch.Tensor) -> torch.Tensor:
    """The fused attention from a normalised attention sum (``... x N x N``), rows summing to 1.

    Symmetrise, subtract each column's mean, clamp at 0, divide each row by its sum.
    """
    sym = (normalised_sum + normalised_sum.transpose(-2, -1)) / 2
    sym = torch.clamp(sym - sym.mean(dim=-2, keepdim=True), min=0)
    return sym / sym.sum(dim=-1, keepdim=True)


def resize_positional_embedding(pos_embed: torch.Tensor, new_grid: Tuple[int, int]) -> torch.Tensor:
    """``(1 + s*s) x D`` -> ``(1 + h*w) x D``: bilinear on the square grid, class row kept.

    As the official code, the result is rounded to float16 (its ``upsample_pos_emb`` returns half)
    and brought back to the embedding's dtype.
    """
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    rows = int(grid_pos.shape[0])
    side = math.isqrt(rows)
    if side * side != rows:
        raise EscnetError(f"CLIP positional embedding has {grid_pos.shape[0]} grid rows, not a square grid")
    width = pos_embed.shape[-1]
    grid = grid_pos.t().reshape(1, width, side, side)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.reshape(width, -1).t()
    return torch.cat([cls_pos, grid], dim=0).half().to(pos_embed.dtype)


class EarlyLayerFusion(nn.Module):
    """CLIPer's image side over an open_clip ``VisionTransformer`` (see the module docstring).

    ``forward(images)`` returns ``(features, attention)``: ``L x B x (h*w) x C`` joint-space patch
    features of every layer (not normalised) and ``B x (h*w) x (h*w)`` head-averaged fused
    attention of the last round (patch rows and columns only).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or getattr(visual, "attn_pool", None) is not None or len(blocks) < 2:
            raise EscnetError("CLIPer needs a standard open_clip CLIP ViT (class token, at least two blocks)")
        if any(not isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
            raise EscnetError("CLIPer needs open_clip blocks with nn.MultiheadAttention (a standard CLIP ViT)")
        self.visual = visual
        self.patch_size = tuple(visual.patch_size)
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    @property
    def depth(self) -> int:
        return len(self.visual.transformer.resblocks)

    def grid_size(self, images: torch.Tensor) -> Tuple[int, int]:
        height, width = images.shape[-2:]
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(f"image size {(height, width)} is not a multiple of the patch size {self.patch_size}")
        return height // self.patch_size[0], width // self.patch_size[1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``B x N x D`` after ``ln_pre`` (class token first)."""
        visual = self.visual
        grid = self.grid_size(images)
        x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        pos = resize_positional_embedding(visual.positional_embedding, grid)
        return visual.ln_pre(torch.cat([cls, x], dim=1) + pos.to(x.dtype))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Plain CLIP image embeddings ``B x C`` at the images' size (the benchmark's yardstick)."""
        x = self.embed(images)
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in self.visual.transformer.resblocks:
            x = block(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self._project(x[:, 0])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(images)  # B x N x D
        blocks = self.visual.transformer.resblocks
        kept: List[torch.Tensor] = []
        attention_sum = None
        for block in blocks[:-1]:
            h = block.ln_1(x)
            kept.append(h)
            q, k, v = qkv_projections(block.attn, h)
            probs = attention_probabilities(q, k)  # B x heads x N x N
            attention_sum = probs if attention_sum is None else attention_sum + probs
            x = x + block.ls_1(block.attn.out_proj(merge_heads(probs @ v)))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        kept.append(x)

        last = blocks[-1]
        outputs = []
        for e in kept:
            weights = fused_attention(sinkhorn_round_(attention_sum))
            _, _, v = qkv_projections(last.attn, last.ln_1(e))
            outputs.append(last.attn.out_proj(merge_heads(weights @ v)))
        features = self._project(torch.stack(outputs))  # L x B x N x C
        attention = weights.mean(dim=1)[:, 1:, 1:]
        return features[:, :, 1:], attention
