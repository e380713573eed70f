#!/usr/bin/env python
"""Benchmark an escnet model: latency, peak memory, text encoding, parameters and FLOPs.

Any meta-architecture that follows the model contract (docs/architecture.md) and exposes the
speed yardstick (``yardstick_input_size``, ``run_yardstick(images)``) can be measured. Random
weights are fine; to avoid any download pass e.g.
``--opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""``.

Example (the README's performance table):
    python tools/benchmark.py --config-file configs/vitb.yaml --num-classes 20,150,847 \\
        --output output/benchmark_vitb.json \\
        --opts MODEL.ESCNET.CLIP_PRETRAINED "" MODEL.ESCNET.SAM_CHECKPOINT ""

Per case (view x image size x vocabulary size Nc) it reports the median and minimum of
``--repeats`` timed forward passes after ``--warmup`` untimed ones (text features cached, as in
an evaluation), the ratio of the median to the yardstick's median (the CLIP image encoder alone
at the model's input size, timed in the same process right before and after the case, so that a
shared machine's drifting load mostly cancels out: the ratio is the figure that travels between
machines),
and the peak memory of the timed runs (after the warm-up, which also caches the text features):
the process's peak RSS on the CPU (the kernel's high-water mark, reset before them; it includes
the model's weights), or
``torch.cuda.max_memory_allocated`` on CUDA. Text encoding is timed separately, with every cache
bypassed, for each Nc. Parameters and fvcore FLOPs come from ``tools/count_params_flops.py``.
``--precision fp32,bf16`` runs every case in both precisions (bf16: autocast); the yardstick always
runs in fp32, so a bf16 case's ratio shows its speed-up.

Views: ``single`` (the model's global view: the image is resized to the input size) and
``sliding`` (``TEST.SLIDING_WINDOW True``: windows plus the global view; default image size: the
test-time short side ``INPUT.MIN_SIZE_TEST`` at 4:3). Cases run from the smallest to the largest
so that the allocator's retained memory from an earlier case does not inflate a later one.
The table goes to stdout and the JSON (atomically written) to ``--output``.
"""
import argparse
import datetime
import gc
import itertools
import logging
import math
import os
import platform
import statistics
import threading
import time
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402

from count_params_flops import count_model  # noqa: E402  (tools/ is this script's folder)
from escnet.segmenter import Segmenter, build_segmenter_config  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.utils.io import write_json_atomic  # noqa: E402
from escnet.utils.memory import release_free_heap  # noqa: E402
from escnet.utils.precision import inference_precision, validate_precision  # noqa: E402
from escnet.vocabulary import builtin_vocabulary  # noqa: E402

logger = logging.getLogger("escnet.benchmark")

SCHEMA = "escnet-benchmark/1"
VIEWS = ("single", "sliding")
VOCABULARY_SOURCES = ("ade847", "generated")
# Benchmark images: uniform noise, or a few flat colour regions (see benchmark_image).
IMAGES = ("noise", "regions")
# Grid of the flat colour regions of the "regions" image (rows x columns).
REGION_GRID = (3, 4)
# Aspect ratio (width / height) of the default sliding-window image (ADE20K-like 4:3 photos).
SLIDING_ASPECT = 4 / 3
# Seconds between two RSS samples where the kernel's peak-RSS counter cannot be reset.
RSS_SAMPLE_INTERVAL_S = 0.005
GIB = 1024**3


# ---------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of the process while a block runs: ``with PeakMemory(device) as peak: ...; peak.bytes``.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU: peak RSS. On Linux the
    kernel's high-water mark (``VmHWM``) is reset on entry (``/proc/self/clear_refs``) after
    returning freed heap to the system (``malloc_trim``); elsewhere a thread samples the RSS.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss"
        self.bytes = None
        self.start_bytes = None  # memory in use when the block started (weights, buffers, caches)
        self._sampler = None
        self._stop = threading.Event()

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
            return self
        release_free_heap()
        self.start_bytes = _current_rss()
        if not _reset_kernel_peak_rss():
            import psutil

            process = psutil.Process()
            self.bytes = process.memory_info().rss

            def sample():
                while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
                    self.bytes = max(self.bytes, process.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            import psutil

            self.bytes = max(self.bytes, psutil.Process().memory_info().rss)
        else:
            self.bytes = _kernel_peak_rss()
        return False


def _reset_kernel_peak_rss():
    """Reset Linux's peak-RSS counter to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _kernel_peak_rss() is not None
    except OSError:
        return False


def _current_rss():
    import psutil

    return int(psutil.Process().memory_info().rss)


def _kernel_peak_rss():
    """``VmHWM`` of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------- timing
def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(run, device, warmup, repeats):
    """Seconds of ``repeats`` calls of ``run()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def timing_summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": list(times)}


# ---------------------------------------------------------------------------------- inputs
def parse_int_list(text, option):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EscnetError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise EscnetError(f"{option} must list positive integers, got {text!r}")
    return values


def parse_precisions(text):
    values = [validate_precision(v.strip(), "--precision") for v in text.split(",") if v.strip()]
    if not values:
        raise EscnetError("--precision is empty")
    return list(dict.fromkeys(values))


def parse_sizes(text):
    """``"384,640x853"`` -> ``[(384, 384), (640, 853)]`` (``S`` or ``HxW``)."""
    sizes = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        parts = item.split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise EscnetError(f"--sizes: {item!r} is not S or HxW") from None
        if len(values) not in (1, 2) or min(values) < 1:
            raise EscnetError(f"--sizes: {item!r} is not S or HxW")
        sizes.append((values[0], values[-1]))
    if not sizes:
        raise EscnetError("--sizes is empty")
    return sizes


def benchmark_vocabulary(num_classes, source):
    """``num_classes`` distinct class names: the first ADE20K-847 names, or generated ones."""
    if source == "ade847":
        names = builtin_vocabulary("ade847")
        if num_classes <= len(names):
            return tuple(names[:num_classes])
        extra = [f"object category {i}" for i in range(len(names), num_classes)]
        return tuple(names) + tuple(extra)
    return tuple(f"object category {i}" for i in range(num_classes))


def default_image_size(cfg, model, view):
    """Single view: the yardstick (input) size; sliding: short side ``INPUT.MIN_SIZE_TEST`` at 4:3."""
    if view == "single":
        return tuple(model.yardstick_input_size)
    short = min(cfg.INPUT.MIN_SIZE_TEST) if isinstance(cfg.INPUT.MIN_SIZE_TEST, (list, tuple)) else cfg.INPUT.MIN_SIZE_TEST
    return (int(short), int(math.ceil(short * SLIDING_ASPECT)))


def check_contract(model):
    missing = [a for a in ("yardstick_input_size", "run_yardstick") if not hasattr(model, a)]
    if missing:
        raise EscnetError(
            f"{type(model).__name__} lacks {', '.join(missing)}: the benchmark's yardstick contract "
            "(docs/architecture.md)"
        )


# ---------------------------------------------------------------------------------- measuring
def build_model(args, view):
    """The model of ``--config-file`` for ``view`` (eval mode), and its frozen config."""
    # no on-disk text cache: text encoding is timed for real (latencies use the in-memory cache)
    opts = ["MODEL.TEXT_CACHE.ENABLED", "False"] + list(args.opts) + ["TEST.SLIDING_WINDOW", str(view == "sliding")]
    cfg = build_segmenter_config(args.config_file, opts=opts, device=args.device)
    torch.manual_seed(args.seed)  # the weights no checkpoint sets: the same in every run
    segmenter = Segmenter(cfg, allow_random_weights=True)
    check_contract(segmenter.model)
    return cfg, segmenter.model


def measure_yardstick(model, device, warmup, repeats):
    """The CLIP image encoder alone at the model's input size, always in fp32 (so that a bf16
    case's ratio shows its speed-up)."""
    height, width = model.yardstick_input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, height, width, generator=generator).to(device)
    with torch.no_grad(), PeakMemory(device) as peak:
        times = time_calls(lambda: model.run_yardstick(images), device, warmup, repeats)
    return {"input_size": [height, width], **timing_summary(times), "peak_memory_bytes": peak.bytes}


def benchmark_image(kind, image_size):
    """``3 x H x W`` uint8 benchmark image (seeded).

    ``noise``: every pixel random. ``regions``: ``REGION_GRID`` flat colour rectangles, a stand-in
    for a photo of a few objects: with random weights a noise image makes every pixel rank the
    classes independently, so a per-pixel top-k union (category early rejection) keeps most of a
    large vocabulary, where a trained model on a real scene keeps a few dozen classes; pixels of
    one flat region rank alike.
    """
    generator = torch.Generator().manual_seed(0)
    if kind == "noise":
        return torch.randint(0, 256, (3, *image_size), dtype=torch.uint8, generator=generator)
    colours = torch.randint(0, 256, (1, 3, *REGION_GRID), generator=generator).float()
    return torch.nn.functional.interpolate(colours, size=image_size, mode="nearest")[0].to(torch.uint8)


def measure_case(model, device, precision, image_size, vocabulary, warmup, repeats, image_kind="noise"):
    """Latency and peak memory of the model's inference on one benchmark image with ``vocabulary``.

    Also counts the classes with a non-zero score somewhere (``classes_scored``): with category
    early rejection, rejected classes score exactly 0, so this is the number that were kept.
    """
    image = benchmark_image(image_kind, image_size)
    inputs = [{"image": image, "height": image_size[0], "width": image_size[1], "vocabulary": vocabulary}]
    last = {}

    def run():
        last.clear()  # the previous run's output is not kept while this one runs
        (output,) = model(inputs)
        expected = (len(vocabulary), *image_size)
        if tuple(output["sem_seg"].shape) != expected:
            raise RuntimeError(f"model returned sem_seg {tuple(output['sem_seg'].shape)}, expected {expected}")
        last["sem_seg"] = output["sem_seg"]

    with torch.no_grad(), inference_precision(precision, device):
        time_calls(run, device, max(warmup, 1), 0)  # the first call also caches the text
        last.clear()
        with PeakMemory(device) as peak:  # the timed runs only: text cached, as in an evaluation
            times = time_calls(run, device, 0, repeats)
    scored = int((last.pop("sem_seg").flatten(1).amax(dim=1) > 0).sum())
    return {
        **timing_summary(times),
        "peak_memory_bytes": peak.bytes,
        "start_memory_bytes": peak.start_bytes,
        "memory_kind": peak.kind,
        "image": image_kind,
        "classes_scored": scored,
    }


def measure_text(model, device, precision, vocabulary, repeats):
    """Seconds to encode ``vocabulary`` with every cache bypassed (``encode_vocabulary``), or None."""
    if not hasattr(model, "encode_vocabulary"):
        return None
    with torch.no_grad(), inference_precision(precision, device):
        model.encode_vocabulary(vocabulary[:1])  # warm-up: first-call costs (tokenizer, kernels)
        times = time_calls(lambda: model.encode_vocabulary(vocabulary), device, 0, repeats)
    summary = timing_summary(times)
    return {"num_classes": len(vocabulary), **summary, "per_class_ms": 1000 * summary["median_s"] / len(vocabulary)}


def parameter_counts(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total}, trainable


def run_benchmark(args):
    torch.set_num_threads(args.threads)
    device = None
    report = {
        "schema": SCHEMA,
        "config_file": args.config_file,
        "opts": list(args.opts),
        "precisions": list(args.precision),
        "threads": args.threads,
        "seed": args.seed,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "vocabulary_source": args.vocabulary,
        "image": args.image,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cases": [],
        "text": [],
    }
    num_classes = sorted(set(args.num_classes))
    for view in args.views:
        cfg, model = build_model(args, view)
        device = torch.device(cfg.MODEL.DEVICE)
        if "yardstick" not in report:
            report.update(
                meta_architecture=cfg.MODEL.META_ARCHITECTURE,
                device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else report["processor"],
            )
            logger.info("yardstick: CLIP image encoder at %s", tuple(model.yardstick_input_size))
            report["yardstick"] = measure_yardstick(model, device, args.warmup, args.repeats)
            if not args.no_text:
                for n in num_classes:
                    logger.info("text encoding: %d classes", n)
                    for precision in args.precision:
                        text = measure_text(model, device, precision, benchmark_vocabulary(n, args.vocabulary),
                                            args.text_repeats)
                        if text is not None:
                            report["text"].append({"precision": precision, **text})
        sizes = args.sizes or [default_image_size(cfg, model, view)]
        for size in sorted(sizes, key=lambda s: s[0] * s[1]):
            for n, precision in itertools.product(num_classes, args.precision):
                logger.info("%s view, %dx%d, %d classes, %s", view, size[0], size[1], n, precision)
                # the yardstick right before and after the case: on a shared machine the load drifts
                before = measure_yardstick(model, device, 1, args.repeats)["times_s"]
                case = measure_case(model, device, precision, size, benchmark_vocabulary(n, args.vocabulary),
                                    args.warmup, args.repeats, args.image)
                local = before + measure_yardstick(model, device, 1, args.repeats)["times_s"]
                report["yardstick"]["times_s"] += local
                case = {"view": view, "image_size": list(size), "num_classes": n, "precision": precision, **case}
                case["yardstick_median_s"] = statistics.median(local)
                case["ratio_to_yardstick"] = case["median_s"] / case["yardstick_median_s"]
                report["cases"].append(case)
        if "params" not in report:
            report["params"], report["trainable_params"] = parameter_counts(model)
            if not args.no_flops:
                height, width = model.yardstick_input_size
                report["flops"] = []
                for n in args.flops_num_classes or num_classes[:1]:
                    logger.info("FLOPs: %d classes", n)
                    counted = count_model(model, n, height, width)
                    report["params"], report["trainable_params"] = counted["params"], counted["trainable"]
                    report["flops"].append({"num_classes": n, "image_size": [height, width], "gflops": counted["gflops"]})
        del model
        gc.collect()
    times = report["yardstick"]["times_s"]
    report["yardstick"].update(median_s=statistics.median(times), min_s=min(times))
    return report


# ---------------------------------------------------------------------------------- output
def format_table(report):
    yardstick = report["yardstick"]
    lines = [
        f"config: {report['config_file']}  ({report['meta_architecture']}, {report['device']}, "
        f"{report['threads']} threads, median of {report['repeats']} after {report['warmup']} warm-up)",
        f"yardstick (CLIP image encoder alone, fp32, {yardstick['input_size'][0]}x{yardstick['input_size'][1]}): "
        f"median {yardstick['median_s']:.3f} s, min {yardstick['min_s']:.3f} s",
        "",
        f"{'view':8s} {'image':>10s} {'Nc':>5s} {'prec':>5s} {'median s':>9s} {'min s':>9s} {'x CLIP':>8s} "
        f"{'peak GB':>8s} {'scored':>7s}",
    ]
    for case in report["cases"]:
        size = f"{case['image_size'][0]}x{case['image_size'][1]}"
        lines.append(
            f"{case['view']:8s} {size:>10s} {case['num_classes']:5d} {case['precision']:>5s} "
            f"{case['median_s']:9.3f} {case['min_s']:9.3f} "
            f"{case['ratio_to_yardstick']:8.1f} {case['peak_memory_bytes'] / GIB:8.2f} {case['classes_scored']:7d}"
        )
    kind = report["cases"][0]["memory_kind"] if report["cases"] else "rss"
    lines.append(f"(peak memory: {'process peak RSS' if kind == 'rss' else 'torch.cuda.max_memory_allocated'}; "
                 f"scored: classes with a non-zero score somewhere, i.e. kept by category early rejection; "
                 f"image: {report['image']})")
    if report["text"]:
        lines.append("")
        lines.append(f"{'text encoding':14s} {'Nc':>5s} {'prec':>5s} {'median s':>9s} {'ms/class':>9s} {'x CLIP':>8s}")
        for text in report["text"]:
            lines.append(
                f"{'':14s} {text['num_classes']:5d} {text['precision']:>5s} {text['median_s']:9.3f} "
                f"{text['per_class_ms']:9.2f} {text['median_s'] / yardstick['median_s']:8.1f}"
            )
    lines.append("")
    params = report["params"]
    lines.append(f"parameters: {params['total'] / 1e6:.1f}M total, {report['trainable_params'] / 1e6:.1f}M trainable")
    for flops in report.get("flops", []):
        gflops = flops["gflops"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in gflops.items() if k != "total")
        lines.append(f"GFLOPs at Nc {flops['num_classes']}: {gflops['total']:.2f} ({parts})")
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="model config file or shipped name (vitb, vitl, tiny)")
    parser.add_argument("--num-classes", type=lambda t: parse_int_list(t, "--num-classes"), default=[20, 150, 847],
                        help="comma-separated vocabulary sizes (default: 20,150,847)")
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="comma-separated image sizes S or HxW (default: the model's input size; "
                        "sliding: INPUT.MIN_SIZE_TEST short side at 4:3)")
    parser.add_argument("--views", type=lambda t: [v.strip() for v in t.split(",") if v.strip()], default=["single"],
                        help=f"comma-separated views among {', '.join(VIEWS)} (default: single)")
    parser.add_argument("--vocabulary", choices=VOCABULARY_SOURCES, default="ade847",
                        help="class names: the first Nc ADE20K-847 names (default) or generated unique names")
    parser.add_argument("--image", choices=IMAGES, default="noise",
                        help="benchmark image: uniform noise (default) or a few flat colour regions (a scene-like "
                        "input for category early rejection with random weights)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument("--precision", type=parse_precisions, default=["fp32"],
                        help="comma-separated precisions among fp32, bf16 (autocast); default fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation of weights no checkpoint loads (default: 0), so "
                        "that runs with random weights, e.g. the classes category early rejection keeps, repeat")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default: 3)")
    parser.add_argument("--text-repeats", type=int, default=1, help="timed text encodings per Nc (default: 1)")
    parser.add_argument("--flops-num-classes", type=lambda t: parse_int_list(t, "--flops-num-classes"), default=None,
                        help="vocabulary sizes of the FLOP count (one traced forward each; default: the smallest Nc)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument("--no-text", action="store_true", help="skip timing the text encoder")
    parser.add_argument("--output", default="", help="JSON report path (default: OUTPUT_DIR/benchmark.json)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def check_args(args):
    unknown = [v for v in args.views if v not in VIEWS]
    if unknown or not args.views:
        raise EscnetError(f"--views {','.join(args.views)}: use any of {', '.join(VIEWS)}")
    for option in ("threads", "repeats", "text_repeats"):
        if getattr(args, option) < 1:
            raise EscnetError(f"--{option.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise EscnetError("--warmup must be >= 0")
    if len(args.opts) % 2:
        raise EscnetError(f"--opts needs KEY VALUE pairs, got {len(args.opts)} items")


@cli_entry
def main(argv=None):
    args = get_parser().parse_args(argv)
    check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_benchmark(args)
    output = args.output or os.path.join(
        build_segmenter_config(args.config_file, opts=args.opts, device=args.device).OUTPUT_DIR, "benchmark.json"
    )
    print(format_table(report), flush=True)
    write_json_atomic(output, report)
    logger.info("report written to %s", output)
    return report


if __name__ == "__main__":
    main()
