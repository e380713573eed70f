"""From refined class maps to CLIPer's per-pixel class scores (official ``main_ovs.py`` and
``cam_to_label``), following a protocol.

For the ``Nf`` foreground classes with maps ``R_c`` (any resolution) and scores ``s_c``:

1. ``R_c`` is resized to the image (bilinear) and rescaled to peak ``s_c``: ``M_c = R_c / max R_c · s_c``;
2. with ``normalize_maps``, each ``M_c`` is min-max normalised over the image;
3. classes with ``s_c <= score_threshold`` are absent (their maps become 0): ``V_c``;
4. the background, when the vocabulary has one, scores ``background_threshold`` where that is
   positive (the official code labels a pixel background when no ``V_c`` reaches the threshold),
   else ``(1 - max_c V_c)^2``.

The official label is the argmax of these scores. They are returned normalised to sum 1 over
the vocabulary at each pixel (uniform where all are 0), so argmax and ratios are unchanged.
"""
import torch
import torch.nn.functional as F

from .protocol import CliperProtocol

# Guards of the divisions, as in the official code (rescaling, then min-max normalisation).
PEAK_EPS = 1e-5
RANGE_EPS = 1e-6


def class_scores(refined: torch.Tensor, coarse: torch.Tensor, refined_weight: float) -> torch.Tensor:
    """``Nf`` class scores: ``w · max(refined) + (1 - w) · max(coarse)`` (official: w = 0.5)."""
    return refined_weight * refined.flatten(1).amax(dim=1) + (1 - refined_weight) * coarse.flatten(1).amax(dim=1)


def foreground_maps(refined: torch.Tensor, scores: torch.Tensor, size, protocol: CliperProtocol) -> torch.Tensor:
    """``Nf x H x W`` maps ``V_c`` (steps 1-3 of the module docstring; in place after the resize)."""
    maps = F.interpolate(refined[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
    flat = maps.view(maps.shape[0], -1)
    present = (scores > protocol.score_threshold).to(maps.dtype)
    factor = scores / (flat.amax(dim=1) + PEAK_EPS)
    if protocol.normalize_maps:
        flat.mul_(factor[:, None])
        low = flat.amin(dim=1, keepdim=True)
        flat.sub_(low).div_(flat.amax(dim=1, keepdim=True) + RANGE_EPS)
        factor = present
    else:
        factor = factor * present
    flat.mul_(factor[:, None])
    return maps


def vocabulary_scores(maps: torch.Tensor, background_index, protocol: CliperProtocol) -> torch.Tensor:
    """``Nc x H x W`` scores normalised per pixel; the background row inserted at ``background_index``.

    Without a background row ``maps`` itself is normalised (in place) and returned.
    """
    if background_index is not None:
        if protocol.background_threshold > 0:
            background = torch.full_like(maps[:1], protocol.background_threshold)
        else:
            background = (1 - maps.amax(dim=0, keepdim=True)) ** 2
        maps = torch.cat([maps[:background_index], background, maps[background_index:]], dim=0)
    total = maps.sum(dim=0)
    empty = total <= 0
    maps.div_(total.clamp_min_(torch.finfo(maps.dtype).tiny))
    if empty.any():
        maps[:, empty] = 1.0 / maps.shape[0]
    return maps
