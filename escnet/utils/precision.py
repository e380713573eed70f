"""Inference precision: ``"fp32"`` (default) or ``"bf16"`` (autocast, on CPU and CUDA alike).

    with inference_precision("bf16", "cpu"):
        outputs = model(inputs)

bf16 is opt-in and for inference only (``TEST.PRECISION``, ``--precision``): matrix products and
convolutions run in bfloat16 (AMX / AVX-512 BF16 on recent x86 CPUs, tensor cores on GPUs), while
autocast keeps reductions such as softmax and normalisation in fp32.
"""
import contextlib

import torch

from .errors import EscnetError

PRECISIONS = ("fp32", "bf16")


def validate_precision(precision, source="precision"):
    """``precision`` lower-cased if it is one of ``PRECISIONS``, else a one-line ``EscnetError``."""
    value = str(precision).lower()
    if value not in PRECISIONS:
        raise EscnetError(f"{source}={precision!r}; expected one of {', '.join(PRECISIONS)}")
    return value


def inference_precision(precision, device):
    """Context manager running its body at ``precision`` on ``device`` (a ``torch.device`` or string)."""
    precision = validate_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
