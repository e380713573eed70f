"""Parity of our SED with the official forward (``xb534/SED``), as far as offline allows.

The official code cannot run here (it needs CUDA, its open_clip fork and the released weights),
so this file holds an independent, functional reference of the official inference written from
reading that code, with plain ``torch.nn.functional`` ops on an **official-name state dict**
(``sem_seg_head.predictor.clip_model.*`` / ``sem_seg_head.predictor.transformer.*``):

* ``SED.forward`` (eval): CLIP normalisation with the official ``MODEL.CLIP_PIXEL_MEAN/STD``,
  bilinear resize to the CLIP resolution, ``sem_seg_postprocess`` (crop to the input image, then
  bilinear resize to ``height x width``);
* the open_clip fork's ``TimmModel.forward(dense=True)``: timm ConvNeXt stem and stages
  (res2..res5), every last-stage pixel through the trunk head's LayerNorm and CLIP's projection;
* ``SEDPredictor.class_embeddings``: per (class, template) text features, synonyms split at
  ", " averaged per template; the open_clip text transformer (causal, end-of-text pooling);
* ``Aggregator`` with ``TEXT_GUIDANCE_DIM 0``: cost map, ``conv1``, skip projections of
  res4/res3/res2, the transposed-conv chain of the cost map, three ``Up`` layers (ConvNeXt
  block, ``ClassTransformerLayer`` linear attention across classes, upsample, ``DoubleConv``),
  ``head``; ``fast_conv_decoder`` (CER: per-pixel top-k by ``argsort``, union by ``bincount``,
  zeros for rejected classes).

The same random state dict goes into our SED through ``MODEL.WEIGHTS`` (official names converted
on load); per-pixel sigmoid scores must agree within 1e-4, CER off and on.

Not covered: the released weights themselves, open_clip's pretrained download, the tokenizer
(open_clip's, used by both sides), the test-time resize before the model (Detectron2's
``ResizeShortestEdge``, shared), and the official crop of outputs larger than a (tiny) input
image, which never applies to inputs larger than S/4 (all inputs here).
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO

SED_TINY = os.path.join(REPO, "configs", "sed_tiny.yaml")
TINY_CLIP_JSON = os.path.join(REPO, "configs", "clip", "tiny-convnext.json")

CLIP = "sem_seg_head.predictor.clip_model."
AGG = "sem_seg_head.predictor.transformer."
# Official sed/config.py: MODEL.CLIP_PIXEL_MEAN / MODEL.CLIP_PIXEL_STD (0..255 RGB).
OFFICIAL_CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
OFFICIAL_CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)
# timm's test_convnext tower (configs/clip/tiny-convnext.json): LayerNorm eps 1e-5, tanh GELU.
# (The released ConvNeXt-B/L towers use eps 1e-6 and the exact GELU: timm's own defaults.)
TRUNK_NORM_EPS = 1e-5
TRUNK_GELU = "tanh"
TEXT_NORM_EPS = 1e-5  # open_clip's LayerNorm
DECODER_CNEXT_EPS = 1e-6  # official transformer/convnext.py LayerNorm
LINEAR_ATTENTION_EPS = 1e-6  # official LinearAttention
GROUP_WIDTH = 16  # official DoubleConv: GroupNorm(channels // 16, channels)
# The parity tolerance on sigmoid scores; both sides run fp32 on the CPU, where they agree
# to ~4e-7 (measured), so the comparison also holds at FP32_TOLERANCE: that is what makes small
# effects (the class attention's q / k with random weights: 1e-4..1e-3) count.
TOLERANCE = 1e-4
FP32_TOLERANCE = 1e-5
QK_GAIN = 3.0

VOCABULARY = ("sofa, couch", "grass", "sky", "red ball", "blue box", "window", "wooden table",
              "road", "tree", "person", "dog", "water")


class RecordingDict(dict):
    """A state dict that remembers which tensors were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


# ------------------------------------------------------------------ the functional reference
def layer_norm(x, sd, name, eps):
    """LayerNorm over the last dimension with the tensors ``name.weight`` / ``name.bias``."""
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def layer_norm_2d(x, sd, name, eps):
    """LayerNorm over the channels of ``N x C x H x W``."""
    return layer_norm(x.permute(0, 2, 3, 1), sd, name, eps).permute(0, 3, 1, 2)


def conv(x, sd, name, bias=True, **kwargs):
    return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"] if bias else None, **kwargs)


def linear(x, sd, name, bias=True):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"] if bias else None)


def count_indexed(sd, prefix):
    """Number of ``prefix<i>.`` sub-modules in the state dict."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in sd.keys() if k.startswith(prefix)}
    return max(indices) + 1


def reference_image_tower(sd, images):
    """timm ConvNeXt trunk and CLIP head read densely: (stages [res2..res5], dense B x C x h x w)."""
    trunk = CLIP + "visual.trunk."
    stem = sd[trunk + "stem.0.weight"]
    x = conv(images, sd, trunk + "stem.0", stride=stem.shape[-1])
    x = layer_norm_2d(x, sd, trunk + "stem.1", TRUNK_NORM_EPS)
    stages = []
    for s in range(count_indexed(sd, trunk + "stages.")):
        stage = f"{trunk}stages.{s}."
        if stage + "downsample.1.weight" in sd:
            x = layer_norm_2d(x, sd, stage + "downsample.0", TRUNK_NORM_EPS)
            x = conv(x, sd, stage + "downsample.1", stride=sd[stage + "downsample.1.weight"].shape[-1])
        for b in range(count_indexed(sd, stage + "blocks.")):
            block = f"{stage}blocks.{b}."
            kernel = sd[block + "conv_dw.weight"].shape[-1]
            y = conv(x, sd, block + "conv_dw", padding=kernel // 2, groups=x.shape[1]).permute(0, 2, 3, 1)
            y = layer_norm(y, sd, block + "norm", TRUNK_NORM_EPS)
            y = linear(F.gelu(linear(y, sd, block + "mlp.fc1"), approximate=TRUNK_GELU), sd, block + "mlp.fc2")
            x = x + (y * sd[block + "gamma"]).permute(0, 3, 1, 2)
        stages.append(x)
    # Each pixel as a 1 x 1 image through the head: average pool (identity), LayerNorm, projection.
    pixels = layer_norm(x.permute(0, 2, 3, 1), sd, trunk + "head.norm", TRUNK_NORM_EPS)
    dense = F.linear(pixels, sd[CLIP + "visual.head.proj.weight"]).permute(0, 3, 1, 2)
    return stages, dense


def reference_encode_text(sd, tokens, heads):
    """open_clip ``encode_text`` on ``N x L`` tokens (full context, causal mask) -> ``N x C``."""
    x = sd[CLIP + "token_embedding.weight"][tokens] + sd[CLIP + "positional_embedding"]
    length = tokens.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for i in range(count_indexed(sd, CLIP + "transformer.resblocks.")):
        block = f"{CLIP}transformer.resblocks.{i}."
        h = layer_norm(x, sd, block + "ln_1", TEXT_NORM_EPS)
        qkv = F.linear(h, sd[block + "attn.in_proj_weight"], sd[block + "attn.in_proj_bias"])
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # N x H x L x D
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + causal, dim=-1)
        x = x + linear((weights @ v).transpose(1, 2).flatten(2), sd, block + "attn.out_proj")
        h = layer_norm(x, sd, block + "ln_2", TEXT_NORM_EPS)
        x = x + linear(F.gelu(linear(h, sd, block + "mlp.c_fc")), sd, block + "mlp.c_proj")
    x = layer_norm(x, sd, CLIP + "ln_final", TEXT_NORM_EPS)
    pooled = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]  # end-of-text: the highest token id
    return pooled @ sd[CLIP + "text_projection"]


def reference_text_features(sd, vocabulary, templates, heads):
    """Official ``class_embeddings``: ``T x P x C``, per template, synonyms (", ") averaged."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=sd[CLIP + "positional_embedding"].shape[0])
    classes = []
    for entry in vocabulary:
        names = entry.split(", ")
        texts = [template.format(name) for template in templates for name in names]
        features = F.normalize(reference_encode_text(sd, tokenizer(texts), heads), dim=-1)
        if len(names) > 1:
            features = F.normalize(features.view(len(templates), len(names), -1).mean(dim=1), dim=-1)
        classes.append(features)
    return torch.stack(classes)


def reference_linear_attention(q, k, v):
    """``N x H x L x D`` linear attention with the elu + 1 feature map (equal to the official
    formula, where dividing the values by L and multiplying the result by L cancel)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    numerator = q @ (k.transpose(-1, -2) @ v)
    denominator = q @ k.sum(dim=-2).unsqueeze(-1)
    return numerator / (denominator + LINEAR_ATTENTION_EPS)


def reference_up(sd, name, x, skip, corr, heads, pooling):
    """Official ``Up`` for one image: ``x`` ``T x C x H x W`` -> ``T x C' x 2H x 2W``."""
    # ConvNeXt block (layer scale gamma, no drop path)
    kernel = sd[name + "cnext.dwconv.weight"].shape[-1]
    y = conv(x, sd, name + "cnext.dwconv", padding=kernel // 2, groups=x.shape[1]).permute(0, 2, 3, 1)
    y = layer_norm(y, sd, name + "cnext.norm", DECODER_CNEXT_EPS)
    y = linear(F.gelu(linear(y, sd, name + "cnext.pwconv1")), sd, name + "cnext.pwconv2") * sd[name + "cnext.gamma"]
    x = x + y.permute(0, 3, 1, 2)
    # ClassTransformerLayer: pooled pixels, each a sequence of its T class features
    classes, channels, height, width = x.shape
    pooled = F.avg_pool2d(x, kernel_size=tuple(pooling))
    ph, pw = pooled.shape[-2:]
    tokens = pooled.permute(2, 3, 0, 1).reshape(ph * pw, classes, channels)
    a = name + "attention."
    h = layer_norm(tokens, sd, a + "norm1", 1e-5)
    q, k, v = (linear(h, sd, f"{a}attention.{m}").unflatten(-1, (heads, -1)).transpose(1, 2) for m in "qkv")
    tokens = tokens + reference_linear_attention(q, k, v).transpose(1, 2).flatten(2)
    h = layer_norm(tokens, sd, a + "norm2", 1e-5)
    tokens = tokens + linear(F.relu(linear(h, sd, a + "MLP.0")), sd, a + "MLP.2")
    tokens = tokens.reshape(ph, pw, classes, channels).permute(2, 3, 0, 1)
    x = x + F.interpolate(tokens, size=(height, width), mode="bilinear", align_corners=True)
    # upsample, concatenate the image's skip (same for every class) and the class's cost guidance
    y = F.conv_transpose2d(x, sd[name + "up.weight"], sd[name + "up.bias"], stride=2)
    y = torch.cat([y, skip.expand(classes, -1, -1, -1), corr], dim=1)
    for c, g in ((0, 1), (3, 4)):
        y = conv(y, sd, f"{name}conv.double_conv.{c}", bias=False, padding=1)
        channels_out = y.shape[1]
        gn = f"{name}conv.double_conv.{g}"
        y = F.relu(F.group_norm(y, channels_out // GROUP_WIDTH, sd[gn + ".weight"], sd[gn + ".bias"]))
    return y


def reference_aggregator(sd, dense, stages, text, heads, pooling, top_k=None):
    """Official ``Aggregator`` for one image -> ``T x H/4 x W/4`` sigmoid scores.

    ``top_k`` None: ``conv_decoder`` (aux heads unused at inference); else ``fast_conv_decoder``.
    """
    img = F.normalize(dense, dim=1)[0]  # C x h x w
    cost = torch.einsum("chw,tpc->tphw", img, F.normalize(text, dim=-1))  # (B T) x P x h x w, B = 1
    x = conv(cost, sd, AGG + "conv1", padding=sd[AGG + "conv1.weight"].shape[-1] // 2)
    layers = count_indexed(sd, AGG + "decoder_guidance_projection.")
    guidance = stages[::-1][1:]  # res4, res3, res2
    skips = [F.relu(conv(g, sd, f"{AGG}decoder_guidance_projection.{i}.0", padding=1)) for i, g in enumerate(guidance[:layers])]
    corr_guidance, corr = [], cost
    for i in range(layers):
        name = f"{AGG}decoder_corr_guidance_projection.{i}.0"
        corr = F.relu(F.conv_transpose2d(corr, sd[name + ".weight"], sd[name + ".bias"], stride=2))
        corr_guidance.append(corr)
    alive = torch.arange(len(text))
    for i in range(layers):
        if top_k is not None:
            aux = conv(x, sd, f"{AGG}head{i}", padding=1)[:, 0]  # T' x H x W
            best = torch.argsort(aux, dim=0, descending=True)[:top_k].reshape(-1)
            valid = torch.bincount(best, minlength=len(alive)) > 0
            x, alive = x[valid], alive[valid]
        x = reference_up(sd, f"{AGG}decoder{i + 1}.", x, skips[i], corr_guidance[i][alive], heads, pooling)
    logits = conv(x, sd, AGG + "head", padding=1)[:, 0]
    scores = torch.zeros(len(text), *logits.shape[-2:])
    scores[alive] = logits.sigmoid()
    return scores, alive


def reference_sed(sd, inputs, vocabulary, templates, input_size, heads, text_heads, pooling, top_k=None):
    """Official ``SED.forward`` at inference, image by image: (``Nc x height x width`` scores, survivors)."""
    mean = torch.tensor(OFFICIAL_CLIP_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(OFFICIAL_CLIP_PIXEL_STD).view(3, 1, 1)
    text = reference_text_features(sd, vocabulary, templates, text_heads)
    results = []
    for x in inputs:
        image = (x["image"].float() - mean) / std
        image = F.interpolate(image[None], size=(input_size, input_size), mode="bilinear", align_corners=False)
        stages, dense = reference_image_tower(sd, image)
        scores, alive = reference_aggregator(sd, dense, stages, text, heads, pooling, top_k)
        # sem_seg_postprocess: crop to the input image's size, then resize to height x width
        scores = scores[:, : x["image"].shape[-2], : x["image"].shape[-1]]
        scores = F.interpolate(scores[None], size=(x["height"], x["width"]), mode="bilinear", align_corners=False)[0]
        results.append((scores, alive))
    return results


# ------------------------------------------------------------------ the test set-up
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_official_state_dict(names_and_shapes, seed=0):
    """Random tensors under the official names, scaled so activations stay O(1): weights
    ~ N(0, 1/fan_in), norm scales and layer scales ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.1^2).

    The queries and keys of the class attention get ``QK_GAIN`` times that: with random weights
    the classes of a pixel look alike and elu + 1 linear attention is then close to a plain mean,
    which would leave errors in q / k below the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (shape, dtype) in names_and_shapes.items():
        noise = torch.randn(shape, generator=generator)
        gain = QK_GAIN if any(f"attention.attention.{m}." in name for m in "qk") else 1.0
        if len(shape) >= 2:
            value = gain * noise / math.sqrt(math.prod(shape[1:]))
        elif gain != 1.0:
            value = 0.1 * gain * noise
        elif len(shape) == 0:
            value = torch.tensor(math.log(1 / 0.07))  # logit_scale (unused by SED)
        elif name.endswith("bias"):
            value = 0.1 * noise
        else:  # LayerNorm / GroupNorm weights, layer scales (gamma)
            value = 1 + 0.2 * noise
        state[name] = value.to(dtype)
    return state


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-name random checkpoint of the tiny config, saved as a ``model_final.pth``."""
    from detectron2.modeling import build_model

    from escnet.engine import load_config
    from escnet.modeling.sed import to_official_names

    cfg = load_config(SED_TINY, ["MODEL.DEVICE", "cpu"])
    # The official names and shapes of this configuration (tests/test_sed.py checks the decoder's
    # names against the official source); the values are drawn afresh below.
    names = {k: (tuple(v.shape), v.dtype) for k, v in to_official_names(build_model(cfg).state_dict()).items()}
    state = random_official_state_dict(names)
    path = str(tmp_path_factory.mktemp("sed_official") / "model_final.pth")
    torch.save({"model": state, "iteration": 79999}, path)
    with open(TINY_CLIP_JSON) as f:
        text_heads = json.load(f)["text_cfg"]["heads"]
    s = cfg.MODEL.SED
    settings = dict(templates=tuple(s.CLIP_TEMPLATES), input_size=s.CLIP_INPUT_SIZE, heads=s.NUM_HEADS,
                    text_heads=text_heads, pooling=tuple(s.POOLING_SIZE))
    return path, state, settings


def load_ours(path, top_k=None):
    """Our SED built from configs/sed_tiny.yaml with ``MODEL.WEIGHTS`` (as train_net.py --eval-only does)."""
    from detectron2.modeling import build_model

    from escnet.engine import AtomicCheckpointer, load_config

    cer = ["MODEL.SED.CER.ENABLED", "False"] if top_k is None else ["MODEL.SED.CER.ENABLED", "True", "MODEL.SED.CER.TOP_K", str(top_k)]
    cfg = load_config(SED_TINY, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path, *cer])
    model = build_model(cfg)
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    return model


def odd_inputs():
    """Two RGB uint8 images of odd, non-square sizes, predictions asked at other odd sizes."""
    generator = torch.Generator().manual_seed(3)
    inputs = []
    for size, out in (((45, 71), (59, 93)), ((33, 27), (41, 23))):
        # smooth random colours (a 4 x 4 grid upsampled) plus noise: some spatial structure
        base = F.interpolate(torch.rand(1, 3, 4, 4, generator=generator) * 255, size=size, mode="bilinear")[0]
        image = (base + 20 * torch.randn(3, *size, generator=generator)).clamp(0, 255).round().to(torch.uint8)
        inputs.append({"image": image, "height": out[0], "width": out[1], "vocabulary": VOCABULARY})
    return inputs


@pytest.mark.parametrize("top_k", [None, 1, 2], ids=["cer_off", "cer_k1", "cer_k2"])
def test_per_pixel_scores_equal_the_official_forward(official, top_k):
    path, state, settings = official
    model = load_ours(path, top_k)
    assert model.cer_enabled == (top_k is not None)
    inputs = odd_inputs()
    with torch.no_grad():
        ours = [o["sem_seg"] for o in model(inputs)]
        recorded = RecordingDict(state)
        expected = reference_sed(recorded, inputs, VOCABULARY, top_k=top_k, **settings)
    for scores, (reference, alive), x in zip(ours, expected, inputs):
        assert scores.shape == reference.shape == (len(VOCABULARY), x["height"], x["width"])
        torch.testing.assert_close(scores, reference, atol=TOLERANCE, rtol=0)
        assert float((scores - reference).abs().max()) < FP32_TOLERANCE
        # The comparison is not vacuous: scores spread over the sigmoid's range.
        assert float(reference[alive].std()) > 0.05
        if top_k is not None:
            # The first rejection sees the 2 x 2 grid of a 64 x 64 input: at most 4 k classes survive.
            assert 1 <= len(alive) <= 4 * top_k < len(VOCABULARY)
            rejected = [c for c in range(len(VOCABULARY)) if c not in set(alive.tolist())]
            assert torch.all(scores[rejected] == 0) and float(scores[alive].min()) > 0
    if top_k is not None:
        # Every tensor of the checkpoint took part (SED never uses CLIP's logit scale).
        assert set(state) - recorded.read == {CLIP + "logit_scale"}


def test_a_mismatched_tensor_is_caught_by_the_reference(official, tmp_path):
    """The comparison can fail: exchanging the official q and k of the first class attention
    (what a wrong name mapping would do) moves the scores well beyond the fp32 tolerance."""
    path, state, settings = official
    swapped = dict(state)
    for p in ("weight", "bias"):
        q, k = f"{AGG}decoder1.attention.attention.q.{p}", f"{AGG}decoder1.attention.attention.k.{p}"
        swapped[q], swapped[k] = state[k], state[q]
    swapped_path = str(tmp_path / "swapped.pth")
    torch.save({"model": swapped}, swapped_path)
    inputs = odd_inputs()[:1]
    with torch.no_grad():
        ours = load_ours(swapped_path)(inputs)[0]["sem_seg"]
        reference, _ = reference_sed(state, inputs, VOCABULARY, **settings)[0]
    assert float((ours - reference).abs().max()) > 10 * FP32_TOLERANCE
