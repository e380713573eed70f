"""The spatial part of SED's feature aggregation: a large-kernel ConvNeXt block per class map."""
import torch
from torch import nn

# As the official decoder: LayerNorm epsilon, MLP expansion, layer-scale start value (1, not
# ConvNeXt's 1e-6: the block starts as a full residual branch).
NORM_EPS = 1e-6
MLP_RATIO = 4
LAYER_SCALE_INIT = 1.0


class ConvNeXtBlock(nn.Module):
    """``N x D x H x W`` -> same: depthwise ``k x k`` conv, LayerNorm, MLP (x4, GELU), layer scale, residual.

    Parameter names follow the official ``ConvNextBlock`` (dwconv, norm, pwconv1, pwconv2, gamma).
    """

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvNeXt block kernel size must be odd, got {kernel_size}")
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.pwconv1 = nn.Linear(dim, MLP_RATIO * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # N x H x W x D
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)
