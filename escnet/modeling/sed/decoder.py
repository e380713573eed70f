"""SED's gradual fusion decoder, with category early rejection at inference.

``B`` images, ``T`` classes, ``P`` templates, cost map at the last stage's grid ``h x w``:

1. the cost map ``B x T x P x h x w`` is embedded per class by a 7x7 conv (``P -> D``);
2. ``L`` :class:`~escnet.modeling.sed.fusion_layer.FusionLayer` layers (official: 3) each double
   the resolution, fusing the reduced encoder stage of their resolution (res4, res3, res2: the
   skips) and the cost map upsampled by a chain of 2x transposed convs (one per layer);
3. a 3x3 conv gives one logit per class and pixel: ``B x T x 2^L h x 2^L w``.

Before each layer an auxiliary head (3x3 conv -> 1) scores every class. In training these
heads learn on detached features (they do not shape the decoder); at inference with CER they
decide which classes go on (:mod:`~escnet.modeling.sed.rejection`). Every per-class step
(layers, cost chain) is then computed for the surviving classes only. Per-class steps run
``class_chunk_size`` class maps at a time, which bounds memory for large vocabularies.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .fusion_layer import FusionLayer
from .rejection import REJECTED_SCORE, union_of_topk

COST_EMBED_KERNEL = 7
HEAD_KERNEL = 3
SKIP_KERNEL = 3


class GradualFusionDecoder(nn.Module):
    """See the module docstring. ``stage_dims``: encoder channels of res2..res5."""

    def __init__(
        self,
        *,
        num_templates: int,
        stage_dims: Sequence[int],
        hidden_dim: int,
        decoder_dims: Sequence[int],
        skip_dims: Sequence[int],
        kernel_sizes: Sequence[int],
        num_heads: int,
        pooling_size: Sequence[int],
        class_chunk_size: int,
    ):
        super().__init__()
        if class_chunk_size < 1:
            raise ValueError(f"class chunk size must be positive, got {class_chunk_size}")
        self.class_chunk_size = int(class_chunk_size)
        num_layers = len(decoder_dims)
        if not 1 <= num_layers <= len(stage_dims) - 1 or len(skip_dims) != num_layers or len(kernel_sizes) != num_layers:
            raise ValueError(
                f"decoder needs one skip width and kernel size per layer and at most {len(stage_dims) - 1} layers; "
                f"got dims {list(decoder_dims)}, skips {list(skip_dims)}, kernels {list(kernel_sizes)}"
            )
        # Skip of layer i: the encoder stage at its output resolution (res4, res3, res2 for 3 layers).
        skip_stage_dims = [stage_dims[-2 - i] for i in range(num_layers)]
        in_dims = [hidden_dim, *decoder_dims[:-1]]
        self.cost_embed = nn.Conv2d(num_templates, hidden_dim, COST_EMBED_KERNEL, padding=COST_EMBED_KERNEL // 2)
        self.skip_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, s, SKIP_KERNEL, padding=SKIP_KERNEL // 2), nn.ReLU())
            for d, s in zip(skip_stage_dims, skip_dims)
        )
        self.cost_upsamplers = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(d, s, kernel_size=2, stride=2), nn.ReLU())
            for d, s in zip([num_templates, *skip_dims[:-1]], skip_dims)
        )
        self.layers = nn.ModuleList(
            FusionLayer(i, o, s, k, num_heads, pooling_size)
            for i, o, s, k in zip(in_dims, decoder_dims, skip_dims, kernel_sizes)
        )
        self.rejection_heads = nn.ModuleList(nn.Conv2d(d, 1, HEAD_KERNEL, padding=HEAD_KERNEL // 2) for d in in_dims)
        self.output_head = nn.Conv2d(decoder_dims[-1], 1, HEAD_KERNEL, padding=HEAD_KERNEL // 2)

    def _per_class(self, module, maps):
        """``module`` on ``(B T) x ...`` maps, ``class_chunk_size`` at a time."""
        return torch.cat([module(part) for part in maps.split(self.class_chunk_size)])

    @property
    def num_layers(self):
        return len(self.layers)

    def project_skips(self, stages: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Reduced encoder skips, one ``B x s_i x H_i x W_i`` per layer (res4 first)."""
        return [proj(stages[-2 - i]) for i, proj in enumerate(self.skip_projections)]

    def forward(self, cost: torch.Tensor, stages: Sequence[torch.Tensor], with_rejection_logits: bool = True):
        """Full computation. ``cost`` ``B x T x P x h x w``, ``stages`` [res2..res5].

        Returns ``(logits B x T x H x W, rejection logits)``: one ``B x T x h_i x w_i`` per
        layer from the auxiliary heads on detached features (empty if not requested).
        """
        batch, classes = cost.shape[:2]
        skips = self.project_skips(stages)
        corr = cost.flatten(0, 1)  # (B T) x P x h x w
        x = self.cost_embed(corr)
        rejection_logits = []
        for head, upsampler, layer, skip in zip(self.rejection_heads, self.cost_upsamplers, self.layers, skips):
            if with_rejection_logits:
                rejection_logits.append(self._per_class(head, x.detach()).view(batch, classes, *x.shape[-2:]))
            corr = self._per_class(upsampler, corr)
            x = layer(x, batch, skip, corr, self.class_chunk_size)
        logits = self._per_class(self.output_head, x).view(batch, classes, *x.shape[-2:])
        return logits, rejection_logits

    def forward_rejecting(
        self, cost: torch.Tensor, stages: Sequence[torch.Tensor], top_k: int
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Category early rejection for one image: ``cost`` ``1 x T x P x h x w``.

        Returns ``(scores T x H x W, kept)``: sigmoid scores, ``REJECTED_SCORE`` for rejected
        classes, and the sorted class indices entering each layer (``kept[i]``, one per layer).
        """
        if cost.shape[0] != 1:
            raise ValueError(f"category early rejection runs one image at a time, got {cost.shape[0]}")
        classes = cost.shape[1]
        skips = self.project_skips(stages)
        corr = cost[0]  # T x P x h x w
        x = self.cost_embed(corr)
        keep = torch.arange(classes, device=cost.device)
        kept = []
        for head, upsampler, layer, skip in zip(self.rejection_heads, self.cost_upsamplers, self.layers, skips):
            selected = union_of_topk(self._per_class(head, x)[:, 0], top_k)
            keep, x, corr = keep[selected], x[selected], corr[selected]
            kept.append(keep)
            corr = self._per_class(upsampler, corr)
            x = layer(x, 1, skip, corr, self.class_chunk_size)
        scores = self._per_class(self.output_head, x)[:, 0].float().sigmoid()
        output = scores.new_full((classes, *scores.shape[-2:]), REJECTED_SCORE)
        output[keep] = scores
        return output, kept
