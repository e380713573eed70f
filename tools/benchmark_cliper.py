#!/usr/bin/env python
"""Benchmark CLIPer on the CPU with random weights of the real architectures (no download).

CLIP: the open_clip architecture of ``--clip-model`` set up for OpenAI weights (QuickGELU), random
init. Fine-grained compensation: SD-2.1-base's VAE and UNet built from their configs
(configs/sd/sd21_base_*.json) with random init; the null-prompt embedding is random (the text
encoder runs once when the model is built, never per image). Per case (FGC off/on x Nc) it reports
the median latency of ``--repeats`` runs after a warm-up, the ratio to the yardstick (the CLIP image
encoder alone at SHORT_SIDE x SHORT_SIDE, same process) and the peak RSS; plus the VAE encoding
and the UNet step alone. Uses tools/benchmark.py's timing and memory helpers.

    python tools/benchmark_cliper.py --config-file configs/cliper_vitb.yaml --num-classes 21,150 \\
        --output output/benchmark_cliper_vitb.json
"""
import argparse
import json
import os
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402

from benchmark import (  # noqa: E402  (tools/ is this script's folder)
    GIB,
    PeakMemory,
    benchmark_vocabulary,
    measure_case,
    measure_yardstick,
    parse_int_list,
    time_calls,
    timing_summary,
)
from escnet.engine import load_config  # noqa: E402
from escnet.modeling.clip_weights import clip_architecture  # noqa: E402
from escnet.modeling.cliper import CLIPer  # noqa: E402
from escnet.modeling.cliper.diffusion_attention import DiffusionSelfAttention  # noqa: E402
from escnet.modeling.cliper.protocol import protocols_from_config  # noqa: E402
from escnet.utils.errors import cli_entry  # noqa: E402
from escnet.utils.io import write_json_atomic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD_CONFIGS = os.path.join(REPO, "configs", "sd")
# Length and width of SD-2.1's text-encoder output (OpenCLIP ViT-H/14 text tower, 77 tokens).
SD_TEXT_TOKENS, SD_TEXT_WIDTH = 77, 1024


def read_config(name):
    with open(os.path.join(SD_CONFIGS, name), encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def random_diffusion(cfg):
    """DiffusionSelfAttention over randomly initialised SD-2.1-base VAE and UNet."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    c = cfg.MODEL.CLIPER
    return DiffusionSelfAttention(
        vae=AutoencoderKL(**read_config("sd21_base_vae.json")).eval(),
        unet=UNet2DConditionModel(**read_config("sd21_base_unet.json")).eval(),
        scheduler=PNDMScheduler(**read_config("sd21_base_scheduler.json")),
        null_embedding=torch.randn(1, SD_TEXT_TOKENS, SD_TEXT_WIDTH),
        layers=list(c.SD_ATTENTION_LAYERS),
        input_size=c.SD_INPUT_SIZE,
        num_inference_steps=c.SD_NUM_INFERENCE_STEPS,
        timestep_index=c.SD_TIMESTEP_INDEX,
        noise_seed=c.SD_NOISE_SEED,
    )


def build_model(cfg):
    c = cfg.MODEL.CLIPER
    clip, info = clip_architecture(c.CLIP_MODEL, c.CLIP_PRETRAINED)
    default, per_dataset = protocols_from_config(cfg)
    model = CLIPer(clip_model=clip.eval(), clip_mean=info["mean"], clip_std=info["std"],
                   diffusion=random_diffusion(cfg), default_protocol=default, dataset_protocols=per_dataset,
                   short_side=c.SHORT_SIDE, refined_score_weight=c.FGC_SCORE_WEIGHT)
    return model.eval()


def measure_component(run, warmup, repeats):
    with torch.no_grad(), PeakMemory("cpu") as peak:
        times = time_calls(run, torch.device("cpu"), warmup, repeats)
    return {**timing_summary(times), "peak_memory_bytes": peak.bytes}


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--num-classes", type=lambda t: parse_int_list(t, "--num-classes"), default=[21, 150])
    parser.add_argument("--image-size", type=lambda t: tuple(int(v) for v in t.split("x")), default=(480, 640),
                        help="HEIGHTxWIDTH of the test image (default 480x640, VOC-like)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    diffusion = model.diffusion
    device = torch.device("cpu")
    report = {"config_file": args.config_file, "clip_model": cfg.MODEL.CLIPER.CLIP_MODEL, "threads": args.threads,
              "image_size": list(args.image_size), "torch": torch.__version__, "cases": []}
    report["yardstick"] = measure_yardstick(model, device, "fp32", args.warmup, args.repeats)
    latent = torch.zeros(1, 4, cfg.MODEL.CLIPER.SD_INPUT_SIZE // 8, cfg.MODEL.CLIPER.SD_INPUT_SIZE // 8)
    timestep = torch.tensor(diffusion.timestep)
    image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    report["unet_step"] = measure_component(
        lambda: diffusion.unet(latent, timestep, encoder_hidden_states=diffusion.null_embedding), args.warmup,
        args.repeats)
    report["vae_encode"] = measure_component(lambda: diffusion.latent(image), args.warmup, args.repeats)
    for fgc in (False, True):
        model.diffusion = diffusion if fgc else None
        for n in args.num_classes:
            case = measure_case(model, device, "fp32", tuple(args.image_size), benchmark_vocabulary(n, "ade847"),
                                args.warmup, args.repeats)
            case.update(fgc=fgc, num_classes=n, ratio_to_yardstick=case["median_s"] / report["yardstick"]["median_s"])
            report["cases"].append(case)
            print(f"FGC {'on ' if fgc else 'off'} Nc={n:4d}: {case['median_s']:.2f} s "
                  f"({case['ratio_to_yardstick']:.1f} x yardstick), peak RSS {case['peak_memory_bytes'] / GIB:.2f} GiB",
                  flush=True)
    y = report["yardstick"]
    print(f"yardstick (CLIP image encoder, {y['input_size'][0]}x{y['input_size'][1]}): {y['median_s']:.3f} s; "
          f"UNet step alone: {report['unet_step']['median_s']:.2f} s "
          f"({report['unet_step']['median_s'] / y['median_s']:.1f} x); "
          f"VAE encode: {report['vae_encode']['median_s']:.2f} s", flush=True)
    if args.output:
        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
