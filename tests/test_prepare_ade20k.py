"""ADE20K-150 and ADE20K-847 preparation over miniature raw copies."""
import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from benchmark_miniatures import check_prepared, snapshot, write_ade20k_150, write_ade20k_full, write_png
from escnet.data.label_io import read_label_map
from escnet.data.prepare.ade20k_150 import prepare_ade20k_150
from escnet.data.prepare.ade20k_full import capped_size, check_objectnames, main, prepare_ade20k_full
from escnet.data.prepare.common import load_table
from escnet.utils.errors import EscnetError

ADE847_OUT = "ADE20K_2021_17_01/annotations_detectron2/validation"


def test_prepare_ade20k_150(tmp_path):
    expected = write_ade20k_150(tmp_path)
    assert prepare_ade20k_150(str(tmp_path), workers=1).written == 2
    check_prepared(tmp_path, expected, np.uint8)
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    assert prepare_ade20k_150(str(tmp_path), workers=1).skipped == 2
    assert snapshot(before) == before


def test_prepare_ade20k_150_missing_folder(tmp_path):
    with pytest.raises(EscnetError, match=r"ADE20K-150 validation annotations folder not found"):
        prepare_ade20k_150(str(tmp_path))


def test_capped_size_follows_the_short_side():
    assert capped_size(400, 300) == (400, 300)
    assert capped_size(600, 1000) == (512, 853)
    assert capped_size(1000, 600) == (853, 512)


def test_prepare_ade20k_full_labels_tiff_and_idempotence(tmp_path):
    expected = write_ade20k_full(tmp_path)
    summary = prepare_ade20k_full(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint16)
    for rel in expected:  # stored as 16-bit TIFF
        with Image.open(tmp_path / rel) as img:
            assert img.format == "TIFF" and img.mode.startswith("I;16")
    # training images are not converted; images are copied next to the labels
    image_dir = tmp_path / "ADE20K_2021_17_01/images_detectron2/validation"
    assert sorted(os.listdir(image_dir)) == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    assert sorted(os.listdir(tmp_path / ADE847_OUT)) == ["ADE_val_00000001.tif", "ADE_val_00000002.tif"]
    outputs = [os.path.join(tmp_path, rel) for rel in expected] + [str(p) for p in image_dir.iterdir()]
    before = snapshot(outputs)
    again = main(["--root", str(tmp_path), "--workers", "1"])
    assert (again.written, again.skipped) == (0, 2)
    assert snapshot(before) == before


def test_prepare_ade20k_full_caps_the_short_side(tmp_path):
    expected = write_ade20k_full(tmp_path, large_size=(9, 12))
    prepare_ade20k_full(str(tmp_path), workers=1, short_side_cap=6)
    rel = f"{ADE847_OUT}/ADE_val_00000002.tif"
    labels = read_label_map(tmp_path / rel)
    assert labels.shape == (6, 8)  # 9 x 12 -> short side 6, long side round(12 * 6 / 9) = 8
    reference = cv2.resize(expected[rel], (8, 6), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(labels, reference)
    with Image.open(tmp_path / "ADE20K_2021_17_01/images_detectron2/validation/ADE_val_00000002.jpg") as img:
        assert img.size == (8, 6)
    small = read_label_map(tmp_path / f"{ADE847_OUT}/ADE_val_00000001.tif")  # 6 x 8: kept as is
    np.testing.assert_array_equal(small, expected[f"{ADE847_OUT}/ADE_val_00000001.tif"])


def test_objectnames_offset_check(caplog):
    table = load_table("ade20k_847_categories.json")
    names = ["x"] * 3700
    for cat in table:
        names[cat["id"] - 1] = cat["name"]
    assert check_objectnames(names, table) == 847
    assert "another class numbering" not in caplog.text
    shifted = ["x"] + names  # a 0-based index: names at objectnames[id]
    check_objectnames(shifted, table)
    assert "another class numbering" in caplog.text


def test_prepare_ade20k_full_input_errors(tmp_path):
    with pytest.raises(EscnetError, match=r"ADE20K-full index not found: .*index_ade20k\.pkl"):
        prepare_ade20k_full(str(tmp_path))
    write_ade20k_full(tmp_path)
    index_path = tmp_path / "ADE20K_2021_17_01/index_ade20k.pkl"
    with open(index_path, "wb") as f:
        pickle.dump({"filename": ["ADE_val_00000001.jpg"]}, f)
    with pytest.raises(EscnetError, match=r"index_ade20k\.pkl is malformed"):
        prepare_ade20k_full(str(tmp_path))
    index_path.write_bytes(b"garbage")
    with pytest.raises(EscnetError, match=r"index_ade20k\.pkl cannot be read"):
        prepare_ade20k_full(str(tmp_path))


def test_prepare_ade20k_full_rejects_a_non_rgb_seg_map(tmp_path):
    write_ade20k_full(tmp_path)
    seg = tmp_path / "ADE20K_2021_17_01/images/ADE/validation/home_or_hotel/bedroom/ADE_val_00000001_seg.png"
    write_png(str(seg), np.zeros((6, 8), dtype=np.uint8))
    with pytest.raises(EscnetError, match=r"ADE_val_00000001_seg\.png has mode L; expected RGB"):
        prepare_ade20k_full(str(tmp_path), workers=1)
