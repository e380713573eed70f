"""Built-in synthetic semantic-segmentation data: textured shapes on textured backgrounds.

Deterministic (seeded per split and image index), small, and hard enough that a model must use
colour *and* texture: every class has a natural-language name used as its vocabulary entry.
Ignore pixels (the dataset's ``ignore_label``) mark a thin band on each object's boundary, as
PASCAL VOC does.
"""
import dataclasses
import os

import numpy as np
from tqdm import tqdm

from ..utils.io import save_image_atomic
from ..utils.locking import create_once
from .label_io import write_label_map

# Class names: three background textures, then three foreground objects.
SYNTHETIC_CLASSES = ("grass", "water", "sand", "red ball", "blue box", "yellow kite")
BACKGROUND_CLASSES = (0, 1, 2)
OBJECT_CLASSES = (3, 4, 5)
IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size of one split of the synthetic dataset."""

    num_images: int
    image_size: int = 64
    max_objects: int = 3
    boundary_width: int = 1
    seed: int = 0


SPLITS = {
    "train": SyntheticSpec(num_images=240, seed=1),
    "val": SyntheticSpec(num_images=48, seed=2),
}


def _background(kind, size, rng):
    """Return a ``size x size x 3`` float RGB texture for background class ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    if kind == 0:  # grass: green, fine vertical blades
        blades = np.sin(xx * rng.uniform(1.2, 1.8) + rng.uniform(0, 6.28))
        base = np.stack([60 + 10 * blades, 140 + 25 * blades, 50 + 10 * blades], -1)
        return base + 12 * noise[..., None]
    if kind == 1:  # water: blue, horizontal waves
        waves = np.sin(yy * rng.uniform(0.4, 0.7) + 0.3 * np.sin(xx * 0.2))
        base = np.stack([40 + 15 * waves, 90 + 25 * waves, 170 + 30 * waves], -1)
        return base + 6 * noise[..., None]
    # sand: beige, grainy
    base = np.stack([np.full_like(xx, 200), np.full_like(xx, 175), np.full_like(xx, 120)], -1)
    return base + 22 * noise[..., None]


def _object_colour(kind, rng):
    jitter = rng.uniform(-20, 20, 3)
    colour = {3: (210, 40, 40), 4: (50, 60, 200), 5: (230, 210, 40)}[kind]
    return np.clip(np.array(colour, np.float32) + jitter, 0, 255)


def _object_mask(kind, size, rng):
    """Boolean mask of one object: ball = disc, box = axis-aligned square, kite = rhombus."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = rng.uniform(0.12, 0.22) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    if kind == 3:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    if kind == 4:
        return (np.abs(yy - cy) <= radius * 0.9) & (np.abs(xx - cx) <= radius * 0.9)
    return np.abs(yy - cy) / 1.3 + np.abs(xx - cx) <= radius


def _boundary(mask, width):
    """Pixels within ``width`` of the mask's edge (inside or outside)."""
    grown = mask.copy()
    shrunk = mask.copy()
    for _ in range(width):
        padded = np.pad(grown, 1)
        grown = grown | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        padded = np.pad(shrunk, 1, constant_values=True)
        shrunk = shrunk & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return grown & ~shrunk


def render_example(spec, index):
    """Render image ``index`` of a split: (``S x S x 3`` uint8 RGB image, ``S x S`` uint8 labels)."""
    rng = np.random.default_rng([spec.seed, index])
    size = spec.image_size
    background = int(rng.choice(BACKGROUND_CLASSES))
    image = _background(background, size, rng)
    labels = np.full((size, size), background, np.uint8)
    ignore = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        kind = int(rng.choice(OBJECT_CLASSES))
        mask = _object_mask(kind, size, rng)
        shade = 1.0 + 0.15 * rng.normal(size=(size, size, 1))
        image = np.where(mask[..., None], _object_colour(kind, rng) * shade, image)
        labels[mask] = kind
        ignore = (ignore & ~mask) | _boundary(mask, spec.boundary_width)
    labels[ignore] = IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), labels


def split_dirs(root, split):
    """(image folder, label folder) of ``split`` under the dataset root ``root``."""
    return os.path.join(root, "images", split), os.path.join(root, "annotations", split)


def generate_split(root, split, spec=None):
    """Write the split's PNG images and labels under ``root`` unless already complete.

    Files are written atomically, so an interrupted generation resumes where it stopped.
    """
    spec = spec or SPLITS[split]
    image_dir, label_dir = split_dirs(root, split)
    names = [f"{split}_{i:05d}.png" for i in range(spec.num_images)]
    todo = [
        (i, n)
        for i, n in enumerate(names)
        if not (os.path.isfile(os.path.join(image_dir, n)) and os.path.isfile(os.path.join(label_dir, n)))
    ]
    if not todo:
        return
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i, name in tqdm(todo, desc=f"generating synthetic {split}", unit="img"):
        image, labels = render_example(spec, i)
        save_image_atomic(os.path.join(image_dir, name), image)
        write_label_map(os.path.join(label_dir, name), labels)


def generate_dataset(root):
    """Write every split of ``SPLITS`` under ``root`` (idempotent, see ``generate_split``)."""
    for split in SPLITS:
        generate_split(root, split)


def ensure_dataset(root, timeout=None):
    """Generate the dataset under ``root`` once, however many processes ask at the same time.

    The first caller generates it under a file lock next to ``root`` and then writes
    ``root/.complete``; the others (other ranks, other runs sharing ``$DETECTRON2_DATASETS``)
    wait for the lock, up to ``timeout`` seconds, and read the finished dataset.
    """
    create_once(root, generate_dataset, timeout)
