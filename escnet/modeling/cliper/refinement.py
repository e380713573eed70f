"""Fine-grained compensation: refine coarse class maps with diffusion self-attention maps
(official ``Pipeline.refinement``, "SFSA").

``maps``: ``M x G² x G²`` self-attention maps (query rows, key columns; M = layers x heads, in
order). Each is divided by its column maxima, zeroed below ``threshold`` and row-normalised; the
coarse maps, bilinearly resized to ``G x G``, are propagated through the chain
``A_1 A_2 ... A_M`` (computed right to left: ``A_1 (A_2 (... (A_M X)))``).
"""
import math

import torch
import torch.nn.functional as F

# Guards of the divisions, as in the official code.
MAX_EPS = 1e-5
SUM_EPS = 1e-5


def normalise_self_attention(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Column-max normalise, zero below ``threshold``, row-normalise (``... x Q x K``)."""
    maps = maps / (maps.amax(dim=-2, keepdim=True) + MAX_EPS)
    maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
    return maps / (maps.sum(dim=-1, keepdim=True) + SUM_EPS)


def refine_class_maps(coarse: torch.Tensor, maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``Nf x h x w`` coarse maps -> ``Nf x G x G`` maps refined by the chained ``maps``."""
    side = math.isqrt(int(maps.shape[-1]))
    resized = F.interpolate(coarse[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]
    propagated = resized.flatten(1).t()  # G² x Nf
    for index in reversed(range(maps.shape[0])):  # one map at a time bounds memory
        propagated = normalise_self_attention(maps[index].float(), threshold) @ propagated
    return propagated.t().reshape(-1, side, side)
