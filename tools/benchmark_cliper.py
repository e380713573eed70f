#!/usr/bin/env python
"""Benchmark CLIPer on the CPU with random weights of the real architectures (no download).

CLIP: the open_clip architecture of ``--clip-model`` set up for OpenAI weights (QuickGELU), random
init. Fine-grained compensation: SD-2.1-base's VAE and UNet built from their configs
(configs/sd/sd21_base_*.json) with random init; the null-prompt embedding is random (the text
encoder runs once when the model is built, never per image); one prompt template (text features
are cached before timing). Cases: the yardstick (the CLIP image
encoder alone at SHORT_SIDE x SHORT_SIDE), the UNet step alone, the VAE encoding alone, and the
whole model with FGC off/on for each Nc (and, with ``--sliding-crop-size``, FGC off with the
sliding window, as the ViT-B/16 protocols of Context, Object and Context59 run it). They run
round robin (each case once per round, so load changes on a shared CPU hit a round's cases
alike); per case: median seconds over ``--repeats`` rounds after ``--warmup``, median per-round
ratio to the yardstick, peak RSS (tools/benchmark.py's PeakMemory; includes the weights).

    python tools/benchmark_cliper.py --config-file configs/cliper_vitb.yaml --num-classes 21,150 \\
        --sliding-crop-size 224 --output output/benchmark_cliper_vitb.json
"""
import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402

from benchmark import GIB, PeakMemory, benchmark_vocabulary, parse_int_list  # noqa: E402  (tools/ is this folder)
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
BENCHMARK_TEMPLATES = ("a photo of a {}.",)
# Protocol name of the sliding-window cases (the default protocol plus the window).
SLIDING_PROTOCOL = "benchmark_sliding_window"
# SD's VAE: image side / latent side.
VAE_DOWNSAMPLING = 8


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


def build_model(cfg, sliding_crop_size=0, sliding_stride=0):
    """CLIPer with random weights; a window > 0 adds protocol ``SLIDING_PROTOCOL`` (validated as a config's)."""
    c = cfg.MODEL.CLIPER
    clip, info = clip_architecture(c.CLIP_MODEL, c.CLIP_PRETRAINED)
    if sliding_crop_size:
        cfg = cfg.clone()
        cfg.MODEL.CLIPER.DATASET_PROTOCOLS[SLIDING_PROTOCOL] = CfgNode(
            {"SLIDING_CROP_SIZE": sliding_crop_size, "SLIDING_STRIDE": sliding_stride})
    default, per_dataset = protocols_from_config(cfg)
    # One template: text features are cached before timing, so templates only cost set-up time.
    default = dataclasses.replace(default, templates=BENCHMARK_TEMPLATES)
    per_dataset = {name: dataclasses.replace(p, templates=BENCHMARK_TEMPLATES) for name, p in per_dataset.items()}
    model = CLIPer(clip_model=clip.eval(), clip_mean=info["mean"], clip_std=info["std"],
                   diffusion=random_diffusion(cfg), default_protocol=default, dataset_protocols=per_dataset,
                   short_side=c.SHORT_SIDE, refined_score_weight=c.FGC_SCORE_WEIGHT, sliding_weight=c.SLIDING_WEIGHT)
    return model.eval()


def timed(run, peaks, key):
    """Seconds of one ``run()``; the peak RSS during it is kept (max) in ``peaks[key]``."""
    with torch.no_grad(), PeakMemory("cpu") as peak:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    peaks[key] = max(peaks.get(key, 0), peak.bytes)
    return seconds


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--num-classes", type=lambda t: parse_int_list(t, "--num-classes"), default=[21, 150])
    parser.add_argument("--image-size", type=lambda t: tuple(int(v) for v in t.split("x")), default=(480, 640),
                        help="HEIGHTxWIDTH of the test image (default 480x640, VOC-like)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--sliding-crop-size", type=int, default=0,
                        help="also time FGC off with this sliding window (pixels; 0: not)")
    parser.add_argument("--sliding-stride", type=int, default=112, help="the sliding window's stride (pixels)")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, args.sliding_crop_size, args.sliding_stride)
    diffusion = model.diffusion
    size = cfg.MODEL.CLIPER.SD_INPUT_SIZE
    latent = torch.zeros(1, 4, size // VAE_DOWNSAMPLING, size // VAE_DOWNSAMPLING)
    timestep = torch.tensor(diffusion.timestep)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, generator=generator)
    square = torch.randn(1, 3, *model.yardstick_input_size, generator=generator)

    def segment(fgc, vocabulary, slide=False):
        model.diffusion = diffusion if fgc else None
        (output,) = model([{"image": image, "height": args.image_size[0], "width": args.image_size[1],
                            "vocabulary": vocabulary, "dataset_name": SLIDING_PROTOCOL if slide else ""}])
        assert output["sem_seg"].shape == (len(vocabulary), *args.image_size)

    runs = {"yardstick": lambda: model.run_yardstick(square),
            "unet_step": lambda: diffusion.unet(latent, timestep, encoder_hidden_states=diffusion.null_embedding),
            "vae_encode": lambda: diffusion.latent(image)}
    for fgc in (False, True):
        for n in args.num_classes:
            vocabulary = benchmark_vocabulary(n, "ade847")
            runs[f"fgc_{'on' if fgc else 'off'}_nc{n}"] = functools.partial(segment, fgc, vocabulary)
    if args.sliding_crop_size:
        for n in args.num_classes:
            runs[f"slide_fgc_off_nc{n}"] = functools.partial(segment, False, benchmark_vocabulary(n, "ade847"), True)
    # Round robin: every round times each case once, so a load change on the shared CPU hits all
    # cases of a round alike; ratios are taken per round, then their median.
    times, peaks = {key: [] for key in runs}, {}
    for round_index in range(args.warmup + args.repeats):
        for key, run in runs.items():
            seconds = timed(run, peaks, key)
            if round_index >= args.warmup:
                times[key].append(seconds)
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v),
              flush=True)
    report = {"config_file": args.config_file, "clip_model": cfg.MODEL.CLIPER.CLIP_MODEL, "threads": args.threads,
              "image_size": list(args.image_size), "yardstick_input_size": list(model.yardstick_input_size),
              "torch": torch.__version__, "rounds": args.repeats, "sliding_crop_size": args.sliding_crop_size,
              "sliding_stride": args.sliding_stride, "cases": {}}
    for key in runs:
        ratios = [t / y for t, y in zip(times[key], times["yardstick"])]
        report["cases"][key] = {"median_s": statistics.median(times[key]), "min_s": min(times[key]),
                                "ratio_to_yardstick": statistics.median(ratios), "peak_rss_bytes": peaks[key]}
    print(f"{'case':20s} {'median s':>9s} {'x CLIP':>7s} {'peak GiB':>9s}")
    for key, case in report["cases"].items():
        print(f"{key:20s} {case['median_s']:9.2f} {case['ratio_to_yardstick']:7.2f} "
              f"{case['peak_rss_bytes'] / GIB:9.2f}")
    if args.output:
        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
