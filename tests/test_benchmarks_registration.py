"""Registration of the benchmarks: names, metadata, records over a prepared miniature root."""
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from benchmark_miniatures import write_and_prepare_all
from escnet.data.datasets.common import datasets_root
from escnet.data.datasets.register_ade20k import register_all_ade20k
from escnet.data.datasets.register_coco_stuff import register_all_coco_stuff
from escnet.data.datasets.register_pascal_context import register_all_pascal_context
from escnet.data.datasets.register_voc import register_all_voc
from escnet.data.label_io import read_label_map
from escnet.utils.errors import EscnetError
from escnet.vocabulary import builtin_vocabulary

REGISTER_ALL = (register_all_coco_stuff, register_all_ade20k, register_all_pascal_context, register_all_voc)

# name: (vocabulary, ignore label, evaluator type, display name, label folder relative to the root)
BENCHMARKS = {
    "coco_2017_train_stuff_all_sem_seg": (
        "coco", 255, "sem_seg", "COCO-171", "coco-stuff/annotations_detectron2/train2017"),
    "coco_2017_test_stuff_all_sem_seg": (
        "coco", 255, "sem_seg", "COCO-171", "coco-stuff/annotations_detectron2/val2017"),
    "ade20k_150_test_sem_seg": (
        "ade150", 255, "sem_seg", "A-150", "ADEChallengeData2016/annotations_detectron2/validation"),
    "ade20k_full_sem_seg_freq_val_all": (
        "ade847", 65535, "sem_seg", "A-847", "ADE20K_2021_17_01/annotations_detectron2/validation"),
    "context_59_test_sem_seg": (
        "pc59", 255, "sem_seg", "PC-59", "VOCdevkit/VOC2010/annotations_detectron2/pc59_val"),
    "context_459_test_sem_seg": (
        "pc459", 65535, "sem_seg", "PC-459", "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"),
    "voc_2012_test_sem_seg": (
        "voc20", 255, "sem_seg", "PAS-20", "VOCdevkit/VOC2012/annotations_detectron2/val"),
    "voc_2012_test_background_sem_seg": (
        "voc20b", 255, "sem_seg_background", "PAS-20b", "VOCdevkit/VOC2012/annotations_detectron2_bg/val"),
}


def reregister(root):
    for name in BENCHMARKS:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for register in REGISTER_ALL:
        register(str(root))


@pytest.fixture
def registered_at():
    """Re-register the benchmarks under a given root; restore the import-time registration after."""
    yield reregister
    reregister(datasets_root())


def test_import_registers_every_benchmark_with_metadata():
    import escnet  # noqa: F401

    for name, (vocab, ignore_label, evaluator_type, display_name, _) in BENCHMARKS.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert tuple(meta.stuff_classes) == builtin_vocabulary(vocab)
        assert meta.ignore_label == ignore_label
        assert meta.evaluator_type == evaluator_type
        assert meta.benchmark_name == display_name
        assert meta.prepare_hint.startswith("run: python datasets/prepare_")
        assert meta.sem_seg_root.startswith(datasets_root())
    background = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert background.background_class_index == 20
    assert background.stuff_classes[:20] == MetadataCatalog.get("voc_2012_test_sem_seg").stuff_classes


def test_records_of_a_prepared_miniature_root(tmp_path, registered_at):
    expected = write_and_prepare_all(tmp_path)
    registered_at(tmp_path)
    for name, (_, ignore_label, _, _, label_dir) in BENCHMARKS.items():
        records = DatasetCatalog.get(name)
        want = sorted(rel for rel in expected if os.path.dirname(rel) == label_dir)
        assert [os.path.relpath(r["sem_seg_file_name"], tmp_path) for r in records] == want, name
        num_classes = len(MetadataCatalog.get(name).stuff_classes)
        for record in records:
            assert os.path.isfile(record["file_name"]) and record["file_name"].endswith(".jpg")
            stem = os.path.splitext(os.path.basename(record["sem_seg_file_name"]))[0]
            assert os.path.basename(record["file_name"]) == stem + ".jpg"
            labels = read_label_map(record["sem_seg_file_name"])
            valid = labels[labels != ignore_label]
            # PAS-20b's ground truth holds 0..20 (20 = background); its vocabulary 59 entries
            assert valid.size and valid.max() < num_classes, name


def test_unprepared_benchmark_fails_when_loaded_naming_the_prepare_script(tmp_path, registered_at):
    registered_at(tmp_path)  # registering an empty root is fine: files are checked on load
    os.makedirs(tmp_path / "VOCdevkit/VOC2010/JPEGImages")
    with pytest.raises(EscnetError, match=r"context_459_test_sem_seg.*prepare_pascal_context_459\.py"):
        DatasetCatalog.get("context_459_test_sem_seg")
    with pytest.raises(EscnetError, match=r"prepare_ade20k_full\.py"):
        DatasetCatalog.get("ade20k_full_sem_seg_freq_val_all")

