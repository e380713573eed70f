"""Dataset mapper for semantic segmentation: Detectron2 dicts -> model inputs."""
import copy
import struct

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..utils.errors import EscnetError
from .build import SKIPPED_KEY, dataset_vocabulary
from .label_io import read_label_map


def _reason(err):
    """Why PIL could not read a file, in a few words."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image, or damaged"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build_train_augmentations(cfg):
    """Resize (shortest edge), category-area-constrained crop, photometric jitter, flip."""
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        # SSD-style photometric distortion from Detectron2's transforms.
        augs += [
            T.RandomBrightness(0.875, 1.125),
            T.RandomContrast(0.5, 1.5),
            T.RandomSaturation(0.5, 1.5),
        ]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs


def build_test_augmentations(cfg):
    """Resize so the shortest edge is ``INPUT.MIN_SIZE_TEST`` (640 for the benchmarks)."""
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]


class SemanticSegmentationMapper:
    """Map one dataset dict to ``{"image": 3 x H x W uint8, "sem_seg": H x W int64, "vocabulary", ...}``.

    Ground-truth pixels equal to the dataset's ``ignore_label`` become ``ignore_value`` (the
    model's), so datasets with other ignore encodings (65535 in uint16 TIFF) train alike.
    With ``skip_unreadable`` (``DATALOADER.SKIP_CORRUPT_FILES``) a sample whose image or label
    cannot be read maps to ``{SKIPPED_KEY: reason, ...}``, which escnet's loaders drop and count.
    """

    @configurable
    def __init__(
        self,
        *,
        is_train,
        augmentations,
        image_format,
        vocabulary,
        dataset_ignore_label,
        ignore_value,
        dataset_name="",
        skip_unreadable=False,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.vocabulary = tuple(vocabulary)
        self.dataset_ignore_label = dataset_ignore_label
        self.ignore_value = ignore_value
        self.dataset_name = dataset_name
        self.skip_unreadable = skip_unreadable

    @classmethod
    def from_config(cls, cfg, is_train=True, dataset_name=None):
        if dataset_name is None:
            dataset_name = (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)[0]
        ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        vocabulary = dataset_vocabulary(cfg, dataset_name, is_train)
        dataset_ignore_label = MetadataCatalog.get(dataset_name).get("ignore_label", ignore_value)
        if is_train:
            # One mapper serves the concatenation of all training sets: they must agree.
            for other in cfg.DATASETS.TRAIN:
                if (dataset_vocabulary(cfg, other, True), MetadataCatalog.get(other).get("ignore_label", ignore_value)) != (
                    vocabulary,
                    dataset_ignore_label,
                ):
                    raise EscnetError(
                        f"training sets {dataset_name!r} and {other!r} differ in classes or ignore label; "
                        "train on sets that share them"
                    )
            if len(vocabulary) > ignore_value:
                raise EscnetError(
                    f"{len(vocabulary)} training classes but MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore_value}, "
                    "a class id; raise IGNORE_VALUE above the number of classes"
                )
        return {
            "is_train": is_train,
            "augmentations": build_train_augmentations(cfg) if is_train else build_test_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "vocabulary": vocabulary,
            "dataset_ignore_label": dataset_ignore_label,
            "ignore_value": ignore_value,
            "dataset_name": ", ".join(cfg.DATASETS.TRAIN) if is_train else dataset_name,
            "skip_unreadable": cfg.DATALOADER.SKIP_CORRUPT_FILES,
        }

    def __call__(self, dataset_dict):
        """The model input for ``dataset_dict``; an unreadable file is a one-line ``EscnetError``
        naming the file and the dataset, or (``skip_unreadable``) a record marked as skipped."""
        try:
            return self._map(dataset_dict)
        except EscnetError as err:
            if not self.skip_unreadable:
                raise
            return {
                SKIPPED_KEY: str(err),
                "file_name": dataset_dict.get("file_name", ""),
                # Detectron2's aspect-ratio grouping reads these before escnet drops the record.
                "height": dataset_dict.get("height", 0),
                "width": dataset_dict.get("width", 0),
            }

    def _read_image(self, dataset_dict):
        path = dataset_dict["file_name"]
        dataset = dataset_dict.get("dataset_name", self.dataset_name)
        try:
            return utils.read_image(path, format=self.image_format)
        except FileNotFoundError:
            raise EscnetError(f"dataset {dataset!r}: image {path} is missing") from None
        except (OSError, ValueError, SyntaxError) as err:  # PIL: truncated, corrupt or not an image
            raise EscnetError(f"dataset {dataset!r}: cannot read image {path} ({_reason(err)})") from None

    def _check_label_readable(self, dataset_dict):
        """At test time the evaluator reads the label: check now that it can (PNG checksums)."""
        path = dataset_dict["sem_seg_file_name"]
        dataset = dataset_dict.get("dataset_name", self.dataset_name)
        try:
            with Image.open(path) as img:
                img.verify()
        except FileNotFoundError:
            raise EscnetError(f"dataset {dataset!r}: label map {path} is missing") from None
        except (OSError, ValueError, SyntaxError, struct.error) as err:
            raise EscnetError(f"dataset {dataset!r}: cannot read label map {path} ({_reason(err)})") from None

    def _read_labels(self, dataset_dict):
        dataset = dataset_dict.get("dataset_name", self.dataset_name)
        try:
            return read_label_map(dataset_dict["sem_seg_file_name"])
        except EscnetError as err:
            raise EscnetError(f"dataset {dataset!r}: {err}") from None

    def _map(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict and not self.is_train:
            self._check_label_readable(dataset_dict)
        if "sem_seg_file_name" in dataset_dict and self.is_train:
            labels = self._read_labels(dataset_dict)
            # float64 holds every label exactly and is resized with "nearest" by Detectron2.
            sem_seg = np.where(labels == self.dataset_ignore_label, self.ignore_value, labels).astype(np.float64)
            if sem_seg.shape != image.shape[:2]:
                raise EscnetError(
                    f"label {dataset_dict['sem_seg_file_name']} is {sem_seg.shape}, image is {image.shape[:2]}"
                )
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        dataset_dict["vocabulary"] = self.vocabulary
        dataset_dict.setdefault("dataset_name", self.dataset_name)  # per-dataset protocols (CLIPer)
        return dataset_dict
