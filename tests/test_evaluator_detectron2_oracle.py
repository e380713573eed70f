"""escnet's evaluators against Detectron2's own ``SemSegEvaluator`` (the installed version) as oracle.

Both evaluators see the same random predictions over images of odd sizes with ignore pixels, a
class that is predicted but absent from the ground truth and a class that is present but never
predicted. Every metric Detectron2 reports (mIoU, fwIoU, mACC, pACC, per-class IoU and ACC, NaN
where Detectron2 gives NaN) must come out equal; only Detectron2's Boundary-IoU keys are not
compared (escnet does not report them, see escnet/evaluation/sem_seg_evaluation.py).
"""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator as Detectron2SemSegEvaluator
from PIL import Image

from escnet.data.label_io import write_label_map
from escnet.evaluation import build_evaluator
from escnet.utils.errors import EscnetError

SIZES = [(13, 17), (21, 9), (7, 31), (16, 16)]


def register(tmp_path, name, num_classes, ignore, gt_classes, evaluator_type="sem_seg", all_ignored=False, **meta):
    """Write label maps (values drawn from ``gt_classes`` plus ``ignore``) and RGB images; register them."""
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(SIZES):
        gt = rng.choice(gt_classes, size=(h, w))
        gt[rng.random((h, w)) < 0.15] = ignore
        if all_ignored:
            gt[:] = ignore
        label = tmp_path / f"{name}_{i}.{'tif' if ignore > 255 else 'png'}"
        image = tmp_path / f"{name}_{i}.jpg"
        write_label_map(label, gt)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image)
        records.append({"file_name": str(image), "sem_seg_file_name": str(label), "height": h, "width": w})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    meta.setdefault("stuff_classes", [f"class{k}" for k in range(num_classes)])
    MetadataCatalog.get(name).set(ignore_label=ignore, evaluator_type=evaluator_type, **meta)
    return records


def random_scores(records, num_classes, never_predicted, seed=1):
    """``Nc x H x W`` random scores per image; the classes in ``never_predicted`` never win the argmax."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for record in records:
        scores = torch.rand((num_classes, record["height"], record["width"]), generator=generator)
        scores[list(never_predicted)] = -1.0
        outputs.append({"sem_seg": scores})
    return outputs


def run(evaluator, inputs, outputs):
    evaluator.reset()
    for inp, out in zip(inputs, outputs):
        evaluator.process([inp], [out])
    return evaluator.evaluate()["sem_seg"]


def assert_same_metrics(ours, theirs):
    compared = {k: v for k, v in theirs.items() if not k.startswith(("BoundaryIoU-", "min(IoU, B-Iou)-"))}
    assert list(ours) == list(compared)
    for key, value in compared.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), (key, ours[key])
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, ours[key], value)


# (classes, ignore label): a Boundary-IoU-computing size with uint8 labels, and a >= 255-class
# set with uint16 TIFF labels (Detectron2 skips Boundary IoU there), like ADE-847.
@pytest.mark.parametrize("num_classes,ignore", [(7, 255), (300, 65535)])
def test_metrics_equal_detectron2(tmp_path, num_classes, ignore):
    absent, never_predicted = 3, 5  # class 3 predicted but absent from GT; class 5 in GT, never predicted
    gt_classes = [k for k in range(num_classes) if k != absent]
    name = f"oracle_plain_{num_classes}"
    records = register(tmp_path, name, num_classes, ignore, gt_classes)
    outputs = random_scores(records, num_classes, [never_predicted])
    d2_inputs = [{"file_name": r["file_name"]} for r in records]  # what Detectron2's test mapper leaves

    theirs = run(Detectron2SemSegEvaluator(name, distributed=False), d2_inputs, outputs)
    ours_from_file = run(build_evaluator(name, None, distributed=False), records, outputs)
    ours_from_catalog = run(build_evaluator(name, None, distributed=False), d2_inputs, outputs)

    assert any((o["sem_seg"].argmax(0) == absent).any() for o in outputs)
    assert math.isnan(theirs[f"IoU-class{absent}"]) and theirs[f"IoU-class{never_predicted}"] == 0
    assert_same_metrics(ours_from_file, theirs)
    assert_same_metrics(ours_from_catalog, theirs)
    # The absent-but-predicted class stays out of the mean: mIoU averages the GT classes only.
    present = [theirs[f"IoU-class{k}"] for k in gt_classes]
    assert ours_from_file["mIoU"] == pytest.approx(np.nanmean(present))


def test_background_evaluator_equals_detectron2_on_merged_predictions(tmp_path):
    # PAS-20b style: GT holds objects 0..3 and background 4; the vocabulary has 4 objects and 3
    # background proxies. Reference: Detectron2's SemSegEvaluator over objects + "background"
    # applied to argmax predictions with every proxy (index >= 4) counted as background.
    objects, proxies, ignore = 4, 3, 255
    name, ref_name = "oracle_bg", "oracle_bg_reference"
    gt_classes = [0, 2, 3, objects]  # object 1 absent from GT (but predicted)
    records = register(tmp_path, name, objects + proxies, ignore, gt_classes, "sem_seg_background", background_class_index=objects)
    ref_classes = [f"class{k}" for k in range(objects)] + ["background"]
    ref_records = register(tmp_path, ref_name, objects + 1, ignore, gt_classes, stuff_classes=ref_classes)  # same labels
    outputs = random_scores(records, objects + proxies, never_predicted=[2])  # object 2 never predicted
    merged = [
        {"sem_seg": torch.nn.functional.one_hot(o["sem_seg"].argmax(0).clamp(max=objects), objects + 1).permute(2, 0, 1)}
        for o in outputs
    ]
    ref_inputs = [{"file_name": r["file_name"]} for r in ref_records]

    theirs = run(Detectron2SemSegEvaluator(ref_name, distributed=False), ref_inputs, merged)
    ours = run(build_evaluator(name, None, distributed=False), [{"file_name": r["file_name"]} for r in records], outputs)
    assert any((m["sem_seg"].argmax(0) == 1).any() for m in merged)
    assert math.isnan(theirs["IoU-class1"]) and theirs["IoU-class2"] == 0 and theirs["IoU-background"] > 0
    assert_same_metrics(ours, theirs)


def test_no_labelled_pixels_gives_detectron2_nans(tmp_path):
    name = "oracle_all_ignored"
    records = register(tmp_path, name, 5, 255, [0, 1], all_ignored=True)
    outputs = random_scores(records, 5, [])
    d2_inputs = [{"file_name": r["file_name"]} for r in records]
    with np.errstate(invalid="ignore", divide="ignore"):  # Detectron2 divides 0 by 0 here
        theirs = run(Detectron2SemSegEvaluator(name, distributed=False), d2_inputs, outputs)
    ours = run(build_evaluator(name, None, distributed=False), records, outputs)
    assert math.isnan(theirs["mIoU"])
    assert_same_metrics(ours, theirs)


def test_ground_truth_found_through_detectron2_dataset_mapper(tmp_path):
    # Detectron2's standard test-time DatasetMapper drops "sem_seg_file_name": the evaluator must
    # map "file_name" to the label file through DatasetCatalog, as Detectron2's evaluator does.
    name, num_classes = "oracle_mapper", 6
    records = register(tmp_path, name, num_classes, 255, [0, 1, 2, 4, 5])
    mapper = DatasetMapper(get_cfg(), is_train=False)
    mapped = [mapper(dict(r)) for r in DatasetCatalog.get(name)]
    assert all("sem_seg_file_name" not in m for m in mapped)
    outputs = random_scores(records, num_classes, [4])
    theirs = run(Detectron2SemSegEvaluator(name, distributed=False), mapped, outputs)
    ours = run(build_evaluator(name, None, distributed=False), mapped, outputs)
    assert_same_metrics(ours, theirs)


def test_input_outside_the_dataset_is_a_one_line_error(tmp_path):
    name = "oracle_unknown_file"
    records = register(tmp_path, name, 4, 255, [0, 1, 2])
    evaluator = build_evaluator(name, None, distributed=False)
    evaluator.reset()
    stray = str(tmp_path / "not_in_dataset.jpg")
    with pytest.raises(EscnetError) as err:
        evaluator.process([{"file_name": stray}], random_scores(records[:1], 4, []))
    message = str(err.value)
    assert "\n" not in message and stray in message and name in message
    with pytest.raises(EscnetError, match="neither"):
        evaluator.process([{"image_id": 0}], random_scores(records[:1], 4, []))
