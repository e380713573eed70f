"""Optimizer for escnet models: per-group learning rates, AdamW/SGD, optional full-model clipping."""
import itertools

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..utils.errors import EscnetError


def lr_multiplier_function(cfg, model):
    """Map a parameter name to its LR multiplier via the model's ``lr_group(name)``.

    Groups: ``"clip"`` -> ``SOLVER.CLIP_MULTIPLIER``, ``"sam"`` -> ``SOLVER.SAM_MULTIPLIER``,
    anything else -> 1. Models without ``lr_group`` train every parameter at the base LR.
    """
    multipliers = {"clip": cfg.SOLVER.CLIP_MULTIPLIER, "sam": cfg.SOLVER.SAM_MULTIPLIER}
    lr_group = getattr(model, "lr_group", None)
    if lr_group is None:
        return None
    return lambda name: multipliers.get(lr_group(name), 1.0)


def _with_full_model_clipping(optimizer_class, clip_value, norm_type):
    """Subclass ``optimizer_class`` so each ``step`` first clips the global gradient norm."""

    class FullModelGradientClippingOptimizer(optimizer_class):
        def step(self, closure=None):
            params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=norm_type)
            return super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model):
    """AdamW (or SGD) over ``model``'s trainable parameters with per-group LR multipliers.

    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"`` clips the norm over all parameters;
    "value"/"norm" use Detectron2's per-parameter clipping.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        lr_factor_func=lr_multiplier_function(cfg, model),
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_class, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_class, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise EscnetError(f"unknown SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}; use ADAMW or SGD")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = _with_full_model_clipping(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
    return optimizer_class(params, cfg.SOLVER.BASE_LR, **kwargs)
