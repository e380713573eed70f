"""Resolving dataset names and their vocabularies from a config; building data loaders."""
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from torch.utils.data import DataLoader

from ..utils.errors import EscnetError
from ..utils.names import unknown_name_error
from ..utils.process import ParentWatchingWorkerInit
from ..vocabulary import load_vocabulary_file, validate_vocabulary

logger = logging.getLogger("escnet")

LIST_DATASETS_HINT = "list all: python tools/list_datasets.py"
# Key a mapper sets (instead of returning data) for a sample whose files it could not read,
# when DATALOADER.SKIP_CORRUPT_FILES is on; the value is the one-line reason.
SKIPPED_KEY = "escnet_skipped"


def check_dataset_registered(dataset_name):
    """Raise a one-line ``EscnetError`` (closest registered names) unless ``dataset_name`` is registered."""
    registered = DatasetCatalog.list()
    if dataset_name not in registered:
        raise unknown_name_error("dataset", dataset_name, registered, LIST_DATASETS_HINT)


def dataset_vocabulary(cfg, dataset_name, is_train):
    """The vocabulary (tuple of class entries) used for ``dataset_name``.

    ``MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON`` / ``TEST_CLASS_JSON`` override the dataset's
    ``metadata.stuff_classes`` when set; the override applies to every train / test dataset.
    """
    json_path = cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON if is_train else cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON
    if json_path:
        return load_vocabulary_file(json_path)
    check_dataset_registered(dataset_name)
    classes = MetadataCatalog.get(dataset_name).get("stuff_classes", None)
    if classes is None:
        raise EscnetError(f"dataset {dataset_name!r} has no stuff_classes in its metadata")
    return validate_vocabulary(classes, f"vocabulary of dataset {dataset_name!r}")


def default_vocabulary(cfg, is_train):
    """The vocabulary of the first train (or test) dataset, used when inputs carry none."""
    names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    json_path = cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON if is_train else cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON
    if not names and not json_path:
        raise EscnetError(
            f"no {'training' if is_train else 'test'} vocabulary: set DATASETS.{'TRAIN' if is_train else 'TEST'} "
            f"or MODEL.SEM_SEG_HEAD.{'TRAIN' if is_train else 'TEST'}_CLASS_JSON, or pass a vocabulary"
        )
    return dataset_vocabulary(cfg, names[0] if names else "", is_train)


# ---------------------------------------------------------------------------- data loaders
def _torch_loader(loader):
    """The ``torch.utils.data.DataLoader`` inside Detectron2's loader wrappers (or None)."""
    seen = 0
    while not isinstance(loader, DataLoader) and hasattr(loader, "dataset") and seen < 4:
        loader, seen = loader.dataset, seen + 1
    return loader if isinstance(loader, DataLoader) else None


def watch_parent_in_workers(loader):
    """Make ``loader``'s worker processes exit as soon as the process that started them dies.

    PyTorch's own watchdog misses a parent that died while the worker was starting; a worker
    left behind blocks on its queue for good and holds the run's output pipes open.
    """
    torch_loader = _torch_loader(loader)
    if torch_loader is not None and not isinstance(torch_loader.worker_init_fn, ParentWatchingWorkerInit):
        torch_loader.worker_init_fn = ParentWatchingWorkerInit(torch_loader.worker_init_fn)
    return loader


class SkipUnreadableSamples:
    """Iterate ``loader``'s batches without the samples a mapper marked as unreadable.

    Each skipped file is logged as a warning with the running count; a batch left empty is
    dropped. ``summary()`` gives the count for the log at the end of an evaluation.
    """

    def __init__(self, loader, description):
        self.loader = loader
        self.description = description
        self.skipped = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            kept = []
            for sample in batch:
                if isinstance(sample, dict) and SKIPPED_KEY in sample:
                    self.skipped += 1
                    logger.warning(
                        f"skipped an unreadable sample ({self.skipped} so far in {self.description}): "
                        f"{sample[SKIPPED_KEY]}"
                    )
                else:
                    kept.append(sample)
            if kept:
                yield kept
        if self.skipped:
            logger.warning(self.summary())

    def summary(self):
        return f"{self.description}: {self.skipped} unreadable sample(s) skipped (DATALOADER.SKIP_CORRUPT_FILES)"


def build_train_loader(cfg, mapper):
    """Detectron2's training loader over ``DATASETS.TRAIN`` with parent-watching workers.

    With ``DATALOADER.SKIP_CORRUPT_FILES`` unreadable samples are left out (and counted).
    """
    loader = watch_parent_in_workers(build_detection_train_loader(cfg, mapper=mapper))
    if cfg.DATALOADER.SKIP_CORRUPT_FILES:
        loader = SkipUnreadableSamples(loader, "training data " + ", ".join(cfg.DATASETS.TRAIN))
    return loader


def build_test_loader(cfg, dataset_name, mapper):
    """Detectron2's inference loader for ``dataset_name`` with parent-watching workers."""
    loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper, batch_size=cfg.TEST.IMS_PER_BATCH)
    loader = watch_parent_in_workers(loader)
    if cfg.DATALOADER.SKIP_CORRUPT_FILES:
        loader = SkipUnreadableSamples(loader, f"dataset {dataset_name!r}")
    return loader
