"""Optimizer construction: per-group learning rates, frozen parameters, full-model gradient clipping."""
import pytest
import torch
from detectron2.modeling import build_model

from escnet.engine.optimizer import build_optimizer

from conftest import tiny_cfg


def _lr_by_parameter(optimizer):
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_parameter_groups_use_the_configured_multipliers():
    cfg = tiny_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.CLIP_MULTIPLIER, cfg.SOLVER.SAM_MULTIPLIER = 2e-4, 0.01, 0.05
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = _lr_by_parameter(optimizer)
    expected = {"clip": 2e-6, "sam": 1e-5, "default": 2e-4}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in lrs, f"frozen {name} is optimised"
            continue
        group = model.lr_group(name)
        seen.add(group)
        assert lrs[id(param)] == pytest.approx(expected[group]), name
    assert seen == {"clip", "sam", "default"}
    frozen_clip = [n for n, p in model.named_parameters() if n.startswith("clip_encoder.") and not p.requires_grad]
    assert any("token_embedding" in n for n in frozen_clip)


def test_full_model_clipping_bounds_the_global_gradient_norm():
    cfg = tiny_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED, cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = True, "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    optimizer.step()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert total == pytest.approx(0.5, rel=1e-4)


def test_unknown_optimizer_is_a_clear_error():
    from escnet.utils.errors import EscnetError

    cfg = tiny_cfg()
    cfg.SOLVER.OPTIMIZER = "LION"
    with pytest.raises(EscnetError, match="unknown SOLVER.OPTIMIZER 'LION'"):
        build_optimizer(cfg, torch.nn.Linear(2, 2))
