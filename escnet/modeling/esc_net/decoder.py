"""U-Net style decoder of ESC-Net: class features at ``h x w`` -> logits at ``2^K h x 2^K w``.

Each of the K stages upsamples the class features 2x (bilinear), concatenates a skip from a
CLIP intermediate feature map (projected by a 1x1 conv and upsampled bilinearly to the stage's
resolution; shared by all classes), and applies a 3x3 conv + GroupNorm + GELU (the conv's skip
part is computed once per image). A 3x3 conv
gives one logit per class and pixel. The deepest intermediate feeds the first (coarsest) stage.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPNORM_CHANNELS_PER_GROUP = 16


def _group_norm(channels):
    return nn.GroupNorm(max(1, channels // GROUPNORM_CHANNELS_PER_GROUP), channels)


class UpsamplingDecoder(nn.Module):
    """``B x Nc x E x h x w`` class features + K skips ``B x D x h x w`` -> ``B x Nc x 2^K h x 2^K w``."""

    def __init__(self, in_dim: int, skip_in_dim: int, decoder_dims: Sequence[int], skip_dims: Sequence[int]):
        super().__init__()
        if len(decoder_dims) != len(skip_dims):
            raise ValueError("decoder: DECODER_DIMS and DECODER_SKIP_DIMS must have the same length")
        self.skip_projs = nn.ModuleList(nn.Conv2d(skip_in_dim, s, kernel_size=1) for s in skip_dims)
        # the 3x3 conv on [class features, skip] is split in two: the skip part runs once per
        # image and is broadcast over classes (same function as a conv on the concatenation)
        self.class_convs = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        previous = in_dim
        for out_dim, skip_dim in zip(decoder_dims, skip_dims):
            self.class_convs.append(nn.Conv2d(previous, out_dim, kernel_size=3, padding=1))
            self.skip_convs.append(nn.Conv2d(skip_dim, out_dim, kernel_size=3, padding=1, bias=False))
            self.norms.append(nn.Sequential(_group_norm(out_dim), nn.GELU()))
            previous = out_dim
        self.head = nn.Conv2d(previous, 1, kernel_size=3, padding=1)

    @property
    def num_stages(self):
        return len(self.class_convs)

    def skip_guides(self, skips: List[torch.Tensor], grid_size) -> List[torch.Tensor]:
        """The skip half of every stage's conv, once per image: ``B x D_k x 2^k h x 2^k w``.

        ``skips``: at least ``num_stages`` maps; the last ``num_stages`` are used, deepest first.
        """
        used = list(reversed(skips[len(skips) - self.num_stages:]))
        guides = []
        size = tuple(grid_size)
        for skip, proj, skip_conv in zip(used, self.skip_projs, self.skip_convs):
            size = (size[0] * 2, size[1] * 2)
            guides.append(skip_conv(F.interpolate(proj(skip), size=size, mode="bilinear", align_corners=False)))
        return guides

    def forward(self, class_features: torch.Tensor, guides: List[torch.Tensor], grid_size) -> torch.Tensor:
        """``B x c x hw x E`` token-major class features (a chunk of classes), :meth:`skip_guides`
        -> ``B x c x 2^K h x 2^K w`` logits."""
        b, nc, _, dim = class_features.shape
        x = class_features.reshape(b * nc, *grid_size, dim).permute(0, 3, 1, 2)  # channels-last NCHW view
        for guide, class_conv, norm in zip(guides, self.class_convs, self.norms):
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
            x = class_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            x = norm((x.view(b, nc, *x.shape[1:]) + guide.unsqueeze(1)).flatten(0, 1))
        logits = self.head(x)
        return logits.view(b, nc, logits.shape[-2], logits.shape[-1])
