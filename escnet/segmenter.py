"""``Segmenter``: segment any picture with any vocabulary from Python.

    from escnet import Segmenter
    segmenter = Segmenter("tiny", weights="output/model_final.pth")
    result = segmenter.segment("photo.jpg", ["cat", "sofa, couch", "window"])
    result.labels          # H x W, uint8 (uint16 above 255 classes); class index per pixel
    result.probabilities   # Nc x H x W float32 scores in 0..1 (ESC-Net: softmax; SED: per-class sigmoid)

Test-time preprocessing follows Detectron2's ``DefaultPredictor``: the image is resized with
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, passed as a ``uint8`` tensor in
``INPUT.FORMAT`` with the original ``height``/``width`` and the ``vocabulary``, and the model (in
eval mode, under ``torch.no_grad``) returns probabilities at the original resolution.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data.dataset_mapper import build_test_augmentations
from .engine.checkpoint import AtomicCheckpointer
from .engine.setup import load_config
from .modeling.trained_weights import needs_trained_weights
from .utils.errors import EscnetError
from .utils.memory import apply_memory_settings
from .utils.precision import inference_precision, validate_precision
from .vocabulary import validate_vocabulary

__all__ = [
    "Segmenter",
    "SegmentationResult",
    "build_segmenter_config",
    "resolve_config_file",
    "read_image",
    "to_rgb_array",
    "unlabelled_value",
]

UINT8_MAX = np.iinfo(np.uint8).max
UINT16_MAX = np.iinfo(np.uint16).max
# 16-bit intensities map onto 8 bits by this factor (65535 / 255 = 257 exactly).
UINT16_TO_UINT8 = UINT16_MAX // UINT8_MAX
COLOR_FORMATS = ("RGB", "BGR")


def unlabelled_value(num_classes):
    """The label value of "unlabelled" pixels: 255 for up to 255 classes (uint8), else 65535 (uint16)."""
    if num_classes <= UINT8_MAX:
        return UINT8_MAX
    if num_classes <= UINT16_MAX:
        return UINT16_MAX
    raise EscnetError(f"vocabulary has {num_classes} classes; at most {UINT16_MAX} are supported")


def label_dtype(num_classes):
    """``np.uint8`` for up to 255 classes, else ``np.uint16`` (the unlabelled value included)."""
    return np.uint8 if unlabelled_value(num_classes) == UINT8_MAX else np.uint16


@dataclass(frozen=True)
class SegmentationResult:
    """The segmentation of one image with one vocabulary.

    ``labels``: ``H x W`` class indices into ``vocabulary`` (uint8 up to 255 classes, else uint16);
    pixels whose best probability is below ``score_threshold`` hold ``unlabelled``.
    ``scores``: ``H x W`` float32 probability of the best class.
    ``probabilities``: ``Nc x H x W`` float32 scores, the model's own (ESC-Net: softmax over the
    vocabulary; SED: one sigmoid per class, which need not sum to 1), or ``None`` when not
    requested. ``H x W`` is the original image size (after EXIF rotation).
    """

    labels: np.ndarray
    scores: np.ndarray
    probabilities: Optional[np.ndarray]
    vocabulary: Tuple[str, ...]
    unlabelled: int
    score_threshold: float

    @property
    def image_size(self):
        """``(height, width)`` of the segmented image."""
        return tuple(self.labels.shape)

    def pixel_shares(self):
        """Share of the image's pixels per class (length ``Nc``) and the unlabelled share.

        The shares and the unlabelled share sum to 1.
        """
        counts = np.bincount(self.labels.ravel(), minlength=max(len(self.vocabulary), self.unlabelled + 1))
        total = self.labels.size
        return counts[: len(self.vocabulary)] / total, counts[self.unlabelled] / total


def resolve_config_file(config):
    """Return the path of ``config``: an existing file, or a shipped config's name (``"tiny"``, ``"vitb"``).

    Names are looked up as ``configs/<name>.yaml`` in the repository holding the package
    (escnet is installed editable from its repository).
    """
    config = os.fspath(config)
    if os.path.isfile(config):
        return config
    candidates = []
    for folder in _config_folders():
        candidates += [os.path.join(folder, config), os.path.join(folder, config + ".yaml")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    known = sorted(
        {f[: -len(".yaml")] for folder in _config_folders() for f in os.listdir(folder) if f.endswith(".yaml")}
    )
    hint = f"; known config names: {', '.join(known)}" if known else ""
    raise EscnetError(f"config file not found: {config!r}{hint}")


def _config_folders():
    """Folders holding shipped configs: the repository's ``configs/``."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    return [folder] if os.path.isdir(folder) else []


def default_device():
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_segmenter_config(config, weights=None, opts=(), device=None):
    """Build a frozen Detectron2 config: file (or shipped name), then ``opts``, ``weights``, ``device``.

    Loaded with ``escnet.engine.load_config`` like every escnet tool. ``device=None`` keeps a
    ``MODEL.DEVICE`` given in ``opts``, else picks CUDA when available.
    """
    opts = list(opts or [])
    # The device goes in before loading, so that a config's default "cuda" is not warned about.
    if device is not None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EscnetError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        opts += ["MODEL.DEVICE", device]
    elif "MODEL.DEVICE" not in opts[::2]:
        opts += ["MODEL.DEVICE", default_device()]
    cfg = load_config(resolve_config_file(config), opts, freeze=False)
    if weights is not None:
        cfg.MODEL.WEIGHTS = os.fspath(weights)
    if cfg.INPUT.FORMAT not in COLOR_FORMATS:
        raise EscnetError(f"INPUT.FORMAT must be one of {COLOR_FORMATS}, got {cfg.INPUT.FORMAT!r}")
    cfg.freeze()
    return cfg


def read_image(path):
    """Read an image file as an ``H x W x 3`` uint8 RGB array, upright (EXIF orientation applied).

    Grayscale is replicated to three channels, alpha is dropped (as Detectron2's ``read_image``
    does), 16-bit images are scaled to 8 bits (``value / 257``) and float images are read as 0..1.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise EscnetError(f"expected an image file, got a folder: {path!r}")
    if not os.path.isfile(path):
        raise EscnetError(f"image not found: {path!r}")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb_array(img, source=path)
    except UnidentifiedImageError:
        raise EscnetError(f"not an image file (unrecognised format): {path!r}") from None
    except Image.DecompressionBombError as err:
        raise EscnetError(f"image too large: {path!r}: {err}") from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise EscnetError(f"cannot read image {path!r}: {reason}") from None


def pil_to_rgb_array(img, source="image"):
    """Convert a PIL image to an upright ``H x W x 3`` uint8 RGB array (see ``read_image``)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if img.mode == "F":
        return _gray_to_rgb(_scale_unit_float(np.asarray(img), source))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as err:
            raise EscnetError(f"{source}: unsupported image mode {img.mode!r}: {err}") from None
    return np.asarray(img, dtype=np.uint8).copy()


def to_rgb_array(image, color_format="RGB"):
    """Return ``image`` (a path, a PIL image or a NumPy array) as an ``H x W x 3`` uint8 RGB array.

    NumPy arrays may be ``H x W`` or ``H x W x 1`` (grayscale), ``H x W x 3`` or ``H x W x 4``
    (alpha dropped) with channels in ``color_format`` order (``"RGB"`` or ``"BGR"``, as read by
    OpenCV); dtype uint8, uint16 (scaled to 8 bits) or float in 0..1. ``color_format`` does not
    apply to paths and PIL images, which are RGB by definition.
    """
    if color_format not in COLOR_FORMATS:
        raise EscnetError(f"color_format must be one of {COLOR_FORMATS}, got {color_format!r}")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb_array(image)
    if not isinstance(image, np.ndarray):
        raise EscnetError(f"unsupported image type {type(image).__name__}: give a path, a PIL image or a NumPy array")
    array = image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise EscnetError(f"image array must be H x W, H x W x 1, H x W x 3 or H x W x 4; got shape {image.shape}")
    if min(array.shape[:2]) == 0:
        raise EscnetError(f"image array is empty: shape {image.shape}")
    if array.dtype == np.uint16:
        array = _scale_16bit(array)
    elif np.issubdtype(array.dtype, np.floating):
        array = _scale_unit_float(array, "image array")
    elif array.dtype != np.uint8:
        raise EscnetError(f"image array dtype must be uint8, uint16 or float in 0..1; got {array.dtype}")
    if array.ndim == 2:
        return _gray_to_rgb(array)
    array = array[:, :, :3]
    if color_format == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _scale_16bit(array):
    """Map 16-bit intensities (0..65535) to uint8 (0..255)."""
    array = np.clip(array.astype(np.float64), 0, UINT16_MAX)
    return np.round(array / UINT16_TO_UINT8).astype(np.uint8)


def _scale_unit_float(array, source):
    """Map float intensities in 0..1 to uint8; other ranges are ambiguous and rejected."""
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise EscnetError(f"{source}: float images must hold values in 0..1 (convert to uint8 otherwise)")
    return np.round(array * UINT8_MAX).astype(np.uint8)


def _gray_to_rgb(array):
    return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))


class Segmenter:
    """An escnet model (ESC-Net, SED...) ready to segment images with any vocabulary (built once, reused).

    Args:
        config: a config file path, a shipped config name (``"tiny"``, ``"vitb"``, ``"vitl"``) or a
            Detectron2 ``CfgNode`` (used as is: ``weights``/``opts``/``device`` must then be unset).
        weights: checkpoint path; overrides ``MODEL.WEIGHTS``.
        opts: ``["KEY", "VALUE", ...]`` config overrides.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        allow_random_weights: accept an empty ``MODEL.WEIGHTS`` (random initialisation; for tests).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; opt-in, faster on CPUs with AMX / AVX-512
            BF16); default: ``TEST.PRECISION``.
    """

    def __init__(self, config, weights=None, opts=(), device=None, allow_random_weights=False, precision=None):
        if isinstance(config, CfgNode):
            if weights is not None or opts or device is not None:
                raise ValueError("weights/opts/device apply to config files; set them on the CfgNode instead")
            cfg = config.clone()
            cfg.freeze()
        else:
            cfg = build_segmenter_config(config, weights=weights, opts=opts, device=device)
        self.cfg = cfg
        weights_path = cfg.MODEL.WEIGHTS
        if not weights_path and not allow_random_weights and needs_trained_weights(cfg):
            raise EscnetError(
                "config has no weights (MODEL.WEIGHTS is empty): pass a checkpoint with --opts MODEL.WEIGHTS "
                "<file> (Python: weights=...), or --allow-random-weights (allow_random_weights=True) "
                "to run an untrained model"
            )
        if weights_path and "://" not in weights_path and not os.path.isfile(weights_path):
            raise EscnetError(f"checkpoint not found: {weights_path!r} (MODEL.WEIGHTS)")
        apply_memory_settings(cfg)
        self.model = build_model(cfg)
        self.model.eval()
        if weights_path:
            try:
                AtomicCheckpointer(self.model).load(weights_path)
            except EscnetError as err:  # shape mismatch or missing tensors
                raise EscnetError(f"cannot load checkpoint {weights_path!r}: {err}") from None
            except Exception as err:  # unpickling errors, wrong file type
                raise EscnetError(f"cannot load checkpoint {weights_path!r}: {str(err).splitlines()[0]}") from None
        self.resize = T.AugmentationList(build_test_augmentations(cfg))
        self.input_format = cfg.INPUT.FORMAT
        self.precision = validate_precision(cfg.TEST.PRECISION if precision is None else precision, "precision")

    def segment(self, image, vocabulary, color_format="RGB", score_threshold=0.0, return_probabilities=True):
        """Segment one image (path, PIL image or NumPy array) with ``vocabulary``.

        ``vocabulary``: list of class names; an entry may hold comma-separated synonyms
        (``"sofa, couch"``). ``score_threshold`` in 0..1: pixels whose best probability is
        below it are left unlabelled (``SegmentationResult.unlabelled``); 0 labels every pixel.
        A list of images returns a list of results (see ``segment_batch``).
        """
        if isinstance(image, (list, tuple)):
            return self.segment_batch(image, vocabulary, color_format, score_threshold, return_probabilities)
        return self.segment_batch([image], vocabulary, color_format, score_threshold, return_probabilities)[0]

    def segment_batch(
        self, images, vocabulary, color_format="RGB", score_threshold=0.0, return_probabilities=True, batch_size=1
    ):
        """Segment several images with one vocabulary, ``batch_size`` images per forward pass.

        Returns one ``SegmentationResult`` per image, in order. Text features of the vocabulary
        are computed by the model once and reused (the model caches them per vocabulary).
        """
        images = list(images)
        vocabulary = validate_vocabulary(vocabulary)
        unlabelled_value(len(vocabulary))  # rejects vocabularies too large for a label map
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise EscnetError(f"score threshold must lie in 0..1, got {score_threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results = []
        for start in range(0, len(images), batch_size):
            arrays = [to_rgb_array(image, color_format) for image in images[start : start + batch_size]]
            results += self.segment_rgb_arrays(arrays, vocabulary, float(score_threshold), return_probabilities)
        return results

    def segment_rgb_arrays(self, arrays, vocabulary, score_threshold=0.0, return_probabilities=True):
        """Run the model on ``H x W x 3`` uint8 RGB arrays sharing one validated ``vocabulary`` tuple."""
        inputs = [self.model_input(array, vocabulary) for array in arrays]
        with torch.no_grad(), inference_precision(self.precision, self.cfg.MODEL.DEVICE):
            outputs = self.model(inputs)
        return [
            self._result(output["sem_seg"], array.shape[:2], vocabulary, score_threshold, return_probabilities)
            for output, array in zip(outputs, arrays)
        ]

    def model_input(self, rgb, vocabulary):
        """The model's input dict for one ``H x W x 3`` uint8 RGB array (resized like ``DefaultPredictor``)."""
        height, width = rgb.shape[:2]
        image = rgb if self.input_format == "RGB" else rgb[:, :, ::-1]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.resize(aug_input)  # in place
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "vocabulary": vocabulary}

    def _result(self, probabilities, size, vocabulary, score_threshold, return_probabilities):
        """Turn the model's ``Nc x H x W`` probabilities into a ``SegmentationResult``."""
        expected = (len(vocabulary), *size)
        if tuple(probabilities.shape) != expected:
            raise RuntimeError(f"model returned sem_seg of shape {tuple(probabilities.shape)}, expected {expected}")
        scores, labels = probabilities.max(dim=0)
        unlabelled = unlabelled_value(len(vocabulary))
        labels = labels.cpu().numpy().astype(label_dtype(len(vocabulary)))
        scores = scores.float().cpu().numpy()
        if score_threshold > 0:
            labels[scores < score_threshold] = unlabelled
        return SegmentationResult(
            labels=labels,
            scores=scores,
            probabilities=probabilities.float().cpu().numpy() if return_probabilities else None,
            vocabulary=vocabulary,
            unlabelled=unlabelled,
            score_threshold=score_threshold,
        )

