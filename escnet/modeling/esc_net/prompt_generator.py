"""Pseudo Prompt Generator (PPG) of ESC-Net: pseudo points, boxes and masks from class maps.

For every (image, class) pair, batched over all of them at once (no Python loop over classes):

1. the class map ``M^n`` (``h x w``, e.g. the image-text correlation) becomes a probability map
   ``P^n = softmax_i(M^n(i) / temperature)`` over the spatial positions;
2. foreground: ``P^n(i) >= threshold * max_i P^n(i)`` (``threshold`` is the paper's alpha,
   relative to the map's peak, so it does not depend on the grid size; see docs/design.md);
3. k-means on the pixel coordinates of the foreground into ``num_regions`` (N_o) regions:
   farthest-point initialisation from the peak, then masked batched Lloyd iterations;
4. per region: the highest-probability pixel is the pseudo point, the region its pseudo mask,
   its bounding box the pseudo box. Regions that end up empty (fewer foreground pixels than
   N_o, or no foreground at all) are marked invalid.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ...utils.errors import EscnetError


@dataclass
class PseudoPrompts:
    """Pseudo prompts of ``N`` maps (``N = B * Nc``) on an ``h x w`` grid, ``R`` regions each.

    Coordinates are grid pixels ``(x, y)`` (column, row), pixel ``(0, 0)`` top-left.
    """

    points: torch.Tensor  # N x R x 2 float: highest-probability pixel of each region
    boxes: torch.Tensor  # N x R x 4 float: (x0, y0, x1, y1), inclusive pixel bounds of each region
    valid: torch.Tensor  # N x R bool: the region holds at least one foreground pixel
    region_masks: torch.Tensor  # N x R x h x w bool: the regions (disjoint)

    @property
    def foreground(self):
        """``N x h x w`` bool: union of the regions (the binarised probability map)."""
        return self.region_masks.any(dim=1)


class PseudoPromptGenerator(nn.Module):
    """Class maps ``N x h x w`` -> :class:`PseudoPrompts` (no parameters, no gradient)."""

    def __init__(self, num_regions: int, threshold: float, temperature: float, kmeans_iters: int):
        super().__init__()
        if num_regions < 1:
            raise EscnetError(f"MODEL.ESCNET.NUM_REGIONS must be >= 1, got {num_regions}")
        if not 0.0 < threshold <= 1.0:
            raise EscnetError(f"MODEL.ESCNET.PPG_THRESHOLD must be in (0, 1], got {threshold}")
        if temperature <= 0.0:
            raise EscnetError(f"MODEL.ESCNET.PPG_TEMPERATURE must be positive, got {temperature}")
        if kmeans_iters < 0:
            raise EscnetError(f"MODEL.ESCNET.PPG_KMEANS_ITERS must be >= 0, got {kmeans_iters}")
        self.num_regions = int(num_regions)
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.kmeans_iters = int(kmeans_iters)

    @torch.no_grad()
    def forward(self, class_maps: torch.Tensor) -> PseudoPrompts:
        """``class_maps``: ``N x h x w`` scores (any scale; higher = more likely the class)."""
        n, h, w = class_maps.shape
        # Coordinates and k-means need full precision: never run them under autocast.
        with torch.autocast(device_type=class_maps.device.type, enabled=False):
            probs = torch.softmax(class_maps.detach().float().reshape(n, h * w) / self.temperature, dim=-1)
            foreground = probs >= self.threshold * probs.amax(dim=-1, keepdim=True)
            return self.regions_from_foreground(probs, foreground, (h, w))

    @torch.no_grad()
    def regions_from_foreground(self, probs, foreground, grid_size) -> PseudoPrompts:
        """Cluster each foreground into regions and pick their prompts.

        Args:
            probs: ``N x hw`` probability maps (flattened row-major).
            foreground: ``N x hw`` bool; may be all False for a map (its regions are invalid).
            grid_size: ``(h, w)``.
        """
        h, w = grid_size
        n, hw = probs.shape
        device = probs.device
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32),
            torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        )
        coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # hw x 2

        centroids = self._farthest_point_init(probs, foreground, coords)  # N x R x 2
        assignment = self._assign(coords, centroids)
        for _ in range(self.kmeans_iters):
            members = self._membership(assignment, foreground)  # N x hw x R
            counts = members.sum(dim=1)  # N x R
            sums = torch.einsum("npr,pc->nrc", members, coords)
            updated = sums / counts.clamp(min=1).unsqueeze(-1)
            centroids = torch.where(counts.unsqueeze(-1) > 0, updated, centroids)
            new_assignment = self._assign(coords, centroids)
            if torch.equal(new_assignment, assignment):
                break
            assignment = new_assignment

        members = self._membership(assignment, foreground).bool()  # N x hw x R
        region_masks = members.permute(0, 2, 1)  # N x R x hw
        valid = region_masks.any(dim=-1)

        scores = probs.unsqueeze(1).masked_fill(~region_masks, -1.0)  # N x R x hw
        peak = scores.argmax(dim=-1)  # N x R
        points = coords[peak]  # N x R x 2

        big = float(max(h, w))
        x = coords[:, 0].view(1, 1, hw)
        y = coords[:, 1].view(1, 1, hw)
        x0 = torch.where(region_masks, x, big).amin(dim=-1)
        y0 = torch.where(region_masks, y, big).amin(dim=-1)
        x1 = torch.where(region_masks, x, -1.0).amax(dim=-1)
        y1 = torch.where(region_masks, y, -1.0).amax(dim=-1)
        boxes = torch.stack([x0, y0, x1, y1], dim=-1)
        boxes = torch.where(valid.unsqueeze(-1), boxes, torch.zeros_like(boxes))
        return PseudoPrompts(
            points=points,
            boxes=boxes,
            valid=valid,
            region_masks=region_masks.reshape(n, self.num_regions, h, w),
        )

    def _farthest_point_init(self, probs, foreground, coords):
        """``N x R x 2`` initial centroids: the peak, then repeatedly the farthest foreground pixel.

        With fewer foreground pixels than regions, later picks repeat a chosen pixel (their
        clusters stay empty). The loop runs over the R regions, never over classes.
        """
        first = probs.masked_fill(~foreground, -1.0).argmax(dim=-1)  # N
        chosen = [coords[first]]
        nearest = ((coords.unsqueeze(0) - chosen[0].unsqueeze(1)) ** 2).sum(-1)  # N x hw
        for _ in range(1, self.num_regions):
            far = nearest.masked_fill(~foreground, -1.0).argmax(dim=-1)
            chosen.append(coords[far])
            nearest = torch.minimum(nearest, ((coords.unsqueeze(0) - chosen[-1].unsqueeze(1)) ** 2).sum(-1))
        return torch.stack(chosen, dim=1)

    @staticmethod
    def _assign(coords, centroids):
        """``N x hw`` index of the nearest centroid (ties: the lowest index)."""
        distances = ((coords.view(1, -1, 1, 2) - centroids.unsqueeze(1)) ** 2).sum(-1)  # N x hw x R
        return distances.argmin(dim=-1)

    def _membership(self, assignment, foreground):
        """``N x hw x R`` float one-hot of the assignment, zero outside the foreground."""
        one_hot = torch.nn.functional.one_hot(assignment, self.num_regions).float()
        return one_hot * foreground.unsqueeze(-1).float()
