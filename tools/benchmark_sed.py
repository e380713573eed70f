#!/usr/bin/env python
"""SED's category early rejection (CER) on the CPU: latency and peak memory, CER on and off.

    python tools/benchmark_sed.py --config-file configs/sed_convnext_b.yaml --num-classes 150,847 \\
        --output output/benchmark_sed_b.json

Uses tools/benchmark.py's measurements (median of ``--repeats`` runs after ``--warmup``, peak RSS
per case, the CLIP-image-encoder yardstick timed in the same process, ratios to it). Weights are
random (``MODEL.SED.CLIP_PRETRAINED ""``). The text features are random unit vectors fixed per
vocabulary: SED encodes Nc x 80 prompts once per vocabulary and caches them (A-847: 67,760
prompts, hours on two CPU cores), so they are not part of a segmentation's latency. Alongside
the timings: how many classes enter each decoder layer with CER (the union of the per-pixel
top-k; with random weights it says nothing about trained rejection rates, it is what was timed).
"""
import argparse
import logging
import os
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmark import benchmark_vocabulary, measure_case, measure_yardstick  # noqa: E402  (tools/)
from escnet.segmenter import Segmenter, build_segmenter_config  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.utils.io import write_json_atomic  # noqa: E402

logger = logging.getLogger("escnet.benchmark_sed")
GIB = 1024**3


def random_text_features(model, vocabulary, seed=0):
    """``Nc x P x C`` random unit vectors standing in for the cached text features."""
    generator = torch.Generator().manual_seed(seed)
    encoder = model.encoder
    shape = (len(vocabulary), len(encoder.templates), encoder.embed_dim)
    return F.normalize(torch.randn(shape, generator=generator), dim=-1).to(model.device)


def kept_per_layer(model, vocabulary, text, top_k):
    """Classes entering each decoder layer with CER, for the benchmark's image."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, *model.input_size, generator=generator).to(model.device)
    with torch.no_grad():
        cost, stages = model.cost_map(image, text)
        _, kept = model.decoder.forward_rejecting(cost, stages, top_k)
    return [int(k.numel()) for k in kept]


def run(args):
    torch.set_num_threads(args.threads)
    opts = ["MODEL.SED.CLIP_PRETRAINED", "", "MODEL.SED.CER.TOP_K", str(args.top_k), *args.opts]
    cfg = build_segmenter_config(args.config_file, opts=opts, device=args.device)
    if cfg.MODEL.META_ARCHITECTURE != "SED":
        raise EscnetError(f"{args.config_file} is not a SED config (MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE})")
    model = Segmenter(cfg, allow_random_weights=True).model
    device = torch.device(cfg.MODEL.DEVICE)
    report = {"config_file": args.config_file, "threads": args.threads, "top_k": args.top_k, "cases": []}
    report["yardstick"] = measure_yardstick(model, device, "fp32", args.warmup, args.repeats)
    logger.info("yardstick (CLIP image encoder at %s): %.3f s", model.input_size, report["yardstick"]["median_s"])
    size = tuple(model.input_size)
    # CER cases first (smaller), the full computation at the largest vocabulary last.
    cases = [(True, n) for n in sorted(args.num_classes)] + [(False, n) for n in sorted(args.num_classes)]
    for cer, n in cases:
        vocabulary = benchmark_vocabulary(n, "generated")
        text = random_text_features(model, vocabulary)
        model.encoder.encode_text = lambda _vocabulary, _text=text: _text
        model.cer_enabled = cer
        logger.info("Nc %d, CER %s", n, "on" if cer else "off")
        case = measure_case(model, device, "fp32", size, vocabulary, args.warmup, args.repeats)
        case.update(num_classes=n, cer=cer, image_size=list(size))
        case["ratio_to_yardstick"] = case["median_s"] / report["yardstick"]["median_s"]
        if cer:
            case["classes_per_layer"] = kept_per_layer(model, vocabulary, text, args.top_k)
        report["cases"].append(case)
        logger.info("  median %.2f s (x%.1f yardstick), peak %.2f GiB", case["median_s"], case["ratio_to_yardstick"],
                    case["peak_memory_bytes"] / GIB)
    for n in args.num_classes:
        on = next(c for c in report["cases"] if c["cer"] and c["num_classes"] == n)
        off = next(c for c in report["cases"] if not c["cer"] and c["num_classes"] == n)
        report.setdefault("speedup", {})[str(n)] = off["median_s"] / on["median_s"]
    write_json_atomic(args.output, report)
    print(format_table(report))
    return report


def format_table(report):
    y = report["yardstick"]
    lines = [
        f"yardstick (CLIP image encoder alone): median {y['median_s']:.3f} s, peak {y['peak_memory_bytes'] / GIB:.2f} GiB",
        "| Nc | CER | median s | x yardstick | peak GiB | classes per layer |",
        "|---:|:---:|---:|---:|---:|:---|",
    ]
    for c in report["cases"]:
        kept = ", ".join(map(str, c.get("classes_per_layer", []))) or "all"
        lines.append(
            f"| {c['num_classes']} | {'on' if c['cer'] else 'off'} | {c['median_s']:.2f} | {c['ratio_to_yardstick']:.1f} "
            f"| {c['peak_memory_bytes'] / GIB:.2f} | {kept} |"
        )
    lines.append("speed-up from CER: " + ", ".join(f"Nc {n}: {s:.1f}x" for n, s in report["speedup"].items()))
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/sed_convnext_b.yaml")
    parser.add_argument("--num-classes", default="150,847", help="comma-separated vocabulary sizes")
    parser.add_argument("--top-k", type=int, default=8, help="CER's per-pixel k (MODEL.SED.CER.TOP_K)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join("output", "benchmark_sed.json"))
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE")
    return parser


@cli_entry
def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = get_parser().parse_args(argv)
    try:
        args.num_classes = [int(n) for n in args.num_classes.split(",") if n.strip()]
    except ValueError:
        raise EscnetError(f"--num-classes must be comma-separated integers, got {args.num_classes!r}") from None
    if not args.num_classes or min(args.num_classes) < 1 or args.top_k < 1 or args.repeats < 1:
        raise EscnetError("--num-classes, --top-k and --repeats must be positive")
    return run(args)


if __name__ == "__main__":
    main()
