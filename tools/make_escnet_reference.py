#!/usr/bin/env python
"""Write the frozen ESC-Net reference outputs ``tests/data/escnet_reference.pt``.

Regenerate ONLY ON PURPOSE (a deliberate change of ESC-Net's function): the file freezes what
the exact path computes, and ``tests/test_escnet_reference.py`` checks every later (faster,
chunked) implementation against it within 1e-4 (fp32).

The file holds, for the tiny config (configs/tiny.yaml, seed 0):
  * ``state_dict``: the model's weights without CLIP's text tower (text features are stored
    instead, so the reference does not depend on the text side);
  * ``cases``: inputs and outputs of several runs: ``predict_logits`` for 1, 4 and 13 classes
    and two images, the box prompt and no-SAM variants, and a sliding-window inference of a
    non-square image (probabilities).

Usage: ``python tools/make_escnet_reference.py [--output tests/data/escnet_reference.pt]``.
"""
import argparse
import os

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from escnet import add_escnet_config
from escnet.utils.io import atomic_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.yaml")
DEFAULT_OUTPUT = os.path.join(REPO, "tests", "data", "escnet_reference.pt")
# CLIP text-tower parameters (large token embedding); the reference stores text features instead.
TEXT_TOWER_PREFIXES = tuple(
    "clip_encoder.clip." + name
    for name in ("token_embedding", "transformer.", "ln_final", "text_projection", "positional_embedding", "attn_mask")
)
SEED = 0
# (name, kind, MODEL.ESCNET overrides, number of images, number of classes)
CASES = (
    ("four_classes_two_images", "logits", {}, 2, 4),
    ("one_class", "logits", {}, 1, 1),
    ("thirteen_classes", "logits", {}, 1, 13),
    ("point_box_mask_prompts", "logits", {"PROMPT_TYPES": ["point", "box", "mask"]}, 1, 5),
    ("no_sam", "logits", {"SAM_INIT": "none"}, 1, 5),
    ("sliding_window", "sliding", {}, 1, 6),
)
SLIDING_IMAGE_SIZE = (80, 112)  # non-square: 2 x 2 windows of 64 plus the global view


def build_reference_model(overrides, state_dict=None):
    """The tiny ESC-Net (CPU, eval mode) with ``MODEL.ESCNET`` overrides; weights from
    ``state_dict`` when given (only the text tower may be missing from it)."""
    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        setattr(cfg.MODEL.ESCNET, key, value)
    torch.manual_seed(SEED)
    model = build_model(cfg).eval()
    if state_dict is not None:
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict and not k.startswith(TEXT_TOWER_PREFIXES)]
        if missing:
            raise KeyError(f"reference state lacks {missing[:3]}")
        model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return model


def run_case(model, case):
    """Recompute a case's output from its stored inputs (``text`` replaces the text encoder)."""
    with torch.no_grad():
        if case["kind"] == "logits":
            return model.predict_logits(case["images"], case["text"])
        vocabulary = case["vocabulary"]
        text = case["text"]
        model.clip_encoder.encode_text = lambda names: text if tuple(names) == vocabulary else None
        model.sliding_window = True
        image = case["images"][0]
        return model([{"image": image, "height": image.shape[-2], "width": image.shape[-1],
                       "vocabulary": vocabulary}])[0]["sem_seg"]


def make_cases(base_state):
    generator = torch.Generator().manual_seed(SEED)
    cases = {}
    for name, kind, overrides, num_images, num_classes in CASES:
        model = build_reference_model(overrides, base_state)
        text = torch.nn.functional.normalize(
            torch.randn(num_classes, model.clip_encoder.embed_dim, generator=generator), dim=-1
        )
        if kind == "logits":
            images = torch.randn(num_images, 3, *model.input_size, generator=generator)
        else:
            images = torch.randint(0, 256, (num_images, 3, *SLIDING_IMAGE_SIZE), generator=generator).to(torch.uint8)
        case = {
            "kind": kind,
            "overrides": overrides,
            "images": images,
            "text": text,
            "vocabulary": tuple(f"class {i}" for i in range(num_classes)),
        }
        case["output"] = run_case(model, case)
        cases[name] = case
        print(f"{name}: output {tuple(case['output'].shape)}, |max| {float(case['output'].abs().max()):.3f}")
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = build_reference_model({})
    state = {k: v.clone() for k, v in base.state_dict().items() if not k.startswith(TEXT_TOWER_PREFIXES)}
    reference = {"state_dict": state, "cases": make_cases(state), "torch_version": torch.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with atomic_path(args.output) as tmp:
        torch.save(reference, tmp)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
