"""Miniature raw copies of the six open-vocabulary benchmarks, COCO-Stuff and the three
with-background sets (VOC-21, PC-60, COCO-Object) for the tests.

Each ``write_*`` function writes a few tiny images in the exact raw download format under
``root`` and returns the prepared labels expected for them, computed by hand:
``{path relative to root: H x W array}``. Used by tests/test_prepare_*.py and
tests/test_benchmarks_*.py (this module is not collected itself).
"""
import json
import os
import pickle

import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 6, 8


def write_jpeg(path, height=HEIGHT, width=WIDTH, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def stripes(values, height=HEIGHT, width=WIDTH):
    """``height x width`` map whose columns cycle through ``values``."""
    return np.array([[values[x % len(values)] for x in range(width)] for _ in range(height)])


# --- COCO-Stuff-171: stuffthingmap id -> trainId, checked by hand against the COCO-Stuff list:
# 0 person -> 0, 11 (gap: no class) -> 255, 12 stop sign -> 11, 91 (first stuff class, banner)
# -> 80, 181 wood -> 170, 255 unlabeled -> 255.
COCO_RAW = [0, 11, 12, 91, 181, 255]
COCO_PREPARED = [0, 255, 11, 80, 170, 255]


def write_coco_stuff(root):
    expected = {}
    for split, stems in (("train2017", ["000000000009"]), ("val2017", ["000000000139", "000000000285"])):
        for k, stem in enumerate(stems):
            write_jpeg(os.path.join(root, "coco-stuff", "images", split, stem + ".jpg"), seed=k)
            shift = COCO_RAW[k:] + COCO_RAW[:k]
            write_png(os.path.join(root, "coco-stuff", "annotations", split, stem + ".png"),
                      stripes(shift).astype(np.uint8))
            expected[f"coco-stuff/annotations_detectron2/{split}/{stem}.png"] = stripes(
                COCO_PREPARED[k:] + COCO_PREPARED[:k])
    return expected


# --- ADE20K-150: 0 (other) -> 255, 1..150 -> label - 1.
ADE150_RAW = [0, 1, 75, 150]
ADE150_PREPARED = [255, 0, 74, 149]


def write_ade20k_150(root):
    expected = {}
    base = os.path.join(root, "ADEChallengeData2016")
    for k, stem in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        write_jpeg(os.path.join(base, "images", "validation", stem + ".jpg"), seed=k)
        write_png(os.path.join(base, "annotations", "validation", stem + ".png"),
                  stripes(ADE150_RAW[k:] + ADE150_RAW[:k]).astype(np.uint8))
        expected[f"ADEChallengeData2016/annotations_detectron2/validation/{stem}.png"] = stripes(
            ADE150_PREPARED[k:] + ADE150_PREPARED[:k])
    return expected


# --- ADE20K-847: seg PNG pixel (R, G) encodes class R // 10 * 256 + G; the 847 table maps
# 2978 wall -> 0, 3148 adding machine -> 846, 1831 person -> 11; class 1 is not one of the 847
# (-> 65535), 0 is unlabeled (-> 65535). R = 117 checks the floor division (117 // 10 = 11).
ADE847_PIXELS = [  # (R, G) -> expected trainId
    ((110, 162), 0),       # 11 * 256 + 162 = 2978 wall
    ((117, 162), 0),       # 117 // 10 = 11: still wall
    ((120, 76), 846),      # 12 * 256 + 76 = 3148 adding machine
    ((70, 39), 11),        # 7 * 256 + 39 = 1831 person
    ((0, 1), 65535),       # class 1: not in the 847 table
    ((0, 0), 65535),       # unlabeled
]
ADE847_NUM_OBJECTNAMES = 3688


def ade847_objectnames():
    """A full-ADE ``objectnames`` list with the 847 table's names at ``id - 1``."""
    from escnet.data.prepare.common import load_table

    names = [f"object {i}" for i in range(ADE847_NUM_OBJECTNAMES)]
    for cat in load_table("ade20k_847_categories.json"):
        names[cat["id"] - 1] = cat["name"]
    return names


def write_ade20k_full(root, large_size=None):
    """Two validation images (one ``large_size`` = (h, w) if given) and one training image."""
    folder_val = "ADE20K_2021_17_01/images/ADE/validation/home_or_hotel/bedroom"
    folder_train = "ADE20K_2021_17_01/images/ADE/training/urban/street"
    entries = [
        (folder_val, "ADE_val_00000001.jpg", (HEIGHT, WIDTH)),
        (folder_val, "ADE_val_00000002.jpg", large_size or (WIDTH, HEIGHT)),
        (folder_train, "ADE_train_00000001.jpg", (HEIGHT, WIDTH)),
    ]
    expected = {}
    for k, (folder, filename, (height, width)) in enumerate(entries):
        stem = filename[:-4]
        write_jpeg(os.path.join(root, folder, filename), height, width, seed=k)
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        labels = np.zeros((height, width), dtype=np.uint16)
        for x in range(width):
            (red, green), train_id = ADE847_PIXELS[(x + k) % len(ADE847_PIXELS)]
            rgb[:, x, 0], rgb[:, x, 1], rgb[:, x, 2] = red, green, 7  # B: instance ids, unused
            labels[:, x] = train_id
        write_png(os.path.join(root, folder, stem + "_seg.png"), rgb)
        if filename.startswith("ADE_val_"):
            expected[f"ADE20K_2021_17_01/annotations_detectron2/validation/{stem}.tif"] = labels
    index = {
        "folder": [e[0] for e in entries],
        "filename": [e[1] for e in entries],
        "objectnames": ade847_objectnames(),
        "scene": ["bedroom", "bedroom", "street"],
        "objectPresence": np.zeros((ADE847_NUM_OBJECTNAMES, len(entries)), dtype=np.int32),
    }
    with open(os.path.join(root, "ADE20K_2021_17_01", "index_ade20k.pkl"), "wb") as f:
        pickle.dump(index, f)
    return expected


# --- PASCAL-Context-59: full ids kept for PC-59 (sorted, 0 dropped) -> 0..58:
# 2 aeroplane -> 0, 9 bag -> 1, 458 wood -> 58; 1 (not kept) -> 255; unpainted (0) -> 255.
def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_pascal_context_59(root):
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    images, annotations, expected = [], [], {}
    for image_id, stem, phase in ((1, "2008_000002", "val"), (2, "2008_000003", "val"), (3, "2008_000008", "train")):
        write_jpeg(os.path.join(base, "JPEGImages", stem + ".jpg"), seed=image_id)
        images.append({"image_id": image_id, "file_name": stem + ".jpg", "phase": phase,
                       "height": HEIGHT, "width": WIDTH})
    # image 1: left half id 2, right half id 458, then a later id-9 square over the middle
    # (painted last, so it wins), one column with id 1 (not kept); the bottom row stays unpainted.
    left, right, square, other = (np.zeros((HEIGHT, WIDTH), bool) for _ in range(4))
    left[:-1, : WIDTH // 2] = True
    right[:-1, WIDTH // 2:] = True
    square[1:3, 3:5] = True
    other[:-1, 0] = True
    for ann_id, (mask, category) in enumerate([(left, 2), (right, 458), (square, 9), (other, 1)]):
        annotations.append({"id": ann_id, "image_id": 1, "category_id": category, "segmentation": rle(mask)})
    first = np.full((HEIGHT, WIDTH), 255)
    first[:-1, : WIDTH // 2] = 0
    first[:-1, WIDTH // 2:] = 58
    first[1:3, 3:5] = 1
    first[:-1, 0] = 255
    expected["VOCdevkit/VOC2010/annotations_detectron2/pc59_val/2008_000002.png"] = first
    # image 2: fully covered by id 9; image 3 (train) is not converted.
    full = np.ones((HEIGHT, WIDTH), bool)
    annotations.append({"id": 10, "image_id": 2, "category_id": 9, "segmentation": rle(full)})
    annotations.append({"id": 11, "image_id": 3, "category_id": 2, "segmentation": rle(full)})
    expected["VOCdevkit/VOC2010/annotations_detectron2/pc59_val/2008_000003.png"] = np.ones((HEIGHT, WIDTH))
    data = {
        "info": {"description": "miniature PASCAL in Detail"},
        "images": images,
        "annos_segmentation": annotations,
        "categories": [{"category_id": c, "name": n} for c, n in ((1, "accordion"), (2, "aeroplane"),
                                                                   (9, "bag"), (458, "wood"))],
    }
    with open(os.path.join(base, "trainval_merged.json"), "w") as f:
        json.dump(data, f)
    return expected


# --- PASCAL-Context-459: LabelMap - 1, 0 (unlabeled) -> 65535.
PC459_RAW = [1, 200, 459, 0]
PC459_PREPARED = [0, 199, 458, 65535]


def write_pascal_context_459(root, val_ids=("2008_000002", "2008_000003")):
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    os.makedirs(os.path.join(base, "trainval"), exist_ok=True)
    expected = {}
    for k, stem in enumerate(list(val_ids) + ["2008_000008"]):
        write_jpeg(os.path.join(base, "JPEGImages", stem + ".jpg"), seed=k)
        label_map = stripes(PC459_RAW[k:] + PC459_RAW[:k]).astype(np.uint16)
        scipy.io.savemat(os.path.join(base, "trainval", stem + ".mat"), {"LabelMap": label_map})
        if stem in val_ids:
            expected[f"VOCdevkit/VOC2010/annotations_detectron2/pc459_val/{stem}.tif"] = stripes(
                PC459_PREPARED[k:] + PC459_PREPARED[:k])
    with open(os.path.join(base, "pascalcontext_val.txt"), "w") as f:
        f.write("\n".join(val_ids) + "\n")
    return expected


# --- PASCAL VOC: 0 background, 1..20 classes, 255 boundary.
VOC_RAW = [0, 1, 15, 20, 255]
VOC20_PREPARED = [255, 0, 14, 19, 255]
VOC20B_PREPARED = [20, 0, 14, 19, 255]
VOC21_PREPARED = [0, 1, 15, 20, 255]  # VOC-21 keeps the raw encoding: background 0, classes 1..20


def write_voc(root):
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    expected = {}
    stems = ["2007_000033", "2007_000042"]
    for k, stem in enumerate(stems + ["2007_000032"]):  # the last one is a training image
        write_jpeg(os.path.join(base, "JPEGImages", stem + ".jpg"), seed=k)
        write_png(os.path.join(base, "SegmentationClassAug", stem + ".png"),
                  stripes(VOC_RAW[k:] + VOC_RAW[:k]).astype(np.uint8))
        if stem in stems:
            expected[f"VOCdevkit/VOC2012/annotations_detectron2/val/{stem}.png"] = stripes(
                VOC20_PREPARED[k:] + VOC20_PREPARED[:k])
            expected[f"VOCdevkit/VOC2012/annotations_detectron2_bg/val/{stem}.png"] = stripes(
                VOC20B_PREPARED[k:] + VOC20B_PREPARED[:k])
            expected[f"VOCdevkit/VOC2012/annotations_detectron2_21/val/{stem}.png"] = stripes(
                VOC21_PREPARED[k:] + VOC21_PREPARED[:k])
    os.makedirs(os.path.join(base, "ImageSets", "Segmentation"), exist_ok=True)
    with open(os.path.join(base, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(stems) + "\n")
    return expected


# --- PASCAL-Context-60: the PC-59 raw file; background 0, kept ids (sorted) -> 1..59, i.e.
# 2 aeroplane -> 1, 9 bag -> 2, 458 wood -> 59; unpainted (0) and not-kept ids (1) -> background 0.
def write_pascal_context_60(root):
    write_pascal_context_59(root)
    first = np.zeros((HEIGHT, WIDTH))  # image 1, painted as described in write_pascal_context_59
    first[:-1, : WIDTH // 2] = 1
    first[:-1, WIDTH // 2:] = 59
    first[1:3, 3:5] = 2
    first[:-1, 0] = 0
    pc60 = "VOCdevkit/VOC2010/annotations_detectron2/pc60_val"
    return {f"{pc60}/2008_000002.png": first, f"{pc60}/2008_000003.png": np.full((HEIGHT, WIDTH), 2)}


# --- COCO-Object: the COCO-Stuff stuffthingmaps; things -> trainId + 1, stuff and unlabeled -> 0:
# 0 person -> 1, 11 (gap) -> 255, 12 stop sign -> 12, 91 banner -> 0, 181 wood -> 0, 255 -> 0.
COCO_OBJECT_PREPARED = [1, 255, 12, 0, 0, 0]


def write_coco_object(root):
    write_coco_stuff(root)
    return {
        f"coco-stuff/annotations_detectron2_object/val2017/{stem}.png": stripes(
            COCO_OBJECT_PREPARED[k:] + COCO_OBJECT_PREPARED[:k])
        for k, stem in enumerate(["000000000139", "000000000285"])
    }


def check_prepared(root, expected, dtype):
    """Assert every expected prepared label map exists with exactly the expected values and ``dtype``."""
    from escnet.data.label_io import read_label_map

    for rel, labels in expected.items():
        got = read_label_map(os.path.join(root, rel))
        assert got.dtype == dtype, (rel, got.dtype)
        np.testing.assert_array_equal(got, labels, err_msg=rel)


def snapshot(paths):
    """``{path: (mtime_ns, bytes)}`` to check that a re-run leaves prepared files untouched."""
    result = {}
    for path in paths:
        with open(path, "rb") as f:
            result[path] = (os.stat(path).st_mtime_ns, f.read())
    return result


def write_and_prepare_all(root):
    """Write every miniature raw benchmark under ``root`` and prepare it; return all expected labels."""
    from escnet.data import prepare

    expected = {}
    for write, run in (
        (write_coco_stuff, prepare.prepare_coco_stuff),
        (write_ade20k_150, prepare.prepare_ade20k_150),
        (write_ade20k_full, prepare.prepare_ade20k_full),
        (write_pascal_context_59, prepare.prepare_pascal_context_59),
        (write_pascal_context_459, prepare.prepare_pascal_context_459),
        (write_voc, prepare.prepare_voc),
        (write_pascal_context_60, prepare.prepare_pascal_context_60),
        (write_coco_object, prepare.prepare_coco_object),
    ):
        expected.update(write(root))
        run(str(root), workers=1)
    return expected
