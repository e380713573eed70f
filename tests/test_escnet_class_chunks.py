"""ESC-Net class chunking (exact) and category early rejection (CER, opt-in) on the tiny config."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model

from escnet.modeling.esc_net.escnet_model import REJECTED_LOGIT
from escnet.utils.errors import EscnetError

from conftest import tiny_cfg

NUM_CLASSES = 13
VOCAB = tuple(f"class {i}" for i in range(NUM_CLASSES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(**overrides):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**overrides))
    # non-zero map heads so that the maps after block 1 differ from the correlation
    with torch.no_grad():
        for block in model.blocks:
            if block.fusion.predicts_map:
                block.fusion.map_head.weight.normal_(0, 0.01)
    return model.eval()


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    text = F.normalize(torch.randn(NUM_CLASSES, 32, generator=generator), dim=-1)
    return images, text


def _with_cer(model, enabled=True, top_k=3, after_block=1):
    model.cer_enabled, model.cer_top_k, model.cer_after_block = enabled, top_k, after_block
    return model


@pytest.fixture(scope="module")
def model():
    return _build(CLASS_CHUNK_SIZE=0)


def test_chunked_equals_unchunked_logits(model):
    images, text = _inputs()
    with torch.no_grad():
        whole = model.predict_logits(images, text)
        for chunk_size in (1, 4, 5):
            model.class_chunk_size = chunk_size
            chunked = model.predict_logits(images, text)
            assert torch.allclose(chunked, whole, atol=1e-5), chunk_size
    model.class_chunk_size = 0
    assert not torch.allclose(whole[:, 0], whole[:, 1], atol=1e-3)  # classes differ: a real comparison


@pytest.mark.parametrize("sliding", [False, True])
def test_chunked_equals_unchunked_inference(model, sliding):
    image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    inputs = [{"image": image, "height": 50, "width": 80, "vocabulary": VOCAB}]
    model.sliding_window = sliding
    with torch.no_grad():
        whole = model(inputs)[0]["sem_seg"]
        model.class_chunk_size = 4
        model.sliding_batch = 2
        chunked = model(inputs)[0]["sem_seg"]
    model.class_chunk_size, model.sliding_window, model.sliding_batch = 0, False, 4
    assert chunked.shape == (NUM_CLASSES, 50, 80)
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert torch.allclose(chunked.sum(0), torch.ones(1), atol=1e-5)


def test_sliding_views_per_forward_follow_the_class_feature_budget(model, monkeypatch):
    """The budget bounds the views per forward (never below 1, never above TEST.SLIDING_BATCH);
    the sliding output is the same however many views share a forward."""
    per_view = NUM_CLASSES * model.grid_size[0] * model.grid_size[1] * model.hidden_dim * 4
    budget = model.class_feature_budget_bytes
    try:
        model.sliding_batch = 4
        model.class_feature_budget_bytes = 0
        assert model.sliding_views_per_forward(NUM_CLASSES, 4) == 4
        model.class_feature_budget_bytes = 2.5 * per_view
        assert model.sliding_views_per_forward(NUM_CLASSES, 4) == 2
        assert model.sliding_views_per_forward(4 * NUM_CLASSES, 4) == 1  # at least one view
        model.class_feature_budget_bytes = 100 * per_view
        assert model.sliding_views_per_forward(NUM_CLASSES, 4) == 4  # at most TEST.SLIDING_BATCH

        image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
        inputs = [{"image": image, "vocabulary": VOCAB}]
        model.sliding_window = True
        batches = []
        original = model.class_logit_chunks
        monkeypatch.setattr(model, "class_logit_chunks", lambda images, text: batches.append(len(images)) or original(images, text))
        outputs = {}
        with torch.no_grad():
            for name, views_budget in (("all", 0), ("one", 0.5 * per_view)):
                model.class_feature_budget_bytes = views_budget
                batches.clear()
                outputs[name] = model(inputs)[0]["sem_seg"]
                outputs[name + " batches"] = list(batches)
    finally:
        model.sliding_window, model.sliding_batch, model.class_feature_budget_bytes = False, 4, budget
    assert outputs["one batches"] == [1] * sum(outputs["all batches"]) and max(outputs["all batches"]) > 1
    assert torch.allclose(outputs["one"], outputs["all"], atol=1e-5)


def test_each_chunk_of_class_features_is_freed_once_decoded(model, monkeypatch):
    """Bounded memory: while chunk i is decoded, the features of chunks < i are gone (weakrefs)."""
    import weakref

    images, text = _inputs()
    refs, alive_at_call = [], []
    decode = model.decoder.forward

    def recording(features, guides, grid_size):
        alive_at_call.append(sum(r() is not None for r in refs))
        # its own storage, not a view into one tensor of the whole vocabulary's features
        assert features.untyped_storage().nbytes() == features.numel() * features.element_size()
        refs.append(weakref.ref(features))
        return decode(features, guides, grid_size)

    monkeypatch.setattr(model.decoder, "forward", recording)
    model.class_chunk_size = 4
    try:
        with torch.no_grad():
            for _ in model.class_logit_chunks(images, text):
                pass
    finally:
        model.class_chunk_size = 0
    assert len(refs) == 4  # 13 classes in chunks of 4
    assert alive_at_call == [0, 0, 0, 0]


def test_inference_refines_each_chunk_in_its_own_storage(model, monkeypatch):
    """No fresh long-lived tensor per chunk and block at inference (CPU heap drift): the features
    the decoder gets live in the storages the embedded correlation created, and the output is
    the one of the out-of-place (autograd) path."""
    images, text = _inputs()
    created, decoded = [], []
    embed, decode = model._embed_correlation, model.decoder.forward

    def recording_embed(correlation):
        features = embed(correlation)
        created.append(features.data_ptr())
        return features

    def recording_decode(features, guides, grid_size):
        decoded.append(features.data_ptr())
        return decode(features, guides, grid_size)

    monkeypatch.setattr(model, "_embed_correlation", recording_embed)
    monkeypatch.setattr(model.decoder, "forward", recording_decode)
    model.class_chunk_size = 4
    try:
        with torch.no_grad():
            in_place = model.predict_logits(images, text)
        created.clear(), decoded.clear()
        with torch.enable_grad():
            out_of_place = model.predict_logits(images, text)
            assert out_of_place.requires_grad
        assert len(created) == len(decoded) == 4 and set(created).isdisjoint(decoded)
        created.clear(), decoded.clear()
        with torch.no_grad():
            model.predict_logits(images, text)
    finally:
        model.class_chunk_size = 0
    assert len(decoded) == 4 and decoded == created
    assert torch.allclose(in_place, out_of_place.detach(), atol=1e-6)


def test_configured_budget_reaches_the_model():
    model = build_model(tiny_cfg(CLASS_FEATURE_BUDGET_MB=3))
    assert model.class_feature_budget_bytes == 3 * 2**20
    with pytest.raises(EscnetError, match="CLASS_FEATURE_BUDGET_MB"):
        build_model(tiny_cfg(CLASS_FEATURE_BUDGET_MB=-1))


def test_training_with_chunks_gives_the_same_loss_and_gradients():
    images, text = _inputs()
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    grads = []
    for chunk_size in (0, 4):
        model = _build(CLASS_CHUNK_SIZE=chunk_size).train()
        loss = F.cross_entropy(model.predict_logits(images, text), target)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("after_block", [0, 1])
def test_cer_with_k_at_least_the_vocabulary_is_the_exact_path(model, after_block):
    images, text = _inputs()
    with torch.no_grad():
        exact = model.predict_logits(images, text)
        _with_cer(model, top_k=NUM_CLASSES, after_block=after_block)
        rejecting = model.predict_logits(images, text)
    _with_cer(model, enabled=False)
    assert torch.equal(rejecting, exact)


@pytest.mark.parametrize("after_block", [0, 1])
def test_cer_keeps_the_union_of_every_pixels_top_k_and_rejected_classes_get_zero(model, after_block, monkeypatch):
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    images = model._normalise(image)[None]
    # classes 7.. point away from the image's mean feature: never among a pixel's top 2
    with torch.no_grad():
        mean = F.normalize(model.clip_encoder.encode_image_dense(images)[0].mean(dim=(0, 2, 3)), dim=0)
    text = _inputs()[1]
    text[7:] = F.normalize(-mean + 0.01 * text[7:], dim=-1)
    top_k = 2
    calls = []
    original = model._reject

    def recording(kept, class_maps, class_features, block_text):
        result = original(kept, class_maps, class_features, block_text)
        calls.append((class_maps.clone(), result[0].clone()))
        return result

    monkeypatch.setattr(model, "_reject", recording)
    _with_cer(model, top_k=top_k, after_block=after_block)
    monkeypatch.setattr(model.clip_encoder, "encode_text", lambda vocabulary: text)
    with torch.no_grad():
        logits = model.predict_logits(images, text)
        output = model([{"image": image, "vocabulary": VOCAB}])[0]["sem_seg"]
    _with_cer(model, enabled=False)

    assert len(calls) == 2
    maps, kept = calls[0]
    if after_block == 0:  # the CLIP correlation itself
        dense, _ = model.clip_encoder.encode_image_dense(images)
        correlation = torch.einsum("bchw,nc->bnhw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))
        assert torch.allclose(maps, correlation, atol=1e-6)
    expected = torch.unique(maps.flatten(2).topk(top_k, dim=1).indices)
    assert torch.equal(kept, expected)
    assert 0 < expected.numel() < NUM_CLASSES  # some classes really are rejected
    rejected = torch.ones(NUM_CLASSES, dtype=torch.bool)
    rejected[expected] = False
    assert torch.all(logits[:, rejected] == REJECTED_LOGIT)
    assert torch.all(logits[:, ~rejected] > REJECTED_LOGIT / 2)

    assert torch.equal(calls[1][1], kept)  # the same image through the model's forward
    assert torch.allclose(output.sum(0), torch.ones(1), atol=1e-5)
    assert torch.all(output[rejected] == 0)  # the defined lowest probability: exactly 0
    assert torch.all(output[~rejected].amax(dim=(1, 2)) > 0)


def test_cer_with_sliding_windows_gives_probabilities_and_zero_for_classes_rejected_everywhere(model, monkeypatch):
    image = torch.randint(0, 256, (3, 64, 100), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = model.clip_encoder.encode_image_dense(model._normalise(image)[None, :, :, :64])[0]
    text = _inputs()[1]
    text[7:] = F.normalize(-F.normalize(dense.mean(dim=(0, 2, 3)), dim=0) + 0.01 * text[7:], dim=-1)
    monkeypatch.setattr(model.clip_encoder, "encode_text", lambda vocabulary: text)
    kept_sets = []
    original = model._reject

    def recording(*args):
        result = original(*args)
        kept_sets.append(result[0])
        return result

    monkeypatch.setattr(model, "_reject", recording)
    model.sliding_window, model.sliding_batch = True, 2
    _with_cer(model, top_k=2)
    with torch.no_grad():
        output = model([{"image": image, "vocabulary": VOCAB}])[0]["sem_seg"]
    _with_cer(model, enabled=False)
    model.sliding_window, model.sliding_batch = False, 4
    assert len(kept_sets) == 2  # 2 windows + the global view, 2 views per forward
    ever_kept = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    ever_kept[torch.cat(kept_sets)] = True
    assert not ever_kept.all()
    assert output.shape == (NUM_CLASSES, 64, 100)
    assert torch.isfinite(output).all()
    assert torch.allclose(output.sum(0), torch.ones(1), atol=1e-5)
    assert torch.all(output[~ever_kept] == 0)


def test_cer_is_inference_only_training_sees_every_class():
    images, text = _inputs()
    exact = _build().train()
    rejecting = _with_cer(_build().train(), top_k=1)
    assert torch.equal(rejecting.predict_logits(images, text), exact.predict_logits(images, text))


@pytest.mark.parametrize(
    "overrides, message",
    [({"CLASS_CHUNK_SIZE": -1}, "CLASS_CHUNK_SIZE"), ({"NUM_BLOCKS": 2}, "CER.AFTER_BLOCK")],
)
def test_bad_settings_raise(overrides, message):
    cfg = tiny_cfg(**overrides)
    if message == "CER.AFTER_BLOCK":
        cfg.MODEL.ESCNET.CER.AFTER_BLOCK = 2
    with pytest.raises(EscnetError, match=message):
        build_model(cfg)


@pytest.mark.parametrize("skip_first_layer_pe", [True, False])
def test_factored_sam_step_equals_segment_anythings_block(skip_first_layer_pe):
    """The SAM step with the dense prompt kept factored equals TwoWayAttentionBlock on the sum."""
    from escnet.modeling.esc_net.prompt_generator import PseudoPromptGenerator
    from escnet.modeling.esc_net.sam_blocks import FactoredDense, SamClassBlock, SamPromptEncoder

    torch.manual_seed(3)
    batch, classes, grid, sam_dim = 2, 3, (8, 8), 32
    block = SamClassBlock(12, 10, 6, sam_dim, 2, 64, 2, skip_first_layer_pe=skip_first_layer_pe)
    encoder = SamPromptEncoder(sam_dim, grid, 8)
    maps = torch.randn(batch * classes, *grid)
    prompts = PseudoPromptGenerator(num_regions=3, threshold=0.5, temperature=0.1, kmeans_iters=5)(maps)
    sparse, factored = encoder.embed_pseudo_prompt_tokens(prompts, ("point", "mask"), factored=True)
    assert isinstance(factored, FactoredDense)
    _, dense = encoder.embed_pseudo_prompt_tokens(prompts, ("point", "mask"))
    assert torch.allclose(factored.materialise(), dense, atol=1e-6)
    image_tokens = block.image_tokens(torch.randn(batch, 12, *grid))
    key_pe = block.key_pe(encoder.get_dense_pe())
    text = torch.randn(classes, 10)
    weights = torch.softmax(torch.randn(batch, classes, grid[0] * grid[1]), dim=1)
    with torch.no_grad():
        expected = block.weighted_keys(image_tokens, text, sparse, dense, key_pe, weights)
        result = block.weighted_keys(image_tokens, text, sparse, factored, key_pe, weights)
    assert torch.allclose(result, expected, atol=1e-5)
