#!/usr/bin/env python
"""Count an escnet model's parameters and FLOPs (fvcore) for one image and a vocabulary.

Random weights are fine (counts do not depend on them); to avoid any download, pass
``--opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""``.

Example:
    python tools/count_params_flops.py --config-file configs/vitl.yaml --num-classes 171 \\
        --opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""

FLOPs follow fvcore's convention (one fused multiply-add = one FLOP; attention matrix products
included), include the text encoder
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


def _component(name):
    """Report line a (sub)module or parameter name belongs to."""
    for prefix, label in COMPONENTS:
        if name.startswith(prefix):
            return label
    return "other"


# (name prefix, report label), first match wins
COMPONENTS = (
    ("clip_encoder.clip.visual", "CLIP image encoder"),
    ("clip_encoder", "CLIP text encoder"),
    ("prompt_encoder", "SAM prompt encoder"),
    ("blocks", "ESC blocks (SAM blocks + VLF)"),
    ("decoder", "decoder"),
)


def _attention_flops(inputs, outputs):
    """fvcore handle for ``scaled_dot_product_attention``: ``q k^T`` and ``attn v`` multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for dim in q[:-2]:
        batch *= dim
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count(cfg, num_classes, height=None, width=None):
    """Parameter and FLOP counts of ``cfg``'s model (eval mode) for one image.

    Returns ``{"params": {component: n}, "trainable": n, "gflops": {component: g}}``; the
    components are those of ``COMPONENTS`` plus ``"other"`` and ``"total"``.
    """
    return count_model(build_model(cfg).eval(), num_classes, height, width)


def count_model(model, num_classes, height=None, width=None):
    """``count`` for an already built model in eval mode (e.g. tools/benchmark.py's)."""
    params = {}
    for name, parameter in model.named_parameters():
        for key in (_component(name), "total"):
            params[key] = params.get(key, 0) + parameter.numel()
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

    # nn.MultiheadAttention's fused inference path is one op fvcore cannot count: use the
    # unfused path (linear projections + scaled_dot_product_attention, counted below)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(_InferenceOnTensor(model, vocabulary), (image,))
            analysis.set_op_handle("aten::scaled_dot_product_attention", _attention_flops)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_module = analysis.by_module()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    gflops = {"total": by_module[""] / 1e9}
    for name, flops in by_module.items():
        # direct children of the top-level components only, so nothing is counted twice
        if name.startswith("model.") and name.count(".") == 1:
            label = _component(name[len("model."):])
            gflops[label] = gflops.get(label, 0.0) + flops / 1e9
    if "model.clip_encoder.clip.visual" in by_module:  # split CLIP into its two towers
        visual = by_module["model.clip_encoder.clip.visual"] / 1e9
        gflops["CLIP image encoder"] = visual
        gflops["CLIP text encoder"] = gflops.get("CLIP text encoder", 0.0) - visual
    # plus the ops of the meta-architecture itself (correlation, resizing, softmax)
    gflops["other"] = gflops.get("other", 0.0) + gflops["total"] - sum(v for k, v in gflops.items() if k != "total")
    return {"params": params, "trainable": trainable, "gflops": gflops}


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
    result = count(cfg, args.num_classes, args.height, args.width)
    params, gflops = result["params"], result["gflops"]
    print(f"config: {args.config_file} ({args.num_classes} classes)")
    print(f"{'component':32s} {'params (M)':>11s} {'GFLOPs':>9s}")
    for label in [label for _, label in COMPONENTS] + ["other", "total"]:
        if label in params or label in gflops:
            print(f"{label:32s} {params.get(label, 0) / 1e6:11.1f} {gflops.get(label, 0.0):9.2f}")
    print(f"trainable parameters: {result['trainable'] / 1e6:.1f}M")
    logger.info("done in %.0f s", time.time() - start)


if __name__ == "__main__":
    main()
