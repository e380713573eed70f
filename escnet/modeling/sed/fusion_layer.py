"""One layer of SED's gradual fusion decoder: feature aggregation (FAM) then skip fusion (SFM)."""
import torch
from torch import nn

from .class_attention import ClassAttention
from .convnext_block import ConvNeXtBlock

# GroupNorm of the fusion convolutions: one group per this many channels (official DoubleConv).
CHANNELS_PER_GROUP = 16


class FusionLayer(nn.Module):
    """``(B T) x D x H x W`` class features -> ``(B T) x D' x 2H x 2W``.

    FAM: a ConvNeXt block on every class map (spatial), then linear attention across classes.
    SFM: 2x transposed-conv upsampling to ``D - skip_dim`` channels, concatenated with the
    image's reduced encoder skip (``B x skip_dim x 2H x 2W``, shared by its ``T`` classes) and
    the class's upsampled cost map (``(B T) x skip_dim x 2H x 2W``), then two 3x3 conv + GroupNorm
    + ReLU to ``D'`` channels.
    """

    def __init__(self, in_dim: int, out_dim: int, skip_dim: int, kernel_size: int, num_heads: int, pooling_size):
        super().__init__()
        if skip_dim >= in_dim:
            raise ValueError(f"skip width {skip_dim} must be smaller than the layer's input width {in_dim}")
        if out_dim % CHANNELS_PER_GROUP:
            raise ValueError(f"decoder width {out_dim} must be a multiple of {CHANNELS_PER_GROUP} (GroupNorm)")
        groups = out_dim // CHANNELS_PER_GROUP
        self.spatial = ConvNeXtBlock(in_dim, kernel_size)
        self.class_attention = ClassAttention(in_dim, num_heads, pooling_size)
        self.upsample = nn.ConvTranspose2d(in_dim, in_dim - skip_dim, kernel_size=2, stride=2)
        self.fuse = nn.Sequential(
            nn.Conv2d(in_dim + skip_dim, out_dim, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x, num_images: int, skip, cost, chunk_size: int):
        """``x`` ``(B T) x D x H x W``; ``skip`` ``B x s x 2H x 2W``; ``cost`` ``(B T) x s x 2H x 2W``.

        The per-class steps run ``chunk_size`` class maps at a time (bounds memory; same result).
        """
        x = torch.cat([self.spatial(part) for part in x.split(chunk_size)])
        rows, dim, height, width = x.shape
        classes = rows // num_images
        x = self.class_attention(x.view(num_images, classes, dim, height, width)).view(rows, dim, height, width)
        fused = []
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            images = torch.arange(start, end, device=x.device) // classes
            parts = [self.upsample(x[start:end]), skip.index_select(0, images), cost[start:end]]
            fused.append(self.fuse(torch.cat(parts, dim=1)))
        return torch.cat(fused)
