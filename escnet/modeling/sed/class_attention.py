"""The class part of SED's feature aggregation: linear attention across the classes of each pixel."""
import torch
import torch.nn.functional as F
from torch import nn

# Linear attention's denominator guard and the MLP expansion, as in the official decoder.
LINEAR_ATTENTION_EPS = 1e-6
MLP_RATIO = 4


def linear_attention(queries, keys, values, eps: float = LINEAR_ATTENTION_EPS):
    """Linear attention ("Transformers are RNNs", feature map elu + 1) over the sequence dim.

    ``queries`` ``N x L x H x D``, ``keys`` / ``values`` ``N x S x H x D`` -> ``N x L x H x D``.
    Values are divided by ``S`` before the sums and the result multiplied back (fp16 range).
    """
    q = F.elu(queries) + 1
    k = F.elu(keys) + 1
    length = values.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, values / length)
    normaliser = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, normaliser) * length


class ClassAttention(nn.Module):
    """Attention across the ``T`` classes at every (average-pooled) position, residual at full size.

    ``x``: ``B x T x D x H x W`` -> same. The maps are average-pooled by ``pooling_size``, each
    pooled pixel's ``T`` class features attend to each other (pre-norm linear attention, then a
    pre-norm MLP, both residual), and the result is bilinearly upsampled (corners aligned) and
    added to ``x``. Permuting the classes permutes the output.
    """

    def __init__(self, dim: int, num_heads: int, pooling_size):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"class attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = int(num_heads)
        self.pool = nn.AvgPool2d(tuple(pooling_size))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.ReLU(), nn.Linear(MLP_RATIO * dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        batch, classes, dim, height, width = x.shape
        pooled = self.pool(x.reshape(batch * classes, dim, height, width))
        ph, pw = pooled.shape[-2:]
        # (B h w) x T x D: one sequence of classes per pooled pixel
        tokens = pooled.view(batch, classes, dim, ph, pw).permute(0, 3, 4, 1, 2).reshape(batch * ph * pw, classes, dim)
        tokens = tokens + self._attend(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        tokens = tokens.view(batch, ph, pw, classes, dim).permute(0, 3, 4, 1, 2).reshape(batch * classes, dim, ph, pw)
        tokens = F.interpolate(tokens, size=(height, width), mode="bilinear", align_corners=True)
        return x + tokens.view(batch, classes, dim, height, width)

    def _attend(self, tokens):
        n, length, dim = tokens.shape
        split = (n, length, self.num_heads, dim // self.num_heads)
        out = linear_attention(self.q(tokens).view(split), self.k(tokens).view(split), self.v(tokens).view(split))
        return out.reshape(n, length, dim)
