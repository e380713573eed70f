#!/usr/bin/env python
"""SED's category early rejection (CER) on the CPU: latency and peak memory, CER on and off.

    python tools/benchmark_sed.py --config-file configs/sed_convnext_b.yaml --num-classes 150,847 \\
        --output output/benchmark_sed_b.json

Combined table with ESC-Net (and any other tools/benchmark.py report), from reports already written,
without measuring again:

    python tools/benchmark_sed.py --from-report output/benchmark_sed_b.json \
        --combine-with output/benchmark_vitb.json

Uses tools/benchmark.py's measurements and protocol (median of ``--repeats`` runs after
``--warmup``, peak RSS per case, the CLIP-image-encoder yardstick timed in the same process right
before and after each case, the case's ratio to those yardstick runs). Besides SED's own table it
prints the rows in the column layout of ``format_combined_table`` (model, config, input, Nc,
CER, median s, x yardstick, yardstick, peak memory), which renders tools/benchmark.py reports
(ESC-Net, CLIPer) in the same columns, so that the models share one table. Weights are
random (``MODEL.SED.CLIP_PRETRAINED ""``). The text features are random unit vectors fixed per
vocabulary: SED encodes Nc x 80 prompts once per vocabulary and caches them (A-847: 67,760
prompts, hours on two CPU cores), so they are not part of a segmentation's latency.

The image is uniform grey. With random weights every pixel of a noise image ranks the classes
independently, so the union of 576 pixels' top-8 is nearly the whole vocabulary and CER rejects
nothing; a trained model ranks neighbouring pixels alike. On a uniform image all pixels away from
the border agree, so the kept union stays near k, as for a trained model on a scene with few
classes. The classes entering each decoder layer are reported with the timings.
"""
import argparse
import logging
import os
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402

from benchmark import SCHEMA as BENCHMARK_SCHEMA  # noqa: E402
from benchmark import PeakMemory, benchmark_vocabulary, measure_yardstick, time_calls, timing_summary  # noqa: E402
from escnet.segmenter import Segmenter, build_segmenter_config  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.utils.io import write_json_atomic  # noqa: E402

logger = logging.getLogger("escnet.benchmark_sed")
GIB = 1024**3
SCHEMA = "escnet-benchmark-sed/1"


def random_text_features(model, vocabulary, seed=0):
    """``Nc x P x C`` random unit vectors standing in for the cached text features."""
    generator = torch.Generator().manual_seed(seed)
    encoder = model.encoder
    shape = (len(vocabulary), len(encoder.templates), encoder.embed_dim)
    return F.normalize(torch.randn(shape, generator=generator), dim=-1).to(model.device)


GREY = 128


def benchmark_input(size, vocabulary):
    """The model input: a uniform grey ``size`` image (see the module docstring)."""
    image = torch.full((3, *size), GREY, dtype=torch.uint8)
    return {"image": image, "height": size[0], "width": size[1], "vocabulary": vocabulary}


def kept_per_layer(model, x, text, top_k):
    """Classes entering each decoder layer with CER, for the benchmark's image."""
    image = (x["image"].to(model.device).float() - model.encoder.pixel_mean) / model.encoder.pixel_std
    with torch.no_grad():
        cost, stages = model.cost_map(image[None], text)
        _, kept = model.decoder.forward_rejecting(cost, stages, top_k)
    return [int(k.numel()) for k in kept]


def measure(model, device, x, warmup, repeats):
    """Median latency and peak memory of the model on input ``x``."""
    def run():
        (output,) = model([x])
        if tuple(output["sem_seg"].shape) != (len(x["vocabulary"]), x["height"], x["width"]):
            raise RuntimeError(f"unexpected output shape {tuple(output['sem_seg'].shape)}")

    with torch.no_grad(), PeakMemory(device) as peak:
        times = time_calls(run, device, warmup, repeats)
    return {**timing_summary(times), "peak_memory_bytes": peak.bytes, "memory_kind": peak.kind}


def run(args):
    torch.set_num_threads(args.threads)
    opts = ["MODEL.SED.CLIP_PRETRAINED", "", "MODEL.SED.CER.TOP_K", str(args.top_k), *args.opts]
    cfg = build_segmenter_config(args.config_file, opts=opts, device=args.device)
    if cfg.MODEL.META_ARCHITECTURE != "SED":
        raise EscnetError(f"{args.config_file} is not a SED config (MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE})")
    model = Segmenter(cfg, allow_random_weights=True).model
    device = torch.device(cfg.MODEL.DEVICE)
    report = {
        "schema": SCHEMA,
        "meta_architecture": "SED",
        "config_file": args.config_file,
        "opts": list(args.opts),
        "device": str(device),
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "top_k": args.top_k,
        "torch": torch.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cases": [],
    }
    report["yardstick"] = measure_yardstick(model, device, args.warmup, args.repeats)
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
        x = benchmark_input(size, vocabulary)
        # the yardstick right before and after the case (tools/benchmark.py's protocol: on a
        # shared machine the load drifts, and the case's ratio is to its neighbouring runs)
        local = measure_yardstick(model, device, 0, args.repeats)["times_s"]
        case = measure(model, device, x, args.warmup, args.repeats)
        local += measure_yardstick(model, device, 0, args.repeats)["times_s"]
        report["yardstick"]["times_s"] += local
        case.update(num_classes=n, cer=cer, image_size=list(size))
        case["yardstick_median_s"] = statistics.median(local)
        case["ratio_to_yardstick"] = case["median_s"] / case["yardstick_median_s"]
        if cer:
            case["classes_per_layer"] = kept_per_layer(model, x, text, args.top_k)
        report["cases"].append(case)
        logger.info("  median %.2f s (x%.1f yardstick), peak %.2f GiB", case["median_s"], case["ratio_to_yardstick"],
                    case["peak_memory_bytes"] / GIB)
    times = report["yardstick"]["times_s"]
    report["yardstick"].update(median_s=statistics.median(times), min_s=min(times))
    for n in args.num_classes:
        on = next(c for c in report["cases"] if c["cer"] and c["num_classes"] == n)
        off = next(c for c in report["cases"] if not c["cer"] and c["num_classes"] == n)
        report.setdefault("speedup", {})[str(n)] = off["median_s"] / on["median_s"]
    write_json_atomic(args.output, report)
    return report


def format_table(report):
    """SED's own table: CER on and off per Nc, the classes entering each decoder layer."""
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


# ------------------------------------------------------------------ one table for every model
COMBINED_HEADER = (
    "| model | config | input | Nc | CER | median s | x yardstick | yardstick: CLIP image encoder | peak memory |",
    "|---|---|---|---:|:---:|---:|---:|---|---:|",
)


def _combined_row(model, config, size, num_classes, cer, median_s, ratio, yardstick_s, yardstick_size, peak_bytes, kind):
    memory = f"{peak_bytes / GIB:.2f} GiB" + ("" if kind == "rss" else " (CUDA)")
    ratio_text = f"{ratio:.2f}" if ratio < 10 else f"{ratio:.1f}"
    return (
        f"| {model} | {os.path.basename(config)} | {size[0]}x{size[1]} | {num_classes} | {cer} | {median_s:.2f} "
        f"| {ratio_text} | {yardstick_s:.2f} s at {yardstick_size[0]}x{yardstick_size[1]} | {memory} |"
    )


def sed_combined_rows(report):
    """Rows of a tools/benchmark_sed.py report in the combined layout."""
    y_size = report["cases"][0]["image_size"] if report["cases"] else [0, 0]
    return [
        _combined_row(
            "SED", report["config_file"], c["image_size"], c["num_classes"], f"k = {report['top_k']}" if c["cer"] else "off",
            c["median_s"], c["ratio_to_yardstick"], c.get("yardstick_median_s", report["yardstick"]["median_s"]), y_size,
            c["peak_memory_bytes"], c.get("memory_kind", "rss"),
        )
        for c in report["cases"]
    ]


def _report_cer(report):
    """The CER setting of a tools/benchmark.py report's model ("off" or "k = K"), read from its config."""
    cfg = build_segmenter_config(report["config_file"], opts=list(report.get("opts", [])), device="cpu")
    node = cfg.MODEL.get(cfg.MODEL.META_ARCHITECTURE.upper())  # MODEL.ESCNET, MODEL.SED, MODEL.CLIPER
    cer = node.get("CER") if node is not None else None
    if cer is None:
        return "n/a"
    return f"k = {cer.TOP_K}" if cer.ENABLED else "off"


def benchmark_combined_rows(report):
    """Rows of a tools/benchmark.py report (ESC-Net, CLIPer...) in the combined layout."""
    cer = _report_cer(report)
    y = report["yardstick"]
    rows = []
    for c in report["cases"]:
        model = report["meta_architecture"] + ("" if c["view"] == "single" else f" ({c['view']})")
        if c["precision"] != "fp32":
            model += f", {c['precision']}"
        rows.append(_combined_row(
            model, report["config_file"], c["image_size"], c["num_classes"], cer, c["median_s"],
            c["ratio_to_yardstick"], c.get("yardstick_median_s", y["median_s"]), y["input_size"],
            c["peak_memory_bytes"], c.get("memory_kind", "rss"),
        ))
    return rows


def format_combined_table(sed_reports, other_reports=()):
    """One markdown table: the SED reports' rows and those of tools/benchmark.py reports.

    Each time is also given as a ratio to its own model's yardstick (the CLIP image encoder at that
    model's input size, timed in the same process): the ratio travels between machines, the
    seconds compare models measured on the same machine.
    """
    lines = list(COMBINED_HEADER)
    for report in other_reports:
        lines += benchmark_combined_rows(report)
    for report in sed_reports:
        lines += sed_combined_rows(report)
    return "\n".join(lines)


def read_report(path, schemas):
    """A JSON report written by one of the benchmark tools (``schemas``: the accepted ``schema`` values)."""
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise EscnetError(f"benchmark report not found: {path!r}") from None
    except (OSError, ValueError) as err:
        raise EscnetError(f"cannot read benchmark report {path!r}: {err}") from None
    if not isinstance(report, dict) or report.get("schema") not in schemas:
        found = report.get("schema") if isinstance(report, dict) else None
        raise EscnetError(f"{path!r} is not a report of {' or '.join(schemas)} (schema {found!r})")
    return report


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
    parser.add_argument("--from-report", default="", metavar="JSON",
                        help="print the tables of a report this tool wrote earlier instead of measuring")
    parser.add_argument("--combine-with", default=[], nargs="+", metavar="JSON",
                        help="tools/benchmark.py reports (ESC-Net, CLIPer) to add to the combined table")
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
    others = [read_report(path, (BENCHMARK_SCHEMA,)) for path in args.combine_with]
    report = read_report(args.from_report, (SCHEMA,)) if args.from_report else run(args)
    print(format_table(report))
    print()
    print(format_combined_table([report], others))
    return report


if __name__ == "__main__":
    main()
