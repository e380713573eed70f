"""ESC-Net equals its frozen reference (tests/data/escnet_reference.pt) within 1e-4 (fp32).

The reference was written by tools/make_escnet_reference.py from the implementation before the
speed work of issue 9 (regenerated only on purpose): the tiny config's weights (without the text
tower), inputs, text features and outputs of several cases (1, 4 and 13 classes, two images,
box prompts, no SAM, sliding-window inference). Every faster path must reproduce it.
"""
import os

import pytest
import torch

from detectron2.modeling import build_model

from conftest import tiny_cfg

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "escnet_reference.pt")
TOLERANCE = 1e-4
TEXT_TOWER_PREFIXES = tuple(
    "clip_encoder.clip." + name
    for name in ("token_embedding", "transformer.", "ln_final", "text_projection", "positional_embedding", "attn_mask")
)


@pytest.fixture(scope="module")
def reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch.load(REFERENCE, map_location="cpu", weights_only=False)
    torch.set_num_threads(threads)


def build_reference_model(state_dict, **overrides):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**overrides)).eval()
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(TEXT_TOWER_PREFIXES)]
    assert not missing, f"reference lacks {missing[:3]}"
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return model


def run_case(model, case):
    with torch.no_grad():
        if case["kind"] == "logits":
            return model.predict_logits(case["images"], case["text"])
        vocabulary, text = case["vocabulary"], case["text"]
        model.clip_encoder.encode_text = lambda names: text if tuple(names) == vocabulary else None
        model.sliding_window = True
        image = case["images"][0]
        inputs = [{"image": image, "height": image.shape[-2], "width": image.shape[-1], "vocabulary": vocabulary}]
        return model(inputs)[0]["sem_seg"]


CASE_NAMES = (
    "four_classes_two_images",
    "one_class",
    "thirteen_classes",
    "point_box_mask_prompts",
    "no_sam",
    "sliding_window",
)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_model_equals_the_frozen_reference(reference, name):
    case = reference["cases"][name]
    model = build_reference_model(reference["state_dict"], **case["overrides"])
    output = run_case(model, case)
    assert output.shape == case["output"].shape
    error = float((output - case["output"]).abs().max())
    assert error <= TOLERANCE, f"{name}: max |difference| {error:.2e} > {TOLERANCE}"


def test_reference_is_sensitive_to_the_weights(reference):
    """A changed weight must show (guards against a test that cannot fail)."""
    state = dict(reference["state_dict"])
    key = "blocks.0.fusion.class_attention.out_proj.weight"
    state[key] = state[key] * 1.01
    case = reference["cases"]["four_classes_two_images"]
    output = run_case(build_reference_model(state), case)
    assert float((output - case["output"]).abs().max()) > TOLERANCE
