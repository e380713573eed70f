"""Category early rejection (CER): which classes go on to the next decoder layer.

At inference, after decoder layer ``i`` an auxiliary head scores every remaining class at every
pixel; each pixel's ``k`` best classes are selected, and the union over the pixels is kept. The
other classes leave the computation for good and end with ``REJECTED_SCORE`` (the lowest
sigmoid score) in the output. At least one class always survives (each pixel selects one).
"""
import torch

# Output score of a rejected class (as the official fast inference: its map stays zero).
REJECTED_SCORE = 0.0


def union_of_topk(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """``T x H x W`` class logits -> ``T`` bool: the classes among some pixel's ``top_k`` best.

    ``top_k`` >= ``T`` keeps every class.
    """
    if top_k < 1:
        raise ValueError(f"CER top-k must be >= 1, got {top_k}")
    classes = logits.shape[0]
    if top_k >= classes:
        return torch.ones(classes, dtype=torch.bool, device=logits.device)
    selected = logits.topk(top_k, dim=0).indices.flatten()
    return torch.bincount(selected, minlength=classes) > 0
