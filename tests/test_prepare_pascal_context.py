"""PASCAL-Context-59 (Detail JSON, RLE) and PASCAL-Context-459 (.mat) preparation over miniature copies."""
import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from benchmark_miniatures import check_prepared, snapshot, write_pascal_context_59, write_pascal_context_459
from escnet.data.label_io import read_label_map, write_label_map
from escnet.data.prepare.pascal_context_59 import main as main_59
from escnet.data.prepare.pascal_context_59 import pascal_context_59_lookup_table, prepare_pascal_context_59
from escnet.data.prepare.pascal_context_459 import prepare_pascal_context_459
from escnet.utils.errors import EscnetError

VOC2010 = "VOCdevkit/VOC2010"


def test_pc59_lookup_table():
    lut = pascal_context_59_lookup_table(max_id=459)
    assert lut[0] == 255 and lut[1] == 255
    assert (lut[2], lut[9], lut[458]) == (0, 1, 58)
    assert sorted(lut[lut != 255]) == list(range(59))


def test_prepare_pascal_context_59(tmp_path):
    expected = write_pascal_context_59(tmp_path)
    summary = prepare_pascal_context_59(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint8)
    assert sorted(os.listdir(tmp_path / VOC2010 / "annotations_detectron2/pc59_val")) == [
        "2008_000002.png", "2008_000003.png"]  # the train-phase image is left out
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    again = prepare_pascal_context_59(str(tmp_path), workers=1)
    assert (again.written, again.skipped) == (0, 2)
    assert snapshot(before) == before


def test_prepare_pascal_context_59_input_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_59(["--root", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainval_merged.json" in err

    write_pascal_context_59(tmp_path)
    json_path = tmp_path / VOC2010 / "trainval_merged.json"
    data = json.loads(json_path.read_text())
    del data["annos_segmentation"][0]["segmentation"]
    json_path.write_text(json.dumps(data))
    with pytest.raises(EscnetError, match=r"trainval_merged\.json is malformed: an annotation lacks"):
        prepare_pascal_context_59(str(tmp_path))
    json_path.write_text("{not json")
    with pytest.raises(EscnetError, match=r"trainval_merged\.json is not valid JSON"):
        prepare_pascal_context_59(str(tmp_path))


def test_prepare_pascal_context_59_rejects_a_mask_of_the_wrong_size(tmp_path):
    write_pascal_context_59(tmp_path)
    json_path = tmp_path / VOC2010 / "trainval_merged.json"
    data = json.loads(json_path.read_text())
    data["images"][1]["height"] = 3
    json_path.write_text(json.dumps(data))
    with pytest.raises(EscnetError, match=r"a mask of image 2008_000003\.jpg is 8x6, the image 8x3"):
        prepare_pascal_context_59(str(tmp_path), workers=1)


def test_prepare_pascal_context_459_tiff(tmp_path):
    expected = write_pascal_context_459(tmp_path)
    summary = prepare_pascal_context_459(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint16)
    out_dir = tmp_path / VOC2010 / "annotations_detectron2/pc459_val"
    assert sorted(os.listdir(out_dir)) == ["2008_000002.tif", "2008_000003.tif"]
    with Image.open(out_dir / "2008_000002.tif") as img:
        assert img.format == "TIFF" and img.mode.startswith("I;16")
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    assert prepare_pascal_context_459(str(tmp_path), workers=1).skipped == 2
    assert snapshot(before) == before


def test_prepare_pascal_context_459_input_errors(tmp_path):
    with pytest.raises(EscnetError, match=r"PASCAL-Context \.mat labels \(trainval\) folder not found"):
        prepare_pascal_context_459(str(tmp_path))
    write_pascal_context_459(tmp_path)
    # without VOC2010/pascalcontext_val.txt the shipped list of all 5,104 val ids applies
    os.remove(tmp_path / VOC2010 / "pascalcontext_val.txt")
    with pytest.raises(EscnetError, match=r"5102 of 5104 PASCAL-Context validation label files are missing"):
        prepare_pascal_context_459(str(tmp_path))
    write_pascal_context_459(tmp_path)
    scipy.io.savemat(str(tmp_path / VOC2010 / "trainval/2008_000003.mat"), {"Labels": np.zeros((2, 2))})
    with pytest.raises(EscnetError, match=r"2008_000003\.mat has no 'LabelMap' variable"):
        prepare_pascal_context_459(str(tmp_path), workers=1)
    scipy.io.savemat(str(tmp_path / VOC2010 / "trainval/2008_000003.mat"),
                     {"LabelMap": np.full((2, 2), 460, dtype=np.uint16)})
    with pytest.raises(EscnetError, match=r"2008_000003\.mat holds value 460, outside the expected range 0\.\.459"):
        prepare_pascal_context_459(str(tmp_path), workers=1)


def test_uint16_tiff_round_trip(tmp_path):
    labels = np.array([[0, 1, 255, 256], [458, 846, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "labels.tif"
    write_label_map(path, labels)
    got = read_label_map(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, labels)
    assert [f for f in os.listdir(tmp_path)] == ["labels.tif"]  # no temporary file left behind
