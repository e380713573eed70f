"""Resolving dataset names and their vocabularies from a config."""
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils.errors import EscnetError
from ..vocabulary import load_vocabulary_file, validate_vocabulary


def check_dataset_registered(dataset_name):
    """Raise a one-line ``EscnetError`` unless ``dataset_name`` is registered."""
    if dataset_name not in DatasetCatalog.list():
        known = ", ".join(sorted(DatasetCatalog.list()))
        raise EscnetError(f"unknown dataset {dataset_name!r}; registered datasets: {known}")


def dataset_vocabulary(cfg, dataset_name, is_train):
    """The vocabulary (tuple of class entries) used for ``dataset_name``.

    ``MODEL.ESCNET.TRAIN_CLASS_JSON`` / ``TEST_CLASS_JSON`` override the dataset's
    ``metadata.stuff_classes`` when set; the override applies to every train / test dataset.
    """
    json_path = cfg.MODEL.ESCNET.TRAIN_CLASS_JSON if is_train else cfg.MODEL.ESCNET.TEST_CLASS_JSON
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
    json_path = cfg.MODEL.ESCNET.TRAIN_CLASS_JSON if is_train else cfg.MODEL.ESCNET.TEST_CLASS_JSON
    if not names and not json_path:
        raise EscnetError(
            f"no {'training' if is_train else 'test'} vocabulary: set DATASETS.{'TRAIN' if is_train else 'TEST'} "
            f"or MODEL.ESCNET.{'TRAIN' if is_train else 'TEST'}_CLASS_JSON, or pass a vocabulary"
        )
    return dataset_vocabulary(cfg, names[0] if names else "", is_train)
