"""CLIPer's coarse class maps from the early-layer fusion's features (official ``CLIPer.forward``).

With ``L`` layer features ``F_l`` (``N`` patches each), text features of the ``Nf`` foreground
classes ``T_fg``, of the background words ``T_bg`` and their mean ``mean(T_fg)``
(``class_texts``: ``T = [T_fg; T_bg; mean(T_fg)]``):

* ``P_l = softmax_over_texts(scale · cos(F_l, T))`` restricted to the foreground columns
  (``L x N x Nf``); with the sliding window (:mod:`.sliding_window`) these are blended with the
  windows' probabilities first;
* the selected layer's map is zeroed where below ``threshold`` x its per-class peak (in place, so
  the layer average below sees the thresholded map, as in the official code);
* ``coarse = P_sel^T · A + mean_l P_l^T`` with ``A`` the fused attention (``N x N``): ``Nf x N``.
"""
import torch
import torch.nn.functional as F


def class_texts(foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``T x C`` texts of the softmax: foreground, background words, mean foreground (``T = Nf + Nb + 1``)."""
    return torch.cat([foreground, background.to(foreground.dtype), foreground.mean(dim=0, keepdim=True)], dim=0)


def text_logits(features: torch.Tensor, texts: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``... x N x T`` scaled cosine similarities of ``... x N x C`` features with ``T x C`` texts."""
    return logit_scale * F.normalize(features, dim=-1) @ F.normalize(texts, dim=-1).to(features.dtype).t()


def text_probabilities(features: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor,
                       logit_scale: float) -> torch.Tensor:
    """``L x N x Nf`` foreground probabilities of ``L x N x C`` features (softmax over all texts)."""
    logits = text_logits(features, class_texts(foreground, background), logit_scale)
    return logits.softmax(dim=-1)[..., : foreground.shape[0]]


def propagate_class_maps(probs: torch.Tensor, attention: torch.Tensor, threshold: float,
                         select_layer: int) -> torch.Tensor:
    """``Nf x N`` coarse maps of ``L x N x Nf`` probabilities (changed in place: the selected layer is thresholded).

    ``attention``: ``N x N`` fused attention (patch rows and columns).
    """
    selected = probs[select_layer]
    selected[selected < selected.amax(dim=0, keepdim=True) * threshold] = 0
    return selected.t() @ attention.to(selected.dtype) + probs.mean(dim=0).t()


def coarse_class_maps(features: torch.Tensor, attention: torch.Tensor, foreground: torch.Tensor,
                      background: torch.Tensor, logit_scale: float, threshold: float,
                      select_layer: int) -> torch.Tensor:
    """``Nf x N`` coarse class maps of one image without the sliding window (see the module docstring).

    Args:
        features: ``L x N x C`` patch features of every layer.
        attention: ``N x N`` fused attention (patch rows and columns).
        foreground / background: ``Nf x C`` / ``Nb x C`` text features (``Nb`` may be 0).
    """
    probs = text_probabilities(features, foreground, background, logit_scale)  # L x N x Nf
    return propagate_class_maps(probs, attention, threshold, select_layer)
