"""Semantic-segmentation evaluation: a confusion matrix accumulated per image, summed over processes.

Metrics follow Detectron2's ``SemSegEvaluator`` definitions exactly (so numbers are comparable
with CAT-Seg/SED/SAN papers), without keeping any per-image prediction: memory is one
``K x K`` int64 matrix per process (5.7 MB for the 847 ADE classes).
"""
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..data.label_io import read_label_map
from ..utils.errors import EscnetError
from ..utils.io import atomic_path, write_json_atomic


def confusion_matrix(gt, pred, num_classes, ignore_label):
    """``K x K`` int64 counts ``[gt, pred]`` over pixels whose gt is neither ``ignore_label`` nor >= K."""
    gt = np.asarray(gt, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in 0..{num_classes - 1}, got {pred.min()}..{pred.max()}")
    valid = (gt != ignore_label) & (gt >= 0) & (gt < num_classes)
    index = gt[valid] * num_classes + pred[valid]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(conf, class_names):
    """mIoU, fwIoU, mACC, pACC (percent) and per-class IoU/ACC from a ``K x K`` confusion matrix.

    As in Detectron2: classes absent from the ground truth get no IoU/ACC entry (NaN), but a
    class predicted without being present counts in the mIoU denominator.
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    acc_valid = pos_gt > 0
    iou_valid = (pos_gt + pos_pred) > 0
    acc = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou[acc_valid] = tp[acc_valid] / union[acc_valid]
    total = pos_gt.sum()
    weights = pos_gt / total if total > 0 else np.zeros_like(pos_gt)
    results = OrderedDict()
    results["mIoU"] = 100 * np.sum(iou[acc_valid]) / max(np.sum(iou_valid), 1)
    results["fwIoU"] = 100 * np.sum(iou[acc_valid] * weights[acc_valid])
    results["mACC"] = 100 * np.sum(acc[acc_valid]) / max(np.sum(acc_valid), 1)
    results["pACC"] = 100 * np.sum(tp) / total if total > 0 else float("nan")
    for name, value in zip(class_names, iou):
        results[f"IoU-{name}"] = 100 * value
    for name, value in zip(class_names, acc):
        results[f"ACC-{name}"] = 100 * value
    return results


class SemSegEvaluator(DatasetEvaluator):
    """Evaluate ``outputs[i]["sem_seg"]`` (``Nc x H x W`` scores) against the dataset's label files.

    Ground truth is read from ``sem_seg_file_name`` at its stored resolution; predictions must
    have that resolution (the model resizes to ``height`` x ``width``).
    """

    def __init__(self, dataset_name, distributed=True, output_dir=None):
        meta = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.ignore_label = meta.ignore_label
        self.class_names = self._class_names(meta)
        self.num_classes = len(self.class_names)
        self._logger = logging.getLogger(__name__)
        self._conf = None

    def _class_names(self, meta):
        return display_names(meta.stuff_classes)

    def check_vocabulary_size(self, size):
        """Raise ``EscnetError`` unless a vocabulary of ``size`` entries fits the ground truth's classes."""
        if size != self.num_classes:
            raise EscnetError(
                f"dataset {self.dataset_name!r}: the test vocabulary has {size} classes but the ground truth "
                f"has {self.num_classes}; a TEST_CLASS_JSON must list the dataset's classes in its order"
            )

    def map_prediction(self, pred):
        """Map predicted vocabulary indices to evaluation classes (identity here)."""
        return pred

    def reset(self):
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).to(torch.int64).cpu().numpy()
            gt = read_label_map(inp["sem_seg_file_name"])
            if gt.shape != pred.shape:
                raise EscnetError(
                    f"prediction {pred.shape} and label {gt.shape} differ in size for {inp['sem_seg_file_name']}"
                )
            self._conf += confusion_matrix(gt, self.map_prediction(pred), self.num_classes, self.ignore_label)

    def evaluate(self):
        conf = self._conf
        if self.distributed:
            comm.synchronize()
            gathered = comm.all_gather(conf)
            if not comm.is_main_process():
                return None
            conf = np.sum(gathered, axis=0)
        results = segmentation_metrics(conf, self.class_names)
        self._logger.info(self._format_table(results))
        if self.output_dir:
            with atomic_path(os.path.join(self.output_dir, "confusion_matrix.npy")) as tmp:
                np.save(tmp, conf)
            write_json_atomic(
                os.path.join(self.output_dir, "sem_seg_metrics.json"),
                {"dataset": self.dataset_name, **{k: _json_float(v) for k, v in results.items()}},
            )
        return OrderedDict(sem_seg=results)

    def _format_table(self, results):
        summary = tabulate(
            [[f"{results[k]:.2f}" for k in ("mIoU", "fwIoU", "mACC", "pACC")]],
            headers=["mIoU", "fwIoU", "mACC", "pACC"],
            tablefmt="pipe",
        )
        per_class = [(name, results[f"IoU-{name}"]) for name in self.class_names]
        rows = [
            list(itertools.chain.from_iterable((n, "-" if np.isnan(v) else f"{v:.2f}") for n, v in group))
            for group in _chunks(per_class, 3)
        ]
        classes = tabulate(rows, headers=["class", "IoU"] * 3, tablefmt="pipe")
        return f"Semantic segmentation on {self.dataset_name}:\n{summary}\nPer-class IoU:\n{classes}"


class SemSegBackgroundEvaluator(SemSegEvaluator):
    """Evaluation with a background class whose vocabulary holds several proxy names (PASCAL VOC-20b).

    Metadata ``background_class_index`` (b) gives the background's label in the ground truth;
    vocabulary entries b, b+1, ... all stand for background, so predictions >= b count as b.
    """

    def _class_names(self, meta):
        index = meta.background_class_index
        return display_names(meta.stuff_classes[:index]) + ["background"]

    def check_vocabulary_size(self, size):
        if size < self.num_classes:
            raise EscnetError(
                f"dataset {self.dataset_name!r}: the test vocabulary has {size} classes; it needs the "
                f"{self.num_classes - 1} object classes followed by at least one background name"
            )

    def map_prediction(self, pred):
        return np.minimum(pred, self.num_classes - 1)


def display_names(entries):
    """Short class names for tables and metric keys: an entry's first synonym, or the whole
    entry where first synonyms repeat (ADE-847 has e.g. several "bag, ..." entries)."""
    first = [entry.split(",")[0].strip() for entry in entries]
    counts = {name: first.count(name) for name in first}
    return [name if counts[name] == 1 else entry for name, entry in zip(first, entries)]


def _chunks(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


def _json_float(value):
    return None if isinstance(value, float) and np.isnan(value) else float(value)
