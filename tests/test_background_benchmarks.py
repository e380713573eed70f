"""The with-background benchmarks (VOC-21, PC-60, COCO-Object): label tables, preparation over
miniature raw copies, registration, and scoring with background as a class."""
import ast
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from benchmark_miniatures import (
    check_prepared, snapshot, write_coco_object, write_pascal_context_60, write_png, write_voc,
)
from conftest import REPO, run_cli
from escnet.data.datasets.common import datasets_root
from escnet.data.datasets.register_background import BACKGROUND_SETS, register_all_background
from escnet.data.label_io import read_label_map
from escnet.data.prepare.coco_object import coco_object_lookup_table, prepare_coco_object
from escnet.data.prepare.coco_object import main as main_coco_object
from escnet.data.prepare.common import load_table
from escnet.data.prepare.pascal_context_59 import pascal_context_59_lookup_table, prepare_pascal_context_59
from escnet.data.prepare.pascal_context_60 import main as main_pc60
from escnet.data.prepare.pascal_context_60 import pascal_context_60_lookup_table, prepare_pascal_context_60
from escnet.data.prepare.voc import prepare_voc, voc_lookup_tables
from escnet.evaluation import build_evaluator
from escnet.utils.errors import EscnetError
from escnet.vocabulary import builtin_vocabulary

VOC2010 = "VOCdevkit/VOC2010"
# name: (vocabulary, number of classes, display name, label folder relative to the root, prepare script)
SETS = {
    "voc_2012_test_21_sem_seg": (
        "voc21", 21, "VOC-21", "VOCdevkit/VOC2012/annotations_detectron2_21/val", "prepare_voc.py"),
    "context_60_test_sem_seg": (
        "pc60", 60, "PC-60", "VOCdevkit/VOC2010/annotations_detectron2/pc60_val", "prepare_pascal_context_60.py"),
    "coco_2017_test_object_sem_seg": (
        "coco_object", 81, "COCO-Obj", "coco-stuff/annotations_detectron2_object/val2017",
        "prepare_coco_object.py"),
}


# --- label tables: values agree with the vocabularies' order -------------------------------

def test_voc21_table_and_vocabulary():
    _, _, lut = voc_lookup_tables()
    assert list(lut[:21]) == list(range(21)) and lut[21] == 255 and lut[254] == 255 and lut[255] == 255
    vocab = builtin_vocabulary("voc21")
    assert vocab[0] == "background" and vocab[1:] == builtin_vocabulary("voc20")


def test_pc60_table_is_pc59_plus_one_with_background():
    lut59, lut60 = pascal_context_59_lookup_table(max_id=459), pascal_context_60_lookup_table(max_id=459)
    assert (lut60[0], lut60[1], lut60[2], lut60[9], lut60[458]) == (0, 0, 1, 2, 59)
    np.testing.assert_array_equal(lut60, np.where(lut59 == 255, 0, lut59.astype(np.int64) + 1))
    vocab = builtin_vocabulary("pc60")
    assert len(vocab) == 60 and vocab[0] == "background" and vocab[1:] == builtin_vocabulary("pc59")


def test_coco_object_table_and_vocabulary():
    lut = coco_object_lookup_table()
    # 0 person -> 1, 89 toothbrush -> 80, stuff 91 banner / 181 wood -> 0, unlabeled -> 0, gap 11 -> 255
    assert (lut[0], lut[89], lut[91], lut[181], lut[255], lut[11]) == (1, 80, 0, 0, 0, 255)
    vocab = builtin_vocabulary("coco_object")
    assert len(vocab) == 81 and vocab[0] == "background"
    table = load_table("coco_stuff_171_categories.json")
    things = [c for c in table if c.get("isthing") == 1]
    assert len(things) == 80 and sorted(lut[c["id"]] for c in things) == list(range(1, 81))
    for cat in table:  # each thing's label names it in the vocabulary; every stuff class is background
        assert vocab[lut[cat["id"]]] == (cat["name"] if cat.get("isthing") == 1 else "background")


# --- preparation ---------------------------------------------------------------------------

def test_prepare_voc_writes_voc21(tmp_path):
    expected = write_voc(tmp_path)
    prepare_voc(str(tmp_path), workers=1)
    voc21 = {rel: labels for rel, labels in expected.items() if "annotations_detectron2_21" in rel}
    assert len(voc21) == 2
    check_prepared(tmp_path, voc21, np.uint8)
    assert sorted(os.listdir(tmp_path / "VOCdevkit/VOC2012/annotations_detectron2_21/val")) == [
        "2007_000033.png", "2007_000042.png"]


def test_prepare_pascal_context_60_labels_and_idempotence(tmp_path):
    expected = write_pascal_context_60(tmp_path)
    summary = prepare_pascal_context_60(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint8)
    out_dir = tmp_path / VOC2010 / "annotations_detectron2/pc60_val"
    assert sorted(os.listdir(out_dir)) == ["2008_000002.png", "2008_000003.png"]  # no train image
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    again = prepare_pascal_context_60(str(tmp_path), workers=1)
    assert (again.written, again.skipped) == (0, 2)
    assert snapshot(before) == before
    # PC-60 is PC-59 + 1 with every ignored PC-59 pixel (unpainted, or not one of the 59) as background
    prepare_pascal_context_59(str(tmp_path), workers=1)
    for stem in ("2008_000002", "2008_000003"):
        pc59 = read_label_map(tmp_path / VOC2010 / f"annotations_detectron2/pc59_val/{stem}.png").astype(int)
        pc60 = read_label_map(out_dir / f"{stem}.png")
        np.testing.assert_array_equal(pc60, np.where(pc59 == 255, 0, pc59 + 1))


def test_prepare_pascal_context_60_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_pc60(["--root", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainval_merged.json" in err and str(tmp_path) in err


def test_prepare_coco_object_in_a_pool_then_skips(tmp_path):
    expected = write_coco_object(tmp_path)
    summary = main_coco_object(["--root", str(tmp_path), "--workers", "2"])
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint8)
    assert not (tmp_path / "coco-stuff/annotations_detectron2_object/train2017").exists()  # val only
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    again = prepare_coco_object(str(tmp_path), workers=1)
    assert (again.written, again.skipped) == (0, 2)
    assert snapshot(before) == before
    # a deleted output is redone, the other kept
    os.remove(tmp_path / "coco-stuff/annotations_detectron2_object/val2017/000000000285.png")
    redo = prepare_coco_object(str(tmp_path), workers=1)
    assert (redo.written, redo.skipped) == (1, 1)
    check_prepared(tmp_path, expected, np.uint8)


def test_prepare_coco_object_input_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_coco_object(["--root", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "COCO-Stuff val2017 stuffthingmaps folder not found" in err and str(tmp_path) in err
    write_coco_object(tmp_path)
    write_png(str(tmp_path / "coco-stuff/annotations/val2017/000000000139.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(EscnetError, match=r"000000000139\.png has unsupported mode RGB"):
        prepare_coco_object(str(tmp_path), workers=1)
    out_dir = tmp_path / "coco-stuff/annotations_detectron2_object/val2017"
    assert not out_dir.exists() or "000000000139.png" not in os.listdir(out_dir)


def test_prepare_scripts_run_as_programs(tmp_path, monkeypatch, capsys):
    """datasets/prepare_coco_object.py and prepare_pascal_context_60.py, run as ``__main__``."""
    write_coco_object(tmp_path)
    script = os.path.join(REPO, "datasets", "prepare_coco_object.py")
    monkeypatch.setattr(sys, "argv", [script, "--root", str(tmp_path), "--workers", "1"])
    runpy.run_path(script, run_name="__main__")
    assert "wrote 2, kept 0 already prepared" in capsys.readouterr().out
    script = os.path.join(REPO, "datasets", "prepare_pascal_context_60.py")
    monkeypatch.setattr(sys, "argv", [script, "--root", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "trainval_merged.json" in err


# --- registration and evaluation ---------------------------------------------------------

def reregister(root):
    for name in SETS:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_all_background(str(root))


@pytest.fixture
def registered_at():
    """Re-register the three sets under a given root; restore the import-time registration after."""
    yield reregister
    reregister(datasets_root())


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory):
    """A datasets root with the three miniatures prepared; ``(root, expected labels)``."""
    root = tmp_path_factory.mktemp("background_sets")
    expected = {}
    for write, prepare in ((write_voc, prepare_voc), (write_pascal_context_60, prepare_pascal_context_60),
                           (write_coco_object, prepare_coco_object)):
        expected.update(write(root))
        prepare(str(root), workers=1)
    return root, expected


def test_import_registers_the_three_sets_with_metadata():
    import escnet  # noqa: F401

    assert [entry[0] for entry in BACKGROUND_SETS] == list(SETS)
    for name, (vocab, num_classes, display_name, label_dir, script) in SETS.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert tuple(meta.stuff_classes) == builtin_vocabulary(vocab) and len(meta.stuff_classes) == num_classes
        assert meta.stuff_classes[meta.background_class_index] == "background"
        assert meta.background_class_index == 0
        assert (meta.ignore_label, meta.evaluator_type, meta.benchmark_name) == (255, "sem_seg", display_name)
        assert meta.prepare_hint == f"run: python datasets/{script}"
        assert meta.sem_seg_root == os.path.join(datasets_root(), *label_dir.split("/"))


def test_records_hold_the_known_labels(prepared_root, registered_at):
    root, expected = prepared_root
    registered_at(root)
    for name, (_, num_classes, _, label_dir, _) in SETS.items():
        records = DatasetCatalog.get(name)
        want = sorted(rel for rel in expected if os.path.dirname(rel) == label_dir)
        assert len(want) == 2
        assert [os.path.relpath(r["sem_seg_file_name"], root) for r in records] == want, name
        values = set()
        for record in records:
            assert os.path.isfile(record["file_name"])
            stem = os.path.splitext(os.path.basename(record["sem_seg_file_name"]))[0]
            assert os.path.basename(record["file_name"]) == stem + ".jpg"
            labels = read_label_map(record["sem_seg_file_name"])
            rel = os.path.relpath(record["sem_seg_file_name"], root)
            np.testing.assert_array_equal(labels, expected[rel], err_msg=rel)
            values.update(np.unique(labels[labels != 255]).tolist())
        assert 0 in values and 0 < max(values) < num_classes, name  # background and objects present


def test_unprepared_set_fails_when_loaded_naming_its_prepare_script(tmp_path, registered_at):
    registered_at(tmp_path)
    with pytest.raises(EscnetError, match=r"context_60_test_sem_seg.*prepare_pascal_context_60\.py"):
        DatasetCatalog.get("context_60_test_sem_seg")
    with pytest.raises(EscnetError, match=r"coco_2017_test_object_sem_seg.*prepare_coco_object\.py"):
        DatasetCatalog.get("coco_2017_test_object_sem_seg")


def test_background_is_scored_as_a_class(prepared_root, registered_at, tmp_path):
    """VOC-21 with the plain evaluator: a perfect prediction scores 100; predicting background
    everywhere scores background's IoU (its share of labelled pixels) averaged over the present classes."""
    root, _ = prepared_root
    registered_at(root)
    name = "voc_2012_test_21_sem_seg"
    records = DatasetCatalog.get(name)
    gts = [read_label_map(r["sem_seg_file_name"]).astype(np.int64) for r in records]

    def evaluate(predict):
        evaluator = build_evaluator(name, str(tmp_path / "eval"), distributed=False)
        evaluator.reset()
        for record, gt in zip(records, gts):
            scores = torch.nn.functional.one_hot(torch.from_numpy(predict(gt)), 21).permute(2, 0, 1).float()
            evaluator.process([record], [{"sem_seg": scores}])
        return evaluator.evaluate()["sem_seg"]

    perfect = evaluate(lambda gt: np.where(gt == 255, 0, gt))
    assert perfect["mIoU"] == pytest.approx(100.0) and perfect["IoU-background"] == pytest.approx(100.0)
    everything_background = evaluate(np.zeros_like)
    labelled = np.concatenate([gt[gt != 255] for gt in gts])
    present = np.unique(labelled)
    assert 0 in present and len(present) == 4  # background, aeroplane, person, tvmonitor
    background_iou = 100 * np.mean(labelled == 0)
    assert everything_background["IoU-background"] == pytest.approx(background_iou)
    assert everything_background["IoU-aeroplane"] == 0
    assert everything_background["mIoU"] == pytest.approx(background_iou / len(present))


# --- tools/eval_benchmarks.sh --suite cliper -------------------------------------------------

CLIPER_SUITE = [  # the columns of CLIPer's table: VOC, Context, Object, VOC20, Context59, Stuff, ADE
    "voc_2012_test_21_sem_seg", "context_60_test_sem_seg", "coco_2017_test_object_sem_seg",
    "voc_2012_test_sem_seg", "context_59_test_sem_seg", "coco_2017_test_stuff_all_sem_seg",
    "ade20k_150_test_sem_seg",
]


def run_eval_script(tmp_path, *args):
    """Run tools/eval_benchmarks.sh with a stand-in interpreter that prints its arguments, one a line."""
    fake_python = tmp_path / "print_args"
    fake_python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    return subprocess.run(
        ["bash", os.path.join(REPO, "tools", "eval_benchmarks.sh"), *args],
        cwd=REPO, env=dict(os.environ, PYTHON=str(fake_python)), capture_output=True, text=True, timeout=60,
    )


def test_eval_script_cliper_suite_without_weights(tmp_path):
    import escnet  # noqa: F401

    proc = run_eval_script(tmp_path, "--suite", "cliper", "configs/tiny.yaml", "", "OUTPUT_DIR", "out")
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split("\n")
    assert args[args.index("MODEL.WEIGHTS") + 1] == ""
    assert args[-3:] == ["OUTPUT_DIR", "out", ""]  # extra options passed through, in order
    names = ast.literal_eval(args[args.index("DATASETS.TEST") + 1])  # a tuple literal, as Detectron2 reads it
    assert list(names) == CLIPER_SUITE
    assert all(name in DatasetCatalog.list() for name in names)
    # the default suite is unchanged; a bad suite or missing weights are one-line errors
    default = run_eval_script(tmp_path, "configs/tiny.yaml", "")
    assert default.returncode == 0 and "'voc_2012_test_background_sem_seg')" in default.stdout
    bad = run_eval_script(tmp_path, "--suite", "sed", "configs/tiny.yaml", "")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown suite 'sed' (choose six or cliper)"
    missing = run_eval_script(tmp_path, "--suite", "cliper", "configs/tiny.yaml", "nowhere.pth")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: weights not found: nowhere.pth"


def test_eval_only_over_the_three_sets(prepared_root, checkpoint, tmp_path):
    """train_net.py --eval-only scores each set with its own vocabulary, background included."""
    root, _ = prepared_root
    output = tmp_path / "eval"
    proc = run_cli(
        ["train_net.py", "--config-file", "configs/tiny.yaml", "--eval-only", "MODEL.WEIGHTS", checkpoint,
         "DATASETS.TEST", repr(tuple(SETS)), "OUTPUT_DIR", str(output), "MODEL.DEVICE", "cpu",
         "DATALOADER.NUM_WORKERS", "0"],
        timeout=300, env={"DETECTRON2_DATASETS": str(root)},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((output / "inference" / "summary.json").read_text())
    assert list(summary) == list(SETS)
    for name, (vocab, num_classes, display_name, _, _) in SETS.items():
        assert summary[name]["benchmark"] == display_name
        metrics = json.loads((output / "inference" / name / "sem_seg_metrics.json").read_text())
        assert len([k for k in metrics if k.startswith("IoU-")]) == num_classes
        assert metrics["IoU-background"] is not None  # background is in every miniature's ground truth
