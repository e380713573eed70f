"""``Trainer``: Detectron2's ``DefaultTrainer`` with escnet's data, optimizer, evaluation and devices."""
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel

from ..data.build import build_test_loader, build_train_loader, check_dataset_registered, dataset_vocabulary
from ..data.dataset_mapper import SemanticSegmentationMapper
from ..evaluation import build_evaluator
from ..utils.io import write_json_atomic
from ..utils.memory import apply_memory_settings
from ..utils.precision import inference_precision
from .checkpoint import AtomicCheckpointer
from .optimizer import build_optimizer
from .setup import check_meta_architecture

logger = logging.getLogger("escnet")


def resolve_amp(cfg):
    """Return ``cfg`` with AMP disabled (and one warning) when the model does not run on CUDA."""
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning(
            f"SOLVER.AMP.ENABLED is set but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}: AMP needs CUDA; training in fp32."
        )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.AMP.ENABLED = False
        cfg.freeze()
    return cfg


def wrap_distributed(model):
    """DDP over processes when the world has >1 of them; CPU modules get no ``device_ids``.

    Buffers are broadcast from rank 0: ranks seed differently (Detectron2 seeds ``SEED + rank``),
    so randomly initialised buffers (SAM's Fourier positional encoding) would otherwise differ.
    """
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True, find_unused_parameters=False)


class Trainer(DefaultTrainer):
    """Train and evaluate escnet models with Detectron2's hooks, checkpointing and logging.

    Differences to ``DefaultTrainer``: semantic-segmentation mapper with per-dataset vocabulary,
    AdamW with per-group LR multipliers, CPU-aware AMP and DDP (gloo on CPU), atomic checkpoints,
    and a one-table summary when several test datasets are evaluated.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(resolve_amp(cfg), comm.get_world_size())
        for name in cfg.DATASETS.TRAIN:
            check_dataset_registered(name)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_distributed(model)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        check_meta_architecture(cfg.MODEL.META_ARCHITECTURE)
        apply_memory_settings(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg, mapper=SemanticSegmentationMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_registered(dataset_name)
        mapper = SemanticSegmentationMapper(cfg, is_train=False, dataset_name=dataset_name)
        return build_test_loader(cfg, dataset_name, mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator = build_evaluator(dataset_name, output_folder, distributed=comm.get_world_size() > 1)
        evaluator.check_vocabulary_size(len(dataset_vocabulary(cfg, dataset_name, is_train=False)))
        return evaluator

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate every ``DATASETS.TEST`` set with its own vocabulary; log one summary table."""
        if not cfg.DATASETS.TEST:
            logger.info("DATASETS.TEST is empty: nothing to evaluate")
            return OrderedDict()
        for name in cfg.DATASETS.TEST:
            check_dataset_registered(name)
        with inference_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE):  # fp32 unless bf16 is asked for
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            write_summary(cfg, results)
        return results


def benchmark_name(dataset_name):
    """Column header for a dataset: its ``benchmark_name`` metadata, else its registered name."""
    return MetadataCatalog.get(dataset_name).get("benchmark_name", dataset_name)


def write_summary(cfg, results):
    """Log a table (benchmarks as columns, mIoU) and write ``OUTPUT_DIR/inference/summary.json``."""
    if isinstance(results, OrderedDict) and "sem_seg" in results:  # a single dataset
        results = OrderedDict([(cfg.DATASETS.TEST[0], results)])
    names = [n for n in cfg.DATASETS.TEST if n in results]
    row = [f"{results[n]['sem_seg']['mIoU']:.1f}" for n in names]
    table = tabulate([row], headers=[benchmark_name(n) for n in names], tablefmt="pipe")
    logger.info("mIoU per benchmark:\n" + table)
    summary = OrderedDict(
        (n, {"benchmark": benchmark_name(n), **{k: results[n]["sem_seg"][k] for k in ("mIoU", "fwIoU", "mACC", "pACC")}})
        for n in names
    )
    write_json_atomic(os.path.join(cfg.OUTPUT_DIR, "inference", "summary.json"), summary)
