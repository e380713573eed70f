"""PASCAL VOC-20 / VOC-20b preparation over a miniature raw copy."""
import os

import numpy as np
import pytest

from benchmark_miniatures import check_prepared, snapshot, write_voc
from escnet.data.prepare.voc import main, prepare_voc
from escnet.utils.errors import EscnetError


def test_prepare_voc_labels_and_idempotence(tmp_path):
    expected = write_voc(tmp_path)
    summary = prepare_voc(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (2, 0)
    check_prepared(tmp_path, expected, np.uint8)
    # only the val.txt ids are converted, nothing else lands in the output folders
    assert sorted(os.listdir(tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val")) == [
        "2007_000033.png", "2007_000042.png"]
    before = snapshot([os.path.join(tmp_path, rel) for rel in expected])
    again = prepare_voc(str(tmp_path), workers=1)
    assert (again.written, again.skipped) == (0, 2)
    assert snapshot(before) == before


def test_prepare_voc_redoes_a_missing_output(tmp_path):
    expected = write_voc(tmp_path)
    prepare_voc(str(tmp_path), workers=1)
    os.remove(tmp_path / "VOCdevkit/VOC2012/annotations_detectron2_bg/val/2007_000042.png")
    summary = prepare_voc(str(tmp_path), workers=1)
    assert (summary.written, summary.skipped) == (1, 1)
    check_prepared(tmp_path, expected, np.uint8)


def test_prepare_voc_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "SegmentationClassAug" in err and str(tmp_path) in err

    write_voc(tmp_path)
    os.remove(tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000042.png")
    with pytest.raises(EscnetError, match=r"1 of 2 VOC val label maps are missing.*2007_000042\.png"):
        prepare_voc(str(tmp_path), workers=1)


def test_prepare_voc_rejects_a_malformed_label_map(tmp_path):
    write_voc(tmp_path)
    bad = tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000033.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(EscnetError, match="2007_000033.png"):
        prepare_voc(str(tmp_path), workers=1)
    # the failed file left no output, not even a temporary one
    out_dir = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val"
    assert not out_dir.exists() or "2007_000033.png" not in os.listdir(out_dir)
    assert not out_dir.exists() or not [f for f in os.listdir(out_dir) if f.startswith(".")]
