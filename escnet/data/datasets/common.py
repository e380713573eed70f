"""Shared registration of semantic-segmentation datasets (image folder + label-map folder)."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.errors import EscnetError


def datasets_root():
    """Root of all datasets: ``$DETECTRON2_DATASETS`` or ``datasets/`` (relative to the cwd)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def is_hidden_file(name):
    """True for hidden names (leading dot): lock files, completion markers, and the temporary
    files of ``escnet.utils.io.atomic_path`` that another process is still writing."""
    return name.startswith(".")


def list_sem_seg_pairs(image_dir, gt_dir, image_ext, gt_ext, dataset_name, prepare_hint):
    """Pair ``image_dir/<stem><image_ext>`` with ``gt_dir/<stem><gt_ext>`` for every label file.

    Returns Detectron2 dicts ``{"file_name", "sem_seg_file_name", "dataset_name"}`` sorted by stem;
    hidden files (temporary files being written, lock files) are ignored. Raises
    ``EscnetError`` naming ``prepare_hint`` when a folder is missing or empty, or an image is
    missing for a label.
    """
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise EscnetError(
                f"dataset '{dataset_name}': folder {folder} is missing; {prepare_hint}"
            )
    stems = sorted(f[: -len(gt_ext)] for f in os.listdir(gt_dir) if f.endswith(gt_ext) and not is_hidden_file(f))
    if not stems:
        raise EscnetError(f"dataset '{dataset_name}': no *{gt_ext} labels in {gt_dir}; {prepare_hint}")
    records = []
    for stem in stems:
        image = os.path.join(image_dir, stem + image_ext)
        if not os.path.isfile(image):
            raise EscnetError(f"dataset '{dataset_name}': image {image} is missing for its label")
        records.append(
            {"file_name": image, "sem_seg_file_name": os.path.join(gt_dir, stem + gt_ext), "dataset_name": dataset_name}
        )
    return records


def register_sem_seg_dataset(
    name,
    image_dir,
    gt_dir,
    stuff_classes,
    ignore_label=255,
    evaluator_type="sem_seg",
    image_ext=".jpg",
    gt_ext=".png",
    prepare_hint="",
    before_load=None,
    **extra_metadata,
):
    """Register ``name`` lazily: files are listed (and checked) only when the dataset is loaded.

    ``before_load`` (optional, no arguments) runs first at every load, e.g. to generate data.
    """

    def load():
        if before_load is not None:
            before_load()
        return list_sem_seg_pairs(image_dir, gt_dir, image_ext, gt_ext, name, prepare_hint)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_dir,
        sem_seg_root=gt_dir,
        stuff_classes=list(stuff_classes),
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
        prepare_hint=prepare_hint,
        **extra_metadata,
    )
