"""ESCNet meta-architecture on the tiny config: contract, invariance, ablation switches, learning."""
import os

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from escnet.utils.errors import EscnetError

from conftest import tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = ("grass", "red ball", "sky", "blue box")


def _build(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides))


def _scene(index, size=64):
    """A synthetic-like image: grass below, sky above, a red ball and a blue box (labels: VOCAB)."""
    generator = torch.Generator().manual_seed(index)
    image = torch.zeros(3, size, size)
    label = torch.zeros(size, size, dtype=torch.long)
    image[1] = 110 + 50 * torch.rand(size, size, generator=generator)
    half = size // 2
    image[:, :half] = torch.tensor([90.0, 150.0, 230.0]).view(3, 1, 1)
    label[:half] = 2
    y, x = 20 + 18 * index, 10 + 24 * index
    image[:, y:y + 14, x:x + 14] = torch.tensor([220.0, 30.0, 30.0]).view(3, 1, 1)
    label[y:y + 14, x:x + 14] = 1
    image[:, 44:58, 44:58] = torch.tensor([30.0, 30.0, 220.0]).view(3, 1, 1)
    label[44:58, 44:58] = 3
    return image.to(torch.uint8), label


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return _build().eval()


def test_training_returns_a_loss_and_every_trainable_parameter_gets_a_gradient():
    model = _build().train()
    images = [_scene(i) for i in range(2)]
    inputs = [{"image": image, "sem_seg": label, "vocabulary": VOCAB} for image, label in images]
    inputs[1]["sem_seg"][:5] = 255  # ignored pixels
    loss = model(inputs)["loss_sem_seg"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    groups = {model.lr_group(n) for n, p in model.named_parameters() if p.requires_grad}
    assert groups == {"clip", "sam", "default"}
    assert model.lr_group("clip_encoder.clip.visual.transformer.resblocks.0.attn.in_proj_weight") == "clip"
    assert model.lr_group("blocks.1.sam.block.mlp.lin1.weight") == "sam"
    assert model.lr_group("prompt_encoder.mask_downscaling.0.weight") == "sam"
    assert model.lr_group("blocks.1.sam.image_proj.weight") == "default"
    assert model.lr_group("decoder.head.weight") == "default"


def test_inference_gives_probabilities_at_the_requested_size_for_a_batch(model):
    image, _ = _scene(0)
    small = torch.nn.functional.interpolate(image[None].float(), size=(40, 50))[0].to(torch.uint8)
    inputs = [
        {"image": image, "height": 128, "width": 96, "vocabulary": VOCAB},
        {"image": small, "height": 40, "width": 50, "vocabulary": VOCAB},
    ]
    with torch.no_grad():
        outputs = model(inputs)
    assert [tuple(o["sem_seg"].shape) for o in outputs] == [(4, 128, 96), (4, 40, 50)]
    for output in outputs:
        assert torch.allclose(output["sem_seg"].sum(0), torch.ones(1), atol=1e-5)
        assert float(output["sem_seg"].min()) >= 0.0


def test_sliding_window_inference_combines_windows_and_the_global_view():
    model = _build().eval()
    image = torch.randint(0, 255, (3, 70, 150), dtype=torch.uint8)
    with torch.no_grad():
        global_only = model([{"image": image, "height": 70, "width": 150, "vocabulary": VOCAB}])[0]["sem_seg"]
        model.sliding_window = True
        sliding = model([{"image": image, "height": 70, "width": 150, "vocabulary": VOCAB}])[0]["sem_seg"]
        model.sliding_batch = 1  # one view per forward pass: same result, less memory
        one_by_one = model([{"image": image, "height": 70, "width": 150, "vocabulary": VOCAB}])[0]["sem_seg"]
    assert torch.allclose(one_by_one, sliding, atol=1e-5)
    assert sliding.shape == global_only.shape == (4, 70, 150)
    assert torch.allclose(sliding.sum(0), torch.ones(1), atol=1e-5)
    assert not torch.allclose(sliding, global_only, atol=1e-4)
    assert model._window_offsets(150, 64) == [0, 42, 84, 86]
    assert model._window_offsets(64, 64) == [0]


def test_permuting_the_vocabulary_permutes_the_predictions(model):
    image, _ = _scene(1)
    order = [2, 0, 3, 1]
    permuted = tuple(VOCAB[i] for i in order)
    with torch.no_grad():
        original = model([{"image": image, "vocabulary": VOCAB}])[0]["sem_seg"]
        shuffled = model([{"image": image, "vocabulary": permuted}])[0]["sem_seg"]
    assert torch.allclose(shuffled, original[order], atol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 3, 200])
def test_vocabularies_of_any_size_run(model, num_classes):
    vocabulary = tuple(f"thing number {i}" for i in range(num_classes))
    with torch.no_grad():
        output = model([{"image": _scene(0)[0], "vocabulary": vocabulary}])[0]["sem_seg"]
    assert output.shape == (num_classes, 64, 64)
    assert torch.allclose(output.sum(0), torch.ones(1), atol=1e-4)


def test_default_vocabularies_come_from_the_configured_datasets(model):
    assert model.train_vocabulary == tuple(MetadataCatalog.get("synthetic_shapes_train").stuff_classes)
    assert model.test_vocabulary == tuple(MetadataCatalog.get("synthetic_shapes_val").stuff_classes)
    with torch.no_grad():
        output = model([{"image": _scene(0)[0]}])[0]["sem_seg"]
    assert output.shape[0] == len(model.test_vocabulary)


@pytest.mark.parametrize(
    "overrides",
    [
        {"PROMPT_TYPES": ["point"]},
        {"PROMPT_TYPES": ["box"]},
        {"PROMPT_TYPES": ["mask"]},
        {"PROMPT_TYPES": ["point", "box"]},
        {"PROMPT_TYPES": ["box", "mask"]},
        {"PROMPT_TYPES": ["point", "box", "mask"]},
        {"SAM_INIT": "none"},
        {"SAM_INIT": "random", "NUM_BLOCKS": 3, "SAM_LAYER_MAP": [1, 1, 0]},
    ],
)
def test_ablation_switches_build_and_train(overrides):
    model = _build(**overrides).train()
    image, label = _scene(0)
    loss = model([{"image": image, "sem_seg": label, "vocabulary": VOCAB}])["loss_sem_seg"]
    loss.backward()
    trainable = [p for p in model.named_parameters() if p[1].requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    if overrides.get("SAM_INIT") == "none":
        assert model.prompt_encoder is None and all(block.sam is None for block in model.blocks)
        assert "sam" not in {model.lr_group(n) for n, _ in trainable}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"PROMPT_TYPES": ["point", "scribble"]}, "PROMPT_TYPES"),
        ({"PROMPT_TYPES": []}, "PROMPT_TYPES is empty"),
        ({"SAM_INIT": "imagenet"}, "SAM_INIT"),
        ({"SAM_LAYER_MAP": [0, 2]}, "SAM_LAYER_MAP"),
        ({"SAM_LAYER_MAP": [0]}, "SAM_LAYER_MAP"),
    ],
)
def test_bad_model_settings_raise(overrides, message):
    with pytest.raises(EscnetError, match=message):
        _build(**overrides)


def test_bad_inputs_raise_one_line_errors(model):
    image, label = _scene(0)
    with pytest.raises(EscnetError, match="share one vocabulary"):
        model([{"image": image, "vocabulary": VOCAB}, {"image": image, "vocabulary": VOCAB[:2]}])
    model.train()
    try:
        with pytest.raises(EscnetError, match="label 3 in sem_seg is outside the vocabulary of 2 classes"):
            model([{"image": image, "sem_seg": label, "vocabulary": VOCAB[:2]}])
    finally:
        model.eval()


def test_tiny_model_overfits_two_images():
    model = _build(seed=1).train()
    inputs = [{"image": image, "sem_seg": label, "vocabulary": VOCAB} for image, label in map(_scene, range(2))]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(inputs)["loss_sem_seg"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        prediction = model([{"image": inputs[0]["image"], "vocabulary": VOCAB}])[0]["sem_seg"].argmax(0)
    accuracy = float((prediction == inputs[0]["sem_seg"]).float().mean())
    assert accuracy > 0.8, accuracy


def test_mixed_precision_trains_and_predicts_float32_probabilities():
    model = _build().train()
    inputs = [{"image": image, "sem_seg": label, "vocabulary": VOCAB} for image, label in map(_scene, range(2))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(inputs)["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model([{"image": inputs[0]["image"], "vocabulary": VOCAB}])[0]["sem_seg"]
    assert output.dtype == torch.float32
    assert torch.allclose(output.sum(0), torch.ones(1), atol=1e-4)


def test_count_params_flops_tool_matches_the_model():
    import importlib.util

    spec = importlib.util.spec_from_file_location("count_params_flops", os.path.join(REPO, "tools", "count_params_flops.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.count(tiny_cfg(), num_classes=3)
    model = _build()
    assert result["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert result["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    gflops = result["gflops"]
    assert gflops["total"] > 0 and gflops["ESC blocks (SAM blocks + VLF)"] > 0 and gflops["decoder"] > 0
    parts = sum(v for k, v in gflops.items() if k != "total")
    assert parts == pytest.approx(gflops["total"], rel=1e-6)
    # several class chunks trace too (chunk sizes stay Python ints), with the same cost
    whole = tool.count(tiny_cfg(CLASS_CHUNK_SIZE=0), num_classes=5)["gflops"]
    chunked = tool.count(tiny_cfg(CLASS_CHUNK_SIZE=2), num_classes=5)["gflops"]
    assert chunked["decoder"] == pytest.approx(whole["decoder"], rel=1e-6)
    assert chunked["total"] == pytest.approx(whole["total"], rel=0.02)


def test_trained_weights_need_no_pretrained_downloads(monkeypatch, tmp_path):
    """With MODEL.WEIGHTS set, CLIP/SAM pretrained files are not looked up (offline works)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_cfg(CLIP_PRETRAINED="openai", SAM_INIT="pretrained",
                   SAM_CHECKPOINT=str(tmp_path / "missing_sam.pth"))
    with pytest.raises(EscnetError):
        build_model(cfg)  # no trained weights: the pretrained files are required
    cfg.MODEL.WEIGHTS = str(tmp_path / "trained.pth")
    model = build_model(cfg)
    assert model.clip_encoder.embed_dim == 32
