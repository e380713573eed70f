"""bf16 inference (opt-in): Segmenter, demo, train_net/Trainer evaluation; agreement with fp32."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from escnet import Segmenter
from escnet.data.synthetic import SPLITS, SYNTHETIC_CLASSES, render_example
from escnet.utils.errors import EscnetError
from escnet.utils.precision import inference_precision, validate_precision

from conftest import REPO

# Share of synthetic-val pixels whose fp32 argmax label must survive bf16 on the tiny trained
# model. Measured: 99.90% (0.10% of 196,608 pixels change); the bound leaves a wide margin.
MIN_AGREEMENT = 0.98
NUM_IMAGES = 16


def _dtypes_seen(segmenter, image):
    """Output dtypes of every Linear layer during one segmentation."""
    seen = set()
    handles = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
               for m in segmenter.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        segmenter.segment(image, SYNTHETIC_CLASSES)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_bf16_runs_in_bf16_and_agrees_with_fp32(tiny_trained):
    images = [render_example(SPLITS["val"], i)[0] for i in range(NUM_IMAGES)]
    fp32 = Segmenter("tiny", weights=tiny_trained.weights, device="cpu")
    bf16 = Segmenter("tiny", weights=tiny_trained.weights, device="cpu", precision="bf16")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    assert _dtypes_seen(fp32, images[0]) == {torch.float32}
    assert torch.bfloat16 in _dtypes_seen(bf16, images[0])
    reference = [fp32.segment(image, SYNTHETIC_CLASSES) for image in images]
    lowered = [bf16.segment(image, SYNTHETIC_CLASSES) for image in images]
    for ref, low in zip(reference, lowered):
        assert low.probabilities.dtype == np.float32 and low.probabilities.shape == ref.probabilities.shape
        np.testing.assert_allclose(low.probabilities.sum(0), 1.0, atol=1e-3)
    agreement = np.mean([np.mean(r.labels == b.labels) for r, b in zip(reference, lowered)])
    assert MIN_AGREEMENT <= agreement < 1.0 + 1e-9
    # bf16 really changes the numbers (else the test would compare fp32 with itself)
    assert max(np.abs(r.probabilities - b.probabilities).max() for r, b in zip(reference, lowered)) > 1e-4


def test_precision_is_validated_with_one_line_errors(checkpoint):
    assert validate_precision("BF16") == "bf16"
    with pytest.raises(EscnetError, match=r"^precision='fp16'; expected one of fp32, bf16$"):
        Segmenter("tiny", weights=checkpoint, device="cpu", precision="fp16")
    with pytest.raises(EscnetError, match=r"^TEST.PRECISION='half'"):
        validate_precision("half", "TEST.PRECISION")
    segmenter = Segmenter("tiny", weights=checkpoint, device="cpu", opts=["TEST.PRECISION", "bf16"])
    assert segmenter.precision == "bf16"  # the config's default, overridable per Segmenter


def test_inference_precision_contexts():
    with inference_precision("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with inference_precision("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_demo_and_train_net_take_the_flag(checkpoint, monkeypatch):
    spec = importlib.util.spec_from_file_location("escnet_demo_precision", os.path.join(REPO, "demo", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    args = demo.get_parser().parse_args(
        ["--config-file", "tiny", "--input", "x.png", "--vocab", "a,b", "--output", "out", "--precision", "bf16",
         "--device", "cpu", "--opts", "MODEL.WEIGHTS", checkpoint]
    )
    assert demo.build_segmenter(args).precision == "bf16"

    spec = importlib.util.spec_from_file_location("escnet_train_net_precision", os.path.join(REPO, "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", "tiny.yaml"), "--eval-only", "--precision", "bf16",
         "OUTPUT_DIR", os.path.join(os.path.dirname(checkpoint), "eval"), "MODEL.DEVICE", "cpu"]
    )
    assert train_net.setup(args).TEST.PRECISION == "bf16"


def test_trainer_evaluation_honours_test_precision(checkpoint, tmp_path, monkeypatch):
    import detectron2.engine.defaults as defaults

    from escnet.engine import Trainer, load_config

    seen = []

    def recording_inference(model, data_loader, evaluator):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {"sem_seg": {"mIoU": 1.0, "fwIoU": 1.0, "mACC": 1.0, "pACC": 1.0}}

    monkeypatch.setattr(defaults, "inference_on_dataset", recording_inference)
    for precision in ("fp32", "bf16"):
        cfg = load_config(os.path.join(REPO, "configs", "tiny.yaml"),
                          ["TEST.PRECISION", precision, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"])
        Trainer.test(cfg, torch.nn.Identity())
    assert seen == [(False, seen[0][1]), (True, torch.bfloat16)]
