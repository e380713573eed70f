"""CLIPer's sliding-window inference (official ``CLIPer.forward_slide``, latest commit).

The CLIP input (``H x W`` pixels, grid ``h x w`` of patches ``p``) is cut into windows of side
``crop`` every ``stride`` pixels (``window_boxes``: the official grid, the last window of a row or
column pushed back inside the image; a side shorter than ``crop`` is one window of that side).
Each window runs the whole early-layer fusion on its own (positional grid resized to the window)
and gives ``L x T x n`` text logits (every layer; ``T`` = foreground, background words, mean
foreground; see :mod:`.class_maps`) and its ``n x n`` fused attention. ``merge_windows`` puts them
back on the image's grid:

* logits: the mean over the windows covering each patch, ``Z`` (``L x T x hw``);
* attention: each window's map added into the block of its patches x its patches of an
  ``hw x hw`` map, divided by the number of windows adding to each entry (``+ 1e-5``, as the
  official code; entries of patch pairs sharing no window stay 0), then rows normalised: ``A_s``;
* merged logits ``Z · A_s`` (each patch's logits propagated through the merged attention).

The model blends ``softmax_over_texts(Z · A_s)`` (foreground columns) with the whole image's
probabilities, ``w · P_slide + (1 - w) · P`` (official ``w = 0.5``), before the selected layer is
thresholded and propagated by the whole image's fused attention; FGC then refines that coarse map
as without the window.
"""
from typing import List, Sequence, Tuple

import torch

from .class_maps import text_logits

# Guard of the division by the number of windows per attention entry, as in the official code.
COUNT_EPS = 1e-5

Box = Tuple[int, int, int, int]  # top, bottom, left, right (pixels, bottom/right exclusive)


def window_starts(length: int, crop: int, stride: int) -> List[Tuple[int, int]]:
    """``(start, end)`` of the windows along a side of ``length`` pixels (official grid)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for index in range(count):
        end = min(index * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def window_boxes(height: int, width: int, crop: int, stride: int) -> List[Box]:
    """Windows of an ``height x width`` image, row by row (official order)."""
    return [(top, bottom, left, right)
            for top, bottom in window_starts(height, crop, stride)
            for left, right in window_starts(width, crop, stride)]


def window_cells(box: Box, patch: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
    """Flat grid indices (row-major on the ``h x w`` grid) of the patches of a pixel box."""
    top, bottom, left, right = box
    rows = torch.arange(top // patch[0], bottom // patch[0])
    cols = torch.arange(left // patch[1], right // patch[1])
    return (rows[:, None] * grid[1] + cols[None, :]).flatten()


def merge_windows(window_logits: Sequence[torch.Tensor], window_attention: Sequence[torch.Tensor],
                  cells: Sequence[torch.Tensor], num_cells: int) -> torch.Tensor:
    """``L x T x hw`` merged logits ``Z · A_s`` (see the module docstring).

    Args:
        window_logits: per window ``L x T x n`` logits, patches in the order of its ``cells``.
        window_attention: per window ``n x n`` fused attention (patch rows and columns).
        cells: per window the ``n`` grid indices of its patches.
        num_cells: ``hw``, the number of patches of the whole grid.
    """
    first = window_logits[0]
    logits = first.new_zeros(*first.shape[:-1], num_cells)
    cell_count = first.new_zeros(num_cells)
    attention = first.new_zeros(num_cells, num_cells)
    pair_count = first.new_zeros(num_cells, num_cells)
    for z, a, index in zip(window_logits, window_attention, cells):
        index = index.to(first.device)
        logits[..., index] += z
        cell_count[index] += 1
        attention[index[:, None], index[None, :]] += a.to(attention.dtype)
        pair_count[index[:, None], index[None, :]] += 1
    logits /= cell_count
    attention /= pair_count + COUNT_EPS
    attention /= attention.sum(dim=-1, keepdim=True)
    return logits @ attention


def sliding_window_logits(fusion, clip_input: torch.Tensor, texts: torch.Tensor, logit_scale: float,
                          crop: int, stride: int) -> torch.Tensor:
    """``L x T x hw`` merged window logits of a ``1 x 3 x H x W`` CLIP input.

    ``fusion``: the model's :class:`~.early_fusion.EarlyLayerFusion`; ``texts``: ``T x C``. All
    windows have one size (the last ones are pushed back inside), so they run as one batch.
    """
    grid = fusion.grid_size(clip_input)
    boxes = window_boxes(clip_input.shape[-2], clip_input.shape[-1], crop, stride)
    crops = torch.cat([clip_input[..., top:bottom, left:right] for top, bottom, left, right in boxes])
    features, attention = fusion(crops)  # L x B x n x C, B x n x n
    logits = text_logits(features, texts, logit_scale).transpose(-1, -2)  # L x B x T x n
    cells = [window_cells(box, fusion.patch_size, grid) for box in boxes]
    return merge_windows(logits.unbind(1), attention.unbind(0), cells, grid[0] * grid[1])
