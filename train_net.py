#!/usr/bin/env python
"""Train or evaluate escnet models (Detectron2 command line).

    python train_net.py --config-file configs/vitl.yaml --num-gpus 4
    python train_net.py --config-file configs/vitl.yaml --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file configs/tiny.yaml --resume      # continue a killed run
    python train_net.py --list datasets    # or meta-architectures, config-keys, clip-models
"""
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import sys  # noqa: E402

from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import escnet  # noqa: F401,E402  (registers datasets, models, evaluators)
from escnet.data.build import check_dataset_registered  # noqa: E402
from escnet.engine import AtomicCheckpointer, Trainer, load_config  # noqa: E402
from escnet.engine.launch import launch  # noqa: E402
from escnet.engine.listing import LIST_CHOICES, list_names  # noqa: E402
from escnet.modeling.trained_weights import needs_trained_weights  # noqa: E402
from escnet.utils.compat import report_compiled_ops  # noqa: E402
from escnet.utils.errors import EscnetError, cli_entry  # noqa: E402
from escnet.utils.precision import PRECISIONS, validate_precision  # noqa: E402


def setup(args):
    cfg = load_config(args.config_file, args.opts, freeze=False)
    if getattr(args, "precision", None):  # inference precision (evaluation), as TEST.PRECISION
        cfg.TEST.PRECISION = args.precision
    validate_precision(cfg.TEST.PRECISION, "TEST.PRECISION")
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="escnet")
    report_compiled_ops()
    cfg.freeze()
    return cfg


@cli_entry
def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise EscnetError("--eval-only needs DATASETS.TEST: name at least one dataset to evaluate")
        model = Trainer.build_model(cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and needs_trained_weights(model) and not (args.resume and checkpointer.has_checkpoint()):
            raise EscnetError(
                "--eval-only needs trained weights: pass MODEL.WEIGHTS /path/to/model.pth "
                "(or --resume with a checkpoint in OUTPUT_DIR)"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        print(f"training finished; checkpoints and logs in {cfg.OUTPUT_DIR}", flush=True)
    return results


@cli_entry
def check_before_launch(args):
    """Fail once, in the launching process, on a bad config or dataset name (not once per worker).

    Returns the config (its ``LAUNCH`` keys set the launcher's timeouts).
    """
    cfg = load_config(args.config_file, args.opts)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_dataset_registered(name)
    return cfg


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--list``; ``--dist-url`` defaults to
    ``auto`` (a free local port), so that two runs on one machine never share a port."""
    parser = default_argument_parser()
    parser.set_defaults(dist_url="auto")
    parser.add_argument("--list", choices=LIST_CHOICES, help="print every known name of this kind and exit")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="inference precision (fp32, bf16); default TEST.PRECISION"
    )
    return parser


@cli_entry
def print_names(args):
    print("\n".join(list_names(args.list, args.config_file)))


def cli(argv=None):
    args = argument_parser().parse_args(argv)
    if args.list:
        print_names(args)
        sys.exit(0)
    print("Command Line Args:", args)
    timeouts = {}
    if args.num_gpus * args.num_machines > 1:
        cfg = check_before_launch(args)
        timeouts = {"timeout": cfg.LAUNCH.COLLECTIVE_TIMEOUT, "heartbeat_timeout": cfg.LAUNCH.HEARTBEAT_TIMEOUT}
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        **timeouts,
    )


if __name__ == "__main__":
    cli()
