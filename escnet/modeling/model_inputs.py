"""Reading the model contract's inputs (docs/architecture.md), shared by every meta-architecture."""
import torch
import torch.nn.functional as F

from ..data.build import default_vocabulary
from ..utils.errors import EscnetError
from ..vocabulary import validate_vocabulary


def config_vocabularies(cfg):
    """``(train, test, error)``: the config's default vocabularies (None where it has none) and,
    if any is missing, the reason (raised later only for inputs that carry no vocabulary)."""
    vocabularies, errors = {}, []
    for is_train in (True, False):
        try:
            vocabularies[is_train] = default_vocabulary(cfg, is_train)
        except EscnetError as err:
            vocabularies[is_train] = None
            errors.append(str(err))
    return vocabularies[True], vocabularies[False], "; ".join(errors)


def batch_vocabulary(batched_inputs, default, missing_error=""):
    """The vocabulary shared by the batch's inputs, else ``default``; an ``EscnetError`` when the
    inputs disagree or neither gives one."""
    given = [x.get("vocabulary") for x in batched_inputs]
    if any(v is not None for v in given):
        if any(v is None for v in given) or len({tuple(v) for v in given}) > 1:
            raise EscnetError("all inputs of a batch must share one vocabulary")
        return validate_vocabulary(given[0])
    if default is None:
        raise EscnetError(f"the input has no vocabulary and the config gives none: {missing_error}")
    return tuple(default)


def resize_image(image, size):
    """``C x H x W`` -> ``C x size``, bilinear (no-op when already that size)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False)[0]


def normalise_image(image, device, input_format, pixel_mean, pixel_std):
    """``3 x H x W`` uint8 in ``input_format`` (RGB/BGR) -> float RGB ``(x - mean) / std`` on ``device``."""
    image = image.to(device, non_blocking=True).float()
    if input_format == "BGR":
        image = image.flip(0)
    return (image - pixel_mean) / pixel_std


def output_size(x):
    """``(height, width)`` the prediction for input ``x`` must have (its image's size by default)."""
    return int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1]))


def check_labels(target, num_classes, ignore_value):
    """Raise ``EscnetError`` if ``target`` holds a label outside ``0..num_classes-1`` (ignore aside)."""
    labelled = target != ignore_value
    largest = int(torch.where(labelled, target, 0).max()) if target.numel() else 0
    smallest = int(torch.where(labelled, target, 0).min()) if target.numel() else 0
    if largest >= num_classes:
        raise EscnetError(
            f"label {largest} in sem_seg is outside the vocabulary of {num_classes} classes (ignore value {ignore_value})"
        )
    if smallest < 0:
        raise EscnetError(f"negative label {smallest} in sem_seg (ignore value {ignore_value})")
