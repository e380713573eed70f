"""The semantic-segmentation evaluator against a direct NumPy computation."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from escnet.data.label_io import write_label_map
from escnet.evaluation import build_evaluator, confusion_matrix, segmentation_metrics


def reference_metrics(gts, preds, num_classes, ignore):
    """Per-pixel loops written out plainly (Detectron2's definitions)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in zip(gts, preds):
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != ignore:
                conf[g, p] += 1
    tp = np.array([conf[k, k] for k in range(num_classes)], float)
    gt_count = np.array([conf[k, :].sum() for k in range(num_classes)], float)
    pred_count = np.array([conf[:, k].sum() for k in range(num_classes)], float)
    present = gt_count > 0  # classes predicted but absent from GT stay out of every mean
    iou = tp[present] / (gt_count + pred_count - tp)[present]
    acc = tp[present] / gt_count[present]
    return {
        "mIoU": 100 * iou.mean(),
        "fwIoU": 100 * (iou * gt_count[present] / gt_count.sum()).sum(),
        "mACC": 100 * acc.mean(),
        "pACC": 100 * tp.sum() / gt_count.sum(),
        "conf": conf,
        "iou": dict(zip(np.flatnonzero(present), 100 * iou)),
    }


def make_dataset(tmp_path, name, num_classes, ignore, evaluator_type="sem_seg", background=None, seed=0):
    rng = np.random.default_rng(seed)
    gts, records = [], []
    # Without background the last class never occurs in GT; with it, classes 0..background do.
    high = num_classes - 1 if background is None else background + 1
    for i in range(5):
        gt = rng.integers(0, high, (13 + i, 17)).astype(np.int64)
        gt[rng.random(gt.shape) < 0.2] = ignore
        path = tmp_path / f"{name}_{i}.{'tif' if ignore > 255 else 'png'}"
        write_label_map(path, gt)
        gts.append(gt)
        records.append({"file_name": str(path), "sem_seg_file_name": str(path)})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    meta = dict(stuff_classes=[f"class{k}" for k in range(num_classes)], ignore_label=ignore, evaluator_type=evaluator_type)
    if background is not None:
        meta["background_class_index"] = background
    MetadataCatalog.get(name).set(**meta)
    return gts, records


@pytest.mark.parametrize("num_classes,ignore", [(6, 255), (300, 65535)])
def test_metrics_match_numpy_reference(tmp_path, num_classes, ignore):
    gts, records = make_dataset(tmp_path, f"eval_ref_{num_classes}", num_classes, ignore)
    rng = np.random.default_rng(1)
    evaluator = build_evaluator(f"eval_ref_{num_classes}", str(tmp_path / "out"), distributed=False)
    evaluator.reset()
    preds = []
    for gt, record in zip(gts, records):
        scores = torch.from_numpy(rng.random((num_classes,) + gt.shape)).float()
        preds.append(scores.argmax(0).numpy())
        evaluator.process([record], [{"sem_seg": scores}])
    results = evaluator.evaluate()["sem_seg"]
    ref = reference_metrics(gts, preds, num_classes, ignore)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert results[key] == pytest.approx(ref[key], rel=1e-9), key
    for k, value in ref["iou"].items():
        assert results[f"IoU-class{k}"] == pytest.approx(value)
    assert np.isnan(results[f"IoU-class{num_classes - 1}"])  # absent from GT: no IoU
    saved = json.loads((tmp_path / "out" / "sem_seg_metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(ref["mIoU"]) and saved[f"IoU-class{num_classes - 1}"] is None


def test_perfect_prediction_scores_100(tmp_path):
    gts, records = make_dataset(tmp_path, "eval_perfect", 4, 255)
    evaluator = build_evaluator("eval_perfect", None, distributed=False)
    evaluator.reset()
    for gt, record in zip(gts, records):
        scores = torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, gt)), 4).permute(2, 0, 1)
        evaluator.process([record], [{"sem_seg": scores.float()}])
    results = evaluator.evaluate()["sem_seg"]
    # Class 3 never appears in GT nor in predictions, so the mean runs over classes 0..2 only.
    assert results["mIoU"] == pytest.approx(100) and results["pACC"] == pytest.approx(100)


def test_background_evaluator_maps_proxy_names_to_background(tmp_path):
    # GT: classes 0..2 and background 3; vocabulary: 3 classes + 4 background proxies (7 entries).
    gts, records = make_dataset(tmp_path, "eval_bg", 7, 255, "sem_seg_background", background=3)
    evaluator = build_evaluator("eval_bg", None, distributed=False)
    assert evaluator.class_names == ["class0", "class1", "class2", "background"]
    evaluator.reset()
    rng = np.random.default_rng(2)
    preds = []
    for gt, record in zip(gts, records):
        scores = torch.from_numpy(rng.random((7,) + gt.shape)).float()
        preds.append(np.minimum(scores.argmax(0).numpy(), 3))
        evaluator.process([record], [{"sem_seg": scores}])
    results = evaluator.evaluate()["sem_seg"]
    ref = reference_metrics(gts, preds, 4, 255)
    assert results["mIoU"] == pytest.approx(ref["mIoU"])
    assert results["IoU-background"] == pytest.approx(ref["iou"][3])


def test_class_predicted_but_absent_from_ground_truth_is_left_out_of_the_mean():
    # GT has classes 0 and 1; class 2 is predicted on one pixel of class 1.
    conf = np.array([[3, 0, 0], [0, 1, 1], [0, 0, 0]])
    metrics = segmentation_metrics(conf, ["a", "b", "c"])
    assert metrics["IoU-a"] == pytest.approx(100) and metrics["IoU-b"] == pytest.approx(50)
    assert np.isnan(metrics["IoU-c"]) and np.isnan(metrics["ACC-c"])
    assert metrics["mIoU"] == pytest.approx(75)  # (100 + 50) / 2, not (100 + 50 + 0) / 3
    assert metrics["mACC"] == pytest.approx(75) and metrics["pACC"] == pytest.approx(80)
    assert metrics["fwIoU"] == pytest.approx(0.6 * 100 + 0.4 * 50)
    assert list(metrics)[:2] == ["mIoU", "fwIoU"] and list(metrics)[2:5] == ["IoU-a", "IoU-b", "IoU-c"]


def test_no_labelled_pixel_gives_nan_means():
    metrics = segmentation_metrics(np.zeros((3, 3), np.int64), ["a", "b", "c"])
    assert all(np.isnan(metrics[k]) for k in ("mIoU", "mACC", "pACC", "IoU-a", "ACC-c"))
    assert metrics["fwIoU"] == 0  # Detectron2: an empty weighted sum


def test_confusion_matrix_ignores_out_of_range_labels():
    gt = np.array([[0, 1, 255], [2, 7, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    conf = confusion_matrix(gt, pred, 3, 255)
    assert conf.sum() == 4 and conf[0, 0] == 1 and conf[1, 2] == 1 and conf[2, 2] == 1 and conf[1, 1] == 1
    metrics = segmentation_metrics(conf, ["a", "b", "c"])
    assert metrics["pACC"] == pytest.approx(75.0)
