"""Semantic-segmentation evaluation: a confusion matrix accumulated per image, summed over processes.

Metrics are those of the installed Detectron2's ``SemSegEvaluator`` (v0.6 and later, since its
mid-2022 Boundary-IoU change), which CAT-Seg, SED and ESC-Net were evaluated with, so numbers are
comparable with their papers:

* per-class IoU and ACC exist only for classes present in the ground truth (NaN otherwise);
* mIoU and mACC average over those classes only: a class that is predicted but absent from the
  ground truth is left out of the mean (Detectron2 up to v0.6 counted it as 0, which lowers
  mIoU on benchmarks where many classes are absent from the val set, e.g. ADE-847, PC-459);
* fwIoU weighs each class's IoU by its share of labelled ground-truth pixels; pACC is the share
  of labelled pixels predicted right. Pixels labelled ``ignore_label`` count nowhere;
* with no labelled pixel at all, mIoU, mACC and pACC are NaN and fwIoU is 0, as in Detectron2.

Unlike Detectron2 no per-image prediction is kept (memory is one ``K x K`` int64 matrix per
process: 5.7 MB for the 847 ADE classes), and Detectron2's ``BoundaryIoU-*`` keys are not
reported: Detectron2 computes them on a label map minus its erosion, i.e. on label differences
rather than per-class boundaries, and no open-vocabulary paper reports them.
"""
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
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
    """Detectron2's mIoU, fwIoU, per-class IoU, mACC, pACC, per-class ACC (percent, in its key order).

    ``conf`` is ``K x K`` counts ``[gt, pred]``; see the module docstring for the definitions.
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    total = pos_gt.sum()
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou_valid = acc_valid & (union > 0)
    acc = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    weights = pos_gt / total if total > 0 else np.zeros_like(pos_gt)
    nan = float("nan")
    results = OrderedDict()
    results["mIoU"] = 100 * (np.sum(iou[iou_valid]) / np.sum(iou_valid)) if iou_valid.any() else nan
    results["fwIoU"] = 100 * np.sum(iou[iou_valid] * weights[iou_valid])
    for name, value in zip(class_names, iou):
        results[f"IoU-{name}"] = 100 * value
    results["mACC"] = 100 * (np.sum(acc[acc_valid]) / np.sum(acc_valid)) if acc_valid.any() else nan
    results["pACC"] = 100 * (np.sum(tp) / total) if total > 0 else nan
    for name, value in zip(class_names, acc):
        results[f"ACC-{name}"] = 100 * value
    return results


class SemSegEvaluator(DatasetEvaluator):
    """Evaluate ``outputs[i]["sem_seg"]`` (``Nc x H x W`` scores) against the dataset's label files.

    Each input's label file is its ``sem_seg_file_name`` when it has one (escnet's mapper keeps
    it), else the dataset record's ``sem_seg_file_name`` for its ``file_name``, looked up in
    ``DatasetCatalog`` like Detectron2 does (its standard test-time ``DatasetMapper`` drops the
    key). Ground truth is read at its stored resolution; predictions must have that resolution
    (the model resizes to ``height`` x ``width``).
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
        self._gt_file_by_image = None  # file_name -> sem_seg_file_name, read from DatasetCatalog when needed

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
            gt_file = self.ground_truth_file(inp)
            gt = read_label_map(gt_file)
            if gt.shape != pred.shape:
                raise EscnetError(f"prediction {pred.shape} and label {gt.shape} differ in size for {gt_file}")
            self._conf += confusion_matrix(gt, self.map_prediction(pred), self.num_classes, self.ignore_label)

    def ground_truth_file(self, inp):
        """The label file of one input: its ``sem_seg_file_name``, else its dataset record's."""
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if "file_name" not in inp:
            raise EscnetError(
                f"dataset {self.dataset_name!r}: an input has neither 'sem_seg_file_name' nor 'file_name'"
            )
        if self._gt_file_by_image is None:
            self._gt_file_by_image = {
                os.path.abspath(record["file_name"]): record["sem_seg_file_name"]
                for record in DatasetCatalog.get(self.dataset_name)
                if "sem_seg_file_name" in record
            }
        gt_file = self._gt_file_by_image.get(os.path.abspath(inp["file_name"]))
        if gt_file is None:
            raise EscnetError(
                f"image {inp['file_name']} has no ground truth in dataset {self.dataset_name!r} "
                "(no record with this file_name and a sem_seg_file_name)"
            )
        return gt_file

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
    The metrics are then Detectron2's over the b object classes plus "background" (the
    background's IoU is in the mean), as CAT-Seg's and SED's PAS-20b evaluation computes them.
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
