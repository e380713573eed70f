"""COCO-Stuff-171 preparation over a miniature raw copy (incl. the multiprocessing path)."""
import os

import numpy as np
import pytest

from benchmark_miniatures import check_prepared, snapshot, write_coco_stuff, write_png
from escnet.data.prepare.coco_stuff import coco_stuff_lookup_table, main, prepare_coco_stuff
from escnet.utils.errors import EscnetError


def test_lookup_table_matches_the_171_classes():
    lut = coco_stuff_lookup_table()
    kept = np.flatnonzero(lut != 255)
    assert len(kept) == 171 and sorted(lut[kept]) == list(range(171))
    assert lut[11] == 255 and lut[255] == 255  # a gap in the COCO ids, and "unlabeled"


def test_prepare_coco_stuff_in_a_pool_then_skips(tmp_path):
    expected = write_coco_stuff(tmp_path)
    summary = main(["--root", str(tmp_path), "--workers", "2"])
    assert (summary.written, summary.skipped) == (3, 0)
    check_prepared(tmp_path, expected, np.uint8)
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    again = prepare_coco_stuff(str(tmp_path), workers=2)
    assert (again.written, again.skipped) == (0, 3)
    assert snapshot(before) == before


def test_prepare_coco_stuff_val_only(tmp_path):
    expected = write_coco_stuff(tmp_path)
    summary = prepare_coco_stuff(str(tmp_path), splits=("val2017",), workers=1)
    assert summary.written == 2
    check_prepared(tmp_path, {k: v for k, v in expected.items() if "val2017" in k}, np.uint8)
    assert not (tmp_path / "coco-stuff/annotations_detectron2/train2017").exists()


def test_prepare_coco_stuff_input_errors(tmp_path):
    with pytest.raises(EscnetError, match=r"COCO-Stuff train2017 stuffthingmaps folder not found: .*annotations"):
        prepare_coco_stuff(str(tmp_path), workers=1)
    write_coco_stuff(tmp_path)
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    write_png(str(tmp_path / "coco-stuff/annotations/val2017/000000000139.png"), rgb)
    with pytest.raises(EscnetError, match=r"000000000139\.png has unsupported mode RGB"):
        prepare_coco_stuff(str(tmp_path), splits=("val2017",), workers=1)
