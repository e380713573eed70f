"""A web page to segment pictures with words (Gradio), served on this machine only by default.

    python demo/app.py --config-file configs/tiny.yaml --opts MODEL.WEIGHTS output/tiny/model_final.pth
    python demo/app.py --model ESC-Net=configs/vitb.yaml:escnet_vitb.pth \\
        --model SED=configs/sed_convnext_b.yaml:sed_b.pth --port 8080

Open http://127.0.0.1:7860 (or the ``--host``/``--port`` given), drop a picture or pick an
example, type a vocabulary (or choose a preset), pick a model and a score threshold, press
"Segment": the page shows the overlay with its legend and per-class pixel shares, and offers the
label map (PNG) and the JSON summary for download.

Models: ``--config-file FILE [--opts KEY VALUE ...]`` serves one model (as ``demo/demo.py`` and
``train_net.py`` take it; ``--opts`` belong to this model); each ``--model [NAME=]CONFIG[:WEIGHTS]``
adds one more (any escnet meta-architecture). All are loaded at start. Requests are queued and run
one at a time. Request handling (image reading, size limits, vocabulary syntax, outputs) lives in
``escnet.webapp``; every picture goes through ``escnet.Segmenter``, so the page and ``demo/demo.py``
give identical label maps. The page loads nothing from the internet (system fonts, no analytics).
"""

import argparse
import glob
import logging
import os
import signal
import sys
import tempfile
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import; Gradio must not
# phone home (it reads this before its first import).
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

from escnet.segmenter import Segmenter  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.webapp import (  # noqa: E402
    VOCABULARY_PRESETS,
    ModelSpec,
    SegmentationService,
    default_model_name,
    legend_html,
    message_html,
    parse_model_spec,
    preset_text,
)

logger = logging.getLogger("escnet")

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
# The bundled examples come from escnet's synthetic dataset (demo/examples/README.md): its classes.
EXAMPLE_VOCABULARY = "grass, water, sand, red ball, blue box, yellow kite"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_PIXELS = 1_000_000
CUSTOM_PRESET = "custom"
# System fonts only: Gradio's theme fonts otherwise come as font files or from Google Fonts.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "monospace")
# Gradio's cache (uploads, result copies): swept hourly of files older than a day.
CACHE_SWEEP_S = 3600
CACHE_MAX_AGE_S = 86400
ELEMENT_IDS = {
    "image": "input-image",
    "preset": "vocab-preset",
    "vocabulary": "vocab",
    "model": "model",
    "threshold": "threshold",
    "run": "run",
    "status": "status",
    "overlay": "overlay",
    "legend": "legend",
    "labels": "download-labels",
    "summary": "download-summary",
}


def get_parser():
    parser = argparse.ArgumentParser(description="Web page to segment pictures with any vocabulary (escnet).")
    parser.add_argument(
        "--config-file", metavar="FILE", help="config file or shipped config name of the first model (see --opts)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]CONFIG[:WEIGHTS]",
        help="one more model to offer (repeatable), e.g. SED=configs/sed_convnext_b.yaml:sed_b.pth; "
        "NAME defaults to the config's file name",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST}: this machine)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="pictures above N pixels are downscaled (aspect kept) before segmentation "
        f"(default {DEFAULT_MAX_PIXELS}); above PIL's decompression-bomb limit they are refused",
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="weight of class colours in the overlay (0..1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument(
        "--allow-random-weights", action="store_true", help="serve models without weights (random; for testing only)"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides of the --config-file model, e.g. MODEL.WEIGHTS output/model_final.pth",
    )
    return parser


def model_specs(args):
    """The ``ModelSpec`` of each model to serve: ``--config-file`` (with ``--opts``) first, then ``--model``."""
    specs = []
    if args.config_file:
        specs.append(ModelSpec(default_model_name(args.config_file), args.config_file, None, tuple(args.opts)))
    elif args.opts:
        raise EscnetError("--opts apply to the --config-file model: give --config-file (or weights in --model)")
    specs += [parse_model_spec(text) for text in args.model]
    if not specs:
        raise EscnetError("no model to serve: give --config-file FILE or --model [NAME=]CONFIG[:WEIGHTS]")
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise EscnetError(f"two models are named {name!r}: name them with --model NAME=CONFIG[:WEIGHTS]")
    return specs


def build_service(args, output_dir):
    """Load every model (one-line error for a bad config or checkpoint) into a ``SegmentationService``."""
    if not 0.0 <= args.opacity <= 1.0:
        raise EscnetError(f"--opacity must lie in 0..1, got {args.opacity}")
    if args.max_pixels < 1:
        raise EscnetError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    specs = model_specs(args)
    segmenters, info = {}, {}
    for spec in specs:
        logger.info(f"loading model {spec.name!r} ({spec.config})")
        try:
            segmenters[spec.name] = Segmenter(
                spec.config,
                weights=spec.weights,
                opts=spec.opts,
                device=args.device,
                allow_random_weights=args.allow_random_weights,
            )
        except EscnetError as err:
            raise EscnetError(f"model {spec.name!r}: {err}") from None
        info[spec.name] = {"config": spec.config}
    return SegmentationService(segmenters, args.max_pixels, output_dir, opacity=args.opacity, model_info=info)


def uploaded_file(payload):
    """``(path, original name)`` of the image box's raw upload (a Gradio ``FileData`` dict), or ``(None, None)``.

    The segmentation event takes its inputs unprocessed (``preprocess=False``): ``escnet.webapp``
    decodes the file itself, so a file that is not a picture or an oversized one gets escnet's own
    message on the page rather than a decoding error inside Gradio. Gradio has checked already that
    the path lies in its upload folder.
    """
    if not payload:
        return None, None
    return payload["path"], payload.get("orig_name") or os.path.basename(payload["path"])


def page_theme():
    """Gradio's default look with system fonts: nothing is fetched from the internet."""
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO_FONTS))


def example_images():
    return sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.png")))


def respond(service, image, vocabulary, model, threshold, progress=None, image_name=None):
    """Run one request; return the page's outputs (status, overlay, legend, label map, summary).

    ``image``: path of the uploaded picture (``image_name``: its name as uploaded).

    Bad input (``EscnetError``) and unexpected failures alike become a message on the page; the
    server keeps running.
    """
    try:
        response = service.segment(image, vocabulary, model, threshold, progress=progress, image_name=image_name)
    except EscnetError as err:
        return _failure(str(err))
    except Exception as err:  # a bug or an exhausted machine, not the user's fault: log it, keep serving
        logger.exception("request failed")
        first_line = (str(err).strip().splitlines() or [""])[0]
        return _failure(f"internal error ({type(err).__name__}: {first_line}); see the server log")
    size = response.summary["image_size"]
    done = (
        f"segmented {response.summary['input']} ({size['width']} x {size['height']}) with {model} "
        f"into {len(response.summary['vocabulary'])} classes in {response.summary['timing_s']['total']:.1f} s."
    )
    status = message_html(done, "done") + (message_html(response.note, "note") if response.note else "")
    return (
        status,
        response.overlay,
        legend_html(response.legend),
        gr.DownloadButton(value=response.label_map_path, interactive=True),
        gr.DownloadButton(value=response.summary_path, interactive=True),
    )


def _failure(message):
    return (
        message_html(message, "error"),
        None,
        "",
        gr.DownloadButton(value=None, interactive=False),
        gr.DownloadButton(value=None, interactive=False),
    )


def build_app(service):
    """The page (``gr.Blocks``) over ``service``; queued so that one request runs at a time."""
    ids = ELEMENT_IDS
    megapixels = f"{service.max_pixels / 1e6:g}"
    with gr.Blocks(
        title="escnet: segment pictures with words",
        analytics_enabled=False,
        delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S),
    ) as app:
        gr.Markdown(
            "# escnet: segment a picture with words\n"
            "Drop a picture (or pick an example), name the classes to find, press **Segment**. "
            f"Pictures above {megapixels} megapixels are downscaled first."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath", label="Picture", sources=["upload", "clipboard"], elem_id=ids["image"]
                )
                preset = gr.Dropdown(
                    [CUSTOM_PRESET, *VOCABULARY_PRESETS],
                    value=CUSTOM_PRESET,
                    label="Vocabulary preset",
                    elem_id=ids["preset"],
                )
                vocabulary = gr.Textbox(
                    label="Vocabulary",
                    lines=3,
                    max_lines=8,
                    placeholder="cat, sofa, window",
                    info="One line: classes separated by commas. Several lines: one class per line, "
                    "synonyms separated by commas (sofa, couch).",
                    elem_id=ids["vocabulary"],
                )
                with gr.Row():
                    model = gr.Dropdown(
                        service.model_names, value=service.model_names[0], label="Model", elem_id=ids["model"]
                    )
                    threshold = gr.Slider(
                        0.0,
                        1.0,
                        value=0.0,
                        step=0.01,
                        label="Score threshold",
                        info="pixels whose best class probability is lower stay unlabelled",
                        elem_id=ids["threshold"],
                    )
                run = gr.Button("Segment", variant="primary", elem_id=ids["run"])
                if example_images():
                    gr.Examples(
                        [[path, EXAMPLE_VOCABULARY] for path in example_images()],
                        inputs=[image, vocabulary],
                        label="Examples (escnet's synthetic shapes)",
                    )
            with gr.Column():
                status = gr.HTML(elem_id=ids["status"])
                overlay = gr.Image(
                    label="Segmentation", type="numpy", format="png", interactive=False, elem_id=ids["overlay"]
                )
                legend = gr.HTML(elem_id=ids["legend"])
                with gr.Row():
                    labels_file = gr.DownloadButton(
                        "Label map (PNG)", interactive=False, elem_id=ids["labels"], size="md"
                    )
                    summary_file = gr.DownloadButton(
                        "Summary (JSON)", interactive=False, elem_id=ids["summary"], size="md"
                    )

        def fill_preset(name):
            return gr.Textbox() if name == CUSTOM_PRESET else preset_text(name)

        def segment(upload, vocabulary, model, threshold, progress=gr.Progress(track_tqdm=True)):
            path, name = uploaded_file(upload)
            return respond(service, path, vocabulary, model, threshold, progress, image_name=name)

        preset.change(fill_preset, preset, vocabulary, queue=False)
        vocabulary.input(lambda: CUSTOM_PRESET, None, preset, queue=False)
        run.click(
            segment,
            [image, vocabulary, model, threshold],
            [status, overlay, legend, labels_file, summary_file],
            concurrency_limit=1,
            concurrency_id="segmentation",
            preprocess=False,  # raw inputs: see uploaded_file
            api_name="segment",
        )
    app.queue(default_concurrency_limit=1)
    return app


@cli_entry
def main(argv=None):
    """Serve the page until interrupted (Ctrl-C or SIGTERM)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="escnet")
    # `kill` stops the server as Ctrl-C does (Gradio closes it; the output folder is removed).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="escnet-app-") as output_dir:
        service = build_service(args, output_dir)
        app = build_app(service)
        logger.info(f"serving {', '.join(service.model_names)} on http://{args.host}:{args.port}")
        try:
            app.launch(
                server_name=args.host,
                server_port=args.port,
                theme=page_theme(),
                ssr_mode=False,
                show_error=False,
                run_history=False,  # its page offers uploading runs to the Hugging Face hub
                allowed_paths=[EXAMPLES_DIR],
                quiet=True,
            )
        except OSError as err:  # port taken, address not available here
            raise EscnetError(f"cannot serve on {args.host}:{args.port}: {str(err).splitlines()[0]}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
