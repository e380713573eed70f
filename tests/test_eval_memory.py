"""Memory stays flat over a long evaluation: no per-image state kept, the text cache bounded."""
import os

import psutil
import torch

from conftest import tiny_cfg

NUM_IMAGES = 320
IMAGE_SIZE = 64  # the tiny model's input size (INPUT.MIN_SIZE_TEST): no resizing cost
# RSS is sampled every SAMPLE_EVERY images; growth is measured from the sample after WARMUP images.
WARMUP = 80
SAMPLE_EVERY = 20
# Allowed RSS growth over the NUM_IMAGES - WARMUP images after the warm-up. Keeping each image's
# prediction (6 classes x 64 x 64 float32 = 96 KiB) grows RSS by ~25 MiB and fails; the measured
# growth is under 1 MiB.
MAX_GROWTH_MIB = 12.0


class RssProbe:
    """Iterate a data loader, recording this process's RSS (MiB) every ``every`` images and giving
    each batch a different vocabulary (same size), so the text cache sees a new key per batch."""

    def __init__(self, loader, every, vocabulary):
        self.loader, self.every, self.vocabulary = loader, every, tuple(vocabulary)
        self.samples = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        process = psutil.Process()
        for index, batch in enumerate(self.loader):
            if index % self.every == 0:
                self.samples.append((index, process.memory_info().rss / 2**20))
            for sample in batch:
                sample["vocabulary"] = self.vocabulary[:-1] + (f"{self.vocabulary[-1]} {index}",)
            yield batch


def _write_dataset(root):
    """``NUM_IMAGES`` small synthetic pictures (plain PNG writes: no fsync per file, it is a test)."""
    from PIL import Image

    from escnet.data.synthetic import SyntheticSpec, render_example

    spec = SyntheticSpec(num_images=NUM_IMAGES, image_size=IMAGE_SIZE, max_objects=2, seed=7)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "labels"))
    for index in range(NUM_IMAGES):
        image, labels = render_example(spec, index)
        Image.fromarray(image).save(os.path.join(root, "images", f"{index:05d}.png"))
        Image.fromarray(labels).save(os.path.join(root, "labels", f"{index:05d}.png"))


def test_evaluation_rss_stays_flat_over_hundreds_of_images(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from escnet.data.datasets.common import register_sem_seg_dataset
    from escnet.data.synthetic import IGNORE_LABEL, SYNTHETIC_CLASSES
    from escnet.engine import Trainer

    name = "h2_memory_probe"
    _write_dataset(str(tmp_path))
    if name not in DatasetCatalog.list():
        register_sem_seg_dataset(name, str(tmp_path / "images"), str(tmp_path / "labels"), SYNTHETIC_CLASSES,
                                 ignore_label=IGNORE_LABEL, image_ext=".png", gt_ext=".png")
    cfg = tiny_cfg()
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.TEXT_CACHE.ENABLED = False  # the in-memory cache is under test, not the disk store
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    torch.manual_seed(0)
    model = build_model(cfg)
    probe = RssProbe(Trainer.build_test_loader(cfg, name), SAMPLE_EVERY, SYNTHETIC_CLASSES)
    evaluator = Trainer.build_evaluator(cfg, name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, also on a busy machine
    try:
        results = inference_on_dataset(model, probe, evaluator)
    finally:
        torch.set_num_threads(threads)

    assert results["sem_seg"]["mIoU"] >= 0
    assert len(probe.samples) == NUM_IMAGES // SAMPLE_EVERY
    baseline = dict(probe.samples)[WARMUP]
    after = [rss for index, rss in probe.samples if index >= WARMUP]
    growth = max(after) - baseline
    print(f"RSS over {NUM_IMAGES} images: {baseline:.1f} MiB after {WARMUP}, max {max(after):.1f} MiB, "
          f"growth {growth:+.1f} MiB")
    assert growth < MAX_GROWTH_MIB, probe.samples
    caches = [module._text_cache for module in model.modules() if hasattr(module, "_text_cache")]
    assert caches and all(len(cache) <= cfg.MODEL.ESCNET.CLIP_TEXT_CACHE_SIZE for cache in caches)
