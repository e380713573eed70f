"""Vision-Language Fusion (VLF) module of ESC-Net.

Per class (batched over all classes): the class features are concatenated with the refined
image features ``F_v'`` and go through a pair of Swin transformer blocks (window attention,
then shifted-window attention). Then, at every pixel, the classes attend to the text features
``F_l`` (keys and values) with linear attention (Katharopoulos et al. 2020, ``elu + 1`` feature
map) and no positional embedding: each class's output depends on its own query and on the set
of text features only, so it is independent of the order and number of classes.

The next ESC block's PPG needs one map per class: ``M_{k+1} = M_k + head(features)``, a
residual correction of the previous map by a zero-initialised linear head (block 1 starts from
the CLIP correlation).
"""
import torch
import torch.nn.functional as F
from torch import nn

from timm.models.swin_transformer import SwinTransformerBlock


class LinearClassAttention(nn.Module):
    """Classes (queries) attend to text features (keys, values) with linear attention.

    ``x``: ``P x Nc x E`` (P = pixels), ``text``: ``Nc x Ct`` -> ``P x Nc x E``.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"class attention: {num_heads} heads do not divide dim {dim}")
        self.num_heads = num_heads
        self.eps = eps
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(text_dim, dim)
        self.v_proj = nn.Linear(text_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, text):
        p, nc, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q_proj(x).view(p, nc, heads, head_dim)
        k = self.k_proj(text).view(nc, heads, head_dim)
        v = self.v_proj(text).view(nc, heads, head_dim)
        # sums over classes grow with the vocabulary size: float32 even under AMP
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.elu(q.float()) + 1  # P x Nc x H x d
            k = F.elu(k.float()) + 1  # Nc x H x d
            kv = torch.einsum("mhd,mhe->hde", k, v.float())  # H x d x d (sum over classes)
            numerator = torch.einsum("pnhd,hde->pnhe", q, kv)
            denominator = torch.einsum("pnhd,hd->pnh", q, k.sum(dim=0)).unsqueeze(-1) + self.eps
        return self.out_proj((numerator / denominator).reshape(p, nc, dim).to(x.dtype))


class VisionLanguageFusion(nn.Module):
    """Class features and image features -> refined class features and one map per class."""

    def __init__(
        self,
        dim: int,
        text_dim: int,
        grid_size,
        window_size: int,
        num_heads: int,
        class_attention_heads: int,
        predicts_map: bool = True,
        mlp_ratio: float = 4.0,
    ):
        """``predicts_map``: False when no PPG follows (last block, or no SAM step): no map head."""
        super().__init__()
        grid_size = tuple(int(s) for s in grid_size)
        # a linear layer on [class features, F_v'], split in two so that F_v' is projected once
        # per image instead of once per class (same function as the concatenation)
        self.class_fuse = nn.Linear(dim, dim)
        self.guidance_fuse = nn.Linear(dim, dim, bias=False)
        self.spatial_blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                input_resolution=grid_size,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=shift,
                mlp_ratio=mlp_ratio,
            )
            for shift in (0, window_size // 2)
        )
        self.class_norm = nn.LayerNorm(dim)
        self.class_attention = LinearClassAttention(dim, text_dim, class_attention_heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.predicts_map = predicts_map
        if predicts_map:
            self.map_norm = nn.LayerNorm(dim)
            self.map_head = nn.Linear(dim, 1)
            nn.init.zeros_(self.map_head.weight)
            nn.init.zeros_(self.map_head.bias)

    def forward(self, class_features, image_features, text, class_maps):
        """
        Args:
            class_features: ``B x Nc x E x h x w``.
            image_features: ``B x E x h x w`` (the fused SAM output ``F_v'``).
            text: ``Nc x Ct`` text features.
            class_maps: ``B x Nc x h x w`` maps the PPG of this block used.
        Returns:
            ``(B x Nc x E x h x w features, B x Nc x h x w maps for the next block)``; the maps
            are ``class_maps`` unchanged when ``predicts_map`` is False.
        """
        b, nc, dim, h, w = class_features.shape
        x = class_features.permute(0, 1, 3, 4, 2).reshape(b * nc, h, w, dim)
        guidance = self.guidance_fuse(image_features.permute(0, 2, 3, 1))  # B x h x w x E
        x = x + (self.class_fuse(x).view(b, nc, h, w, dim) + guidance.unsqueeze(1)).view(b * nc, h, w, dim)
        for block in self.spatial_blocks:
            x = block(x)  # (B*Nc) x h x w x E
        x = x.view(b, nc, h * w, dim).transpose(1, 2).reshape(b * h * w, nc, dim)  # pixels x classes
        x = x + self.class_attention(self.class_norm(x), text)
        x = x + self.mlp(self.mlp_norm(x))
        maps = class_maps
        if self.predicts_map:
            maps = maps + self.map_head(self.map_norm(x)).view(b, h, w, nc).permute(0, 3, 1, 2)
        features = x.view(b, h, w, nc, dim).permute(0, 3, 4, 1, 2)
        return features.contiguous(), maps
