"""Vision-Language Fusion (VLF) module of ESC-Net.

Per class (batched over the classes of a chunk): the class features are concatenated with the
refined image features ``F_v'`` and go through a pair of Swin transformer blocks (window
attention, then shifted-window attention). Then, at every pixel, the classes attend to the text
features ``F_l`` (keys and values) with linear attention (Katharopoulos et al. 2020, ``elu + 1``
feature map) and no positional embedding: each class's output depends on its own query and on
the set of text features only, so it is independent of the order and number of classes.

Because the attention is linear, its sums over the vocabulary (``sum_m phi(k_m) v_m^T`` and
``sum_m phi(k_m)``) are computed once from all ``Nc`` text features
(:meth:`LinearClassAttention.text_summary`); every class (of any chunk) then needs only its own
query, so the classes run in chunks with the exact result.

Layout: class features are token-major ``B x Nc x hw x E`` (pixels row-major, channels last),
the layout every linear layer wants; nothing is permuted between the stages.

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

    ``x``: ``... x E`` class features, ``summary``: :meth:`text_summary` of the ``Nc x Ct``
    text features -> ``... x E``.
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

    def text_summary(self, text: torch.Tensor) -> torch.Tensor:
        """``Nc x Ct`` text -> ``E x (E + H)`` float32 matrix of the sums over the vocabulary.

        Block-diagonal per head ``h``: ``[sum_m phi(k_m) v_m^T | sum_m phi(k_m)]`` (``d x d``
        and ``d x 1``, ``d = E / H``), so that one matrix product gives every head's numerator
        and denominator.
        """
        nc = text.shape[0]
        dim = self.q_proj.out_features
        heads, head_dim = self.num_heads, dim // self.num_heads
        k = self.k_proj(text).view(nc, heads, head_dim)
        v = self.v_proj(text).view(nc, heads, head_dim)
        # sums over classes grow with the vocabulary size: float32 even under AMP
        with torch.autocast(device_type=text.device.type, enabled=False):
            k = F.elu(k.float()) + 1  # Nc x H x d
            kv = torch.einsum("mhd,mhe->hde", k, v.float())  # H x d x d
            ksum = k.sum(dim=0)  # H x d
            summary = kv.new_zeros(dim, dim + heads)
            for h in range(heads):
                rows = slice(h * head_dim, (h + 1) * head_dim)
                summary[rows, rows] = kv[h]
                summary[rows, dim + h] = ksum[h]
        return summary

    def forward(self, x: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        heads = self.num_heads
        q = self.q_proj(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = F.elu(q.float()) + 1  # ... x E
            both = q @ summary  # ... x (E + H): numerators, then denominators
            numerator = both[..., :dim].unflatten(-1, (heads, dim // heads))
            denominator = both[..., dim:].unsqueeze(-1) + self.eps
            attended = (numerator / denominator).flatten(-2)
        return self.out_proj(attended.to(x.dtype))


class TokenSwinBlock(SwinTransformerBlock):
    """timm's ``SwinTransformerBlock`` (same parameters and function) on ``N x hw x E`` tokens.

    The cyclic shift and the window partition are one precomputed gather of the tokens (and
    one scatter back after the attention's output projection, which acts per token); the
    window attention is ``scaled_dot_product_attention`` with the relative position bias (plus
    timm's shift mask) as additive mask. A grid the windows do not tile falls back to timm.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h, w = self.input_resolution
        win_h, win_w = self.window_size
        self.tiles = h % win_h == 0 and w % win_w == 0
        order = torch.arange(h * w).view(h, w)
        if self.tiles:
            order = torch.roll(order, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(0, 1))
            order = order.view(h // win_h, win_h, w // win_w, win_w).permute(0, 2, 1, 3).reshape(-1)
        # window-ordered position j holds grid token window_order[j]
        self.register_buffer("window_order", order.reshape(-1), persistent=False)
        self.register_buffer("grid_order", torch.argsort(order.reshape(-1)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``N x hw x E`` tokens (row-major grid ``input_resolution``) -> same shape."""
        n, hw, dim = x.shape
        if not self.tiles:
            return super().forward(x.view(n, *self.input_resolution, dim)).view(n, hw, dim)
        attn = self.attn
        heads, area = attn.num_heads, self.window_area
        windows = hw // area
        y = self.norm1(x).index_select(1, self.window_order)
        qkv = attn.qkv(y).view(n * windows, area, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N*nW) x H x L x d
        bias = attn._get_rel_pos_bias()  # 1 x H x L x L
        if self.attn_mask is not None:
            # a 4-d batch with a full mask takes the fused CPU kernel (a 5-d one does not)
            bias = (bias + self.attn_mask.unsqueeze(1).to(bias.dtype)).repeat(n, 1, 1, 1)  # (N*nW) x H x L x L
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        y = attn.proj(y.transpose(1, 2).reshape(n, hw, dim)).index_select(1, self.grid_order)
        x = x + y
        return x + self.mlp(self.norm2(x))


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
            TokenSwinBlock(
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

    def image_guidance(self, image_features: torch.Tensor) -> torch.Tensor:
        """``B x E x h x w`` refined image features ``F_v'`` -> ``B x hw x E`` (once per image)."""
        return self.guidance_fuse(image_features.flatten(2).transpose(1, 2))

    def forward(self, class_features, guidance, text_summary, class_maps):
        """
        Args:
            class_features: ``B x c x hw x E`` (a chunk of ``c`` classes).
            guidance: ``B x hw x E`` from :meth:`image_guidance`.
            text_summary: ``class_attention.text_summary`` of all ``Nc`` text features.
            class_maps: ``B x c x h x w`` maps the PPG of this block used.
        Returns:
            ``(B x c x hw x E features, B x c x h x w maps for the next block)``; the maps
            are ``class_maps`` unchanged when ``predicts_map`` is False.
        """
        b, nc, hw, dim = class_features.shape
        x = class_features + (self.class_fuse(class_features) + guidance.unsqueeze(1))
        x = x.reshape(b * nc, hw, dim)
        for block in self.spatial_blocks:
            x = block(x)  # (B*c) x hw x E
        x = x + self.class_attention(self.class_norm(x), text_summary)
        x = x + self.mlp(self.mlp_norm(x))
        maps = class_maps
        if self.predicts_map:
            maps = maps + self.map_head(self.map_norm(x)).view(b, nc, *class_maps.shape[-2:])
        return x.view(b, nc, hw, dim), maps
