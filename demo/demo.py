"""Segment pictures or a video with any vocabulary.

    python demo/demo.py --config-file configs/tiny.yaml --input photos/ "more/*.jpg" \\
        --vocab "cat,sofa,window" --output results/ --opts MODEL.WEIGHTS output/model_final.pth

Per image it writes ``<stem>_overlay.png`` (segmentation over the picture, legend of the classes
present, largest first), ``<stem>_labels.png`` (label map: class index per pixel, uint8 PNG, or
uint16 above 255 classes; unlabelled pixels hold 255, or 65535 in uint16) and
``<stem>_summary.json`` (vocabulary, per-class pixel share, image size, timing). With a single
input, ``--output`` may name the overlay file itself (``result.png`` -> ``result_labels.png``,
``result_summary.json``). ``--video-input`` writes a segmented copy of a video.
See demo/README.md.
"""

import argparse
import glob
import os
import sys
import time
import warnings
from dataclasses import dataclass

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import; keep stderr
# for this program's own messages.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

from escnet.data.label_io import write_label_map  # noqa: E402
from escnet.segmenter import Segmenter, read_image  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.utils.io import atomic_path, save_image_atomic, write_json_atomic  # noqa: E402
from escnet.utils.precision import PRECISIONS  # noqa: E402
from escnet.visualization import render_overlay, segmentation_summary  # noqa: E402
from escnet.vocabulary import load_vocabulary_file, parse_vocabulary_string  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm")
# Video containers we can write, with an OpenCV codec available in stock opencv-python builds.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v"}


def get_parser():
    parser = argparse.ArgumentParser(description="Segment pictures or a video with any vocabulary (escnet).")
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="config file, or a shipped config name (tiny, vitb, vitl)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="PATH", help="image files, glob patterns (quote them) or folders of images"
    )
    source.add_argument("--video-input", metavar="FILE", help="a video to segment into a new video")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", metavar="NAMES", help='comma-separated class names, e.g. "cat,sofa,window"')
    vocab.add_argument(
        "--vocab-file",
        metavar="FILE",
        help='JSON list or one class per line; an entry may hold synonyms ("sofa, couch")',
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="output folder; for a single input also a file (overlay .png/.jpg, video .mp4/.avi)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        metavar="P",
        help="leave pixels whose best class probability is below P unlabelled "
        "(label 255, or 65535 in uint16 maps); 0 labels every pixel",
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="weight of class colours in the overlay (0..1)")
    parser.add_argument(
        "--display-min-height",
        type=int,
        default=256,
        metavar="PIXELS",
        help="overlays of lower images are enlarged (integer factor, nearest neighbour) to stay legible; 0: never",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="inference precision: fp32, or bf16 autocast (faster on CPUs with AMX / AVX-512 BF16); "
        "default: TEST.PRECISION of the config (fp32)",
    )
    parser.add_argument(
        "--allow-random-weights", action="store_true", help="run without MODEL.WEIGHTS (random model; for testing only)"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth",
    )
    return parser


def read_vocabulary(args):
    """The vocabulary from ``--vocab`` or ``--vocab-file`` (validated: non-empty, no duplicates)."""
    if args.vocab is not None:
        return parse_vocabulary_string(args.vocab)
    return load_vocabulary_file(args.vocab_file)


@dataclass(frozen=True)
class ImageJob:
    """One input image and its output files, or the error that makes it unusable."""

    source: str
    overlay: str = ""
    labels: str = ""
    summary: str = ""
    error: str = ""


def expand_inputs(patterns):
    """Turn ``--input`` items into ``(path, error)`` pairs: files as given, globs and folders expanded.

    A pattern matching nothing, a missing path or a folder without images yields an error entry;
    a file reached twice is kept once.
    """
    entries, seen = [], set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f))
            )
            if not paths:
                entries.append((pattern, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)}): {pattern!r}"))
        elif os.path.exists(pattern) or not glob.has_magic(pattern):
            paths = [pattern]
        else:
            paths = sorted(glob.glob(pattern))
            if not paths:
                entries.append((pattern, f"no file matches {pattern!r}"))
        for path in paths:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                entries.append((path, ""))
    return entries


def plan_outputs(entries, output):
    """``ImageJob`` per input: ``output`` is a folder, or the overlay file when there is one input."""
    is_file = output.lower().endswith(IMAGE_EXTENSIONS)
    if is_file and len(entries) > 1:
        raise EscnetError(f"--output {output!r} names a file but there are {len(entries)} inputs; give a folder")
    if is_file:
        base = os.path.splitext(output)[0]
        path, error = entries[0]
        return [ImageJob(path, output, f"{base}_labels.png", f"{base}_summary.json", error)]
    if os.path.isfile(output):
        raise EscnetError(f"--output {output!r} is an existing file; give a folder (or an image file name)")
    jobs, used = [], set()
    for path, error in entries:
        stem = name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        copy = 1
        while name in used:  # same file name in two folders: "photo", "photo-2", ...
            copy += 1
            name = f"{stem}-{copy}"
        used.add(name)
        base = os.path.join(output, name)
        jobs.append(ImageJob(path, f"{base}_overlay.png", f"{base}_labels.png", f"{base}_summary.json", error))
    return jobs


def summarize(job, result, legend, timing, args, cfg):
    """The JSON summary of one segmented image; class shares and the unlabelled share sum to 1."""
    return {
        "input": job.source,
        **segmentation_summary(result, legend),
        "outputs": {"overlay": os.path.basename(job.overlay), "label_map": os.path.basename(job.labels)},
        "model": {
            "config": args.config_file,
            "weights": cfg.MODEL.WEIGHTS,
            "device": cfg.MODEL.DEVICE,
            "precision": args.precision or cfg.TEST.PRECISION,
        },
        "timing_s": timing,
    }


def segment_image(segmenter, job, vocabulary, args):
    """Segment one image and write its overlay, label map and summary (each file atomically)."""
    start = time.perf_counter()
    rgb = read_image(job.source)
    loaded = time.perf_counter()
    (result,) = segmenter.segment_rgb_arrays([rgb], vocabulary, args.score_threshold, return_probabilities=False)
    segmented = time.perf_counter()
    overlay, legend = render_overlay(
        rgb, result.labels, vocabulary, result.unlabelled, args.opacity, "side", args.display_min_height
    )
    try:
        save_image_atomic(job.overlay, overlay)
        write_label_map(job.labels, result.labels)
        timing = {"read": loaded - start, "segment": segmented - loaded, "total": time.perf_counter() - start}
        write_json_atomic(job.summary, summarize(job, result, legend, timing, args, segmenter.cfg))
    except OSError as err:
        raise EscnetError(f"cannot write the results of {job.source!r}: {err.strerror or err}") from None


def segment_images(args, vocabulary):
    """Segment every ``--input`` image; a bad input is reported and the others still processed."""
    jobs = plan_outputs(expand_inputs(args.input), args.output)
    if len(jobs) == 1 and jobs[0].error:
        raise EscnetError(jobs[0].error)
    if len(jobs) == 1:
        read_image(jobs[0].source)  # a single bad image fails before the model is built
    segmenter = build_segmenter(args)
    failures = 0
    for job in tqdm.tqdm(jobs, desc="segmenting", unit="image"):
        try:
            if job.error:
                raise EscnetError(job.error)
            segment_image(segmenter, job, vocabulary, args)
        except EscnetError as err:
            failures += 1
            tqdm.tqdm.write(f"error: {err}", file=sys.stderr)
    if failures:
        raise EscnetError(f"{failures} of {len(jobs)} inputs failed (see the errors above); the others were written")
    return len(jobs)


def video_output_path(video, output):
    """The output video file: ``output`` itself when it has a video extension, else ``<output>/<stem>.mp4``."""
    extension = os.path.splitext(output)[1].lower()
    if extension in VIDEO_CODECS:
        return output
    if extension:
        raise EscnetError(f"--output {output!r}: video output must end in {', '.join(VIDEO_CODECS)} (or be a folder)")
    if os.path.isfile(output):
        raise EscnetError(f"--output {output!r} is an existing file; give a folder or a video file name")
    stem = os.path.splitext(os.path.basename(video))[0]
    return os.path.join(output, f"{stem}_segmented.mp4")


def segment_video(args, vocabulary):
    """Segment every frame of ``--video-input`` into a video of the same size, frame rate and length."""
    if not os.path.isfile(args.video_input):
        raise EscnetError(f"video not found: {args.video_input!r}")
    output = video_output_path(args.video_input, args.output)
    capture = cv2.VideoCapture(args.video_input)
    try:
        if not capture.isOpened():
            raise EscnetError(f"cannot read video (unknown format or codec): {args.video_input!r}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if not fps > 0 or width <= 0 or height <= 0:
            raise EscnetError(f"cannot read video (no frame rate or size): {args.video_input!r}")
        segmenter = build_segmenter(args)
        codec = VIDEO_CODECS[os.path.splitext(output)[1].lower()]
        written = 0
        with atomic_path(output) as tmp:
            writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
            try:
                if not writer.isOpened():
                    raise EscnetError(f"cannot write video {output!r} with codec {codec}")
                with tqdm.tqdm(total=frames or None, desc="segmenting video", unit="frame") as progress:
                    while True:
                        ok, frame = capture.read()
                        if not ok:
                            break
                        rgb = np.ascontiguousarray(frame[:, :, ::-1])
                        (result,) = segmenter.segment_rgb_arrays(
                            [rgb], vocabulary, args.score_threshold, return_probabilities=False
                        )
                        overlay, _ = render_overlay(
                            rgb, result.labels, vocabulary, result.unlabelled, args.opacity, legend="inside"
                        )
                        writer.write(np.ascontiguousarray(overlay[:, :, ::-1]))
                        written += 1
                        progress.update(1)
            finally:
                writer.release()
            if written == 0:
                raise EscnetError(f"video has no readable frames: {args.video_input!r}")
    finally:
        capture.release()
    return written


def build_segmenter(args):
    return Segmenter(
        args.config_file,
        opts=args.opts,
        device=args.device,
        allow_random_weights=args.allow_random_weights,
        precision=args.precision,
    )


def check_options(args):
    if not 0.0 <= args.score_threshold <= 1.0:
        raise EscnetError(f"--score-threshold must lie in 0..1, got {args.score_threshold}")
    if not 0.0 <= args.opacity <= 1.0:
        raise EscnetError(f"--opacity must lie in 0..1, got {args.opacity}")


@cli_entry
def main(argv=None):
    """Run the demo on ``argv`` (default: ``sys.argv[1:]``); returns 0, exits 2 on bad input."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="escnet")
    check_options(args)
    vocabulary = read_vocabulary(args)
    if args.video_input:
        segment_video(args, vocabulary)
    else:
        segment_images(args, vocabulary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
