#!/usr/bin/env python
"""Count an escnet model's parameters and FLOPs (fvcore) for one image and a vocabulary.

Random weights are fine (counts do not depend on them); to avoid any download, pass
``--opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""``.

Example:
    python tools/count_params_flops.py --config-file configs/vitl.yaml --num-classes 171 \\
        --opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""

FLOPs follow fvcore's convention (one fused multiply-add = one FLOP), include the text encoder
for ``--num-classes`` class names (one template each unless the config has more) and the image
at the model's input size (global view; use ``--height/--width`` for another size).
"""
import argparse
import logging
import time

import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from escnet import add_escnet_config
from escnet.utils.errors import EscnetError, cli_entry

logger = logging.getLogger("escnet.count_params_flops")


class _InferenceOnTensor(nn.Module):
    """``3 x H x W`` uint8 image -> ``Nc x H x W`` probabilities (model contract, traceable input)."""

    def __init__(self, model, vocabulary):
        super().__init__()
        self.model = model
        self.vocabulary = vocabulary

    def forward(self, image):
        return self.model([{"image": image, "vocabulary": self.vocabulary}])[0]["sem_seg"]


def count(cfg, num_classes, height=None, width=None):
    """Return ``(trainable_params, total_params, gflops_or_None)`` for ``cfg``'s model in eval mode."""
    model = build_model(cfg).eval()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = getattr(model, "input_size", None)
    if height is None or width is None:
        if size is None:
            raise EscnetError("the model has no input_size: give --height and --width")
        height, width = size
    vocabulary = tuple(f"class name {i}" for i in range(num_classes))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, device=model.device)
    if hasattr(model, "clip_encoder"):
        model.clip_encoder.clear_text_cache()  # count the text encoder too
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(_InferenceOnTensor(model, vocabulary), (image,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analysis.total()
    return trainable, total, flops / 1e9


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="model config (e.g. configs/vitl.yaml)")
    parser.add_argument("--num-classes", type=int, default=171, help="vocabulary size (default: COCO-Stuff 171)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: model input size)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: model input size)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        raise EscnetError("--num-classes must be >= 1")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_cfg()
    add_escnet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    logger.info("Building %s and tracing one image with %d classes (may take minutes on a CPU)...",
                args.config_file, args.num_classes)
    start = time.time()
    trainable, total, gflops = count(cfg, args.num_classes, args.height, args.width)
    print(f"config: {args.config_file}")
    print(f"parameters: {total / 1e6:.1f}M total, {trainable / 1e6:.1f}M trainable")
    print(f"GFLOPs (fvcore, {args.num_classes} classes): {gflops:.1f}")
    logger.info("done in %.0f s", time.time() - start)


if __name__ == "__main__":
    main()
