"""SED (escnet/modeling/sed): CER, vocabulary handling, official checkpoints, LR groups, the API,
tools/benchmark_sed.py."""
import json
import os

import pytest
import torch

from conftest import REPO, run_cli

SED_TINY = os.path.join(REPO, "configs", "sed_tiny.yaml")
SED_B = os.path.join(REPO, "configs", "sed_convnext_b.yaml")
SED_L = os.path.join(REPO, "configs", "sed_convnext_l.yaml")
VOCABULARY = ("grass", "water", "sand", "red ball", "blue box", "yellow kite")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sed_cfg(config=SED_TINY, opts=()):
    from escnet.engine import load_config

    return load_config(config, ["MODEL.DEVICE", "cpu", *opts])


@pytest.fixture(scope="module")
def model():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    sed = build_model(sed_cfg())
    sed.eval()
    return sed


def image_input(seed=0, size=(48, 64), vocabulary=VOCABULARY):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
    return {"image": image, "height": size[0] + 7, "width": size[1] - 5, "vocabulary": tuple(vocabulary)}


def run(model, inputs, cer=None, top_k=None):
    saved = model.cer_enabled, model.cer_top_k
    try:
        if cer is not None:
            model.cer_enabled = cer
        if top_k is not None:
            model.cer_top_k = top_k
        with torch.no_grad():
            return [o["sem_seg"] for o in model(inputs)]
    finally:
        model.cer_enabled, model.cer_top_k = saved


# ------------------------------------------------------------------ outputs and CER
def test_outputs_are_per_class_sigmoids_at_the_requested_size(model):
    x = image_input()
    (scores,) = run(model, [x], cer=False)
    assert scores.shape == (len(VOCABULARY), x["height"], x["width"])
    assert 0 < float(scores.min()) and float(scores.max()) < 1
    # Not a softmax: the scores of a pixel do not sum to one.
    assert not torch.allclose(scores.sum(0), torch.ones_like(scores[0]), atol=1e-2)


def test_sigmoid_of_logits_at_quarter_resolution_then_resized(model):
    """Inference = sigmoid of the decoder's S/4 logits, bilinearly resized (the official order)."""
    import torch.nn.functional as F

    x = image_input(3)
    (scores,) = run(model, [x], cer=False)
    image = (x["image"].float() - model.encoder.pixel_mean) / model.encoder.pixel_std
    image = F.interpolate(image[None], size=model.input_size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        cost, stages = model.cost_map(image, model.encoder.encode_text(VOCABULARY))
        logits, _ = model.decoder(cost, stages)
    assert logits.shape[-1] == model.input_size[1] // 4
    expected = F.interpolate(logits.sigmoid(), size=(x["height"], x["width"]), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_cer_with_k_at_least_nc_equals_cer_off(model):
    inputs = [image_input(1), image_input(2)]
    full = run(model, inputs, cer=False)
    for k in (len(VOCABULARY), len(VOCABULARY) + 5):
        rejecting = run(model, inputs, cer=True, top_k=k)
        for a, b in zip(full, rejecting):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def reference_union_of_topk(logits, k):
    """Classes that are among some pixel's k best: an explicit loop over pixels."""
    classes, height, width = logits.shape
    kept = set()
    for i in range(height):
        for j in range(width):
            order = sorted(range(classes), key=lambda c: -float(logits[c, i, j]))
            kept.update(order[:k])
    return sorted(kept)


def test_cer_keeps_exactly_the_union_of_per_pixel_topk_and_rejected_classes_score_zero(model):
    from escnet.modeling.sed import REJECTED_SCORE

    vocabulary = [f"thing number {i}" for i in range(12)]
    x = image_input(4, vocabulary=vocabulary)
    image = (x["image"].float() - model.encoder.pixel_mean) / model.encoder.pixel_std
    image = torch.nn.functional.interpolate(image[None], size=model.input_size, mode="bilinear", align_corners=False)
    decoder = model.decoder
    with torch.no_grad():
        cost, stages = model.cost_map(image, model.encoder.encode_text(vocabulary))
        scores, kept = decoder.forward_rejecting(cost, stages, top_k=1)
        # Reference: layer by layer, the kept set from the previous layer's survivors.
        skips = decoder.project_skips(stages)
        survivors = list(range(len(vocabulary)))
        corr = cost[0]
        features = decoder.cost_embed(corr)
        for i, layer in enumerate(decoder.layers):
            head_logits = decoder.rejection_heads[i](features)[:, 0]
            chosen = reference_union_of_topk(head_logits, 1)
            survivors = [survivors[c] for c in chosen]
            assert kept[i].tolist() == survivors
            features, corr = features[chosen], corr[chosen]
            corr = decoder.cost_upsamplers[i](corr)
            features = layer(features, 1, skips[i], corr, decoder.class_chunk_size)
        expected = decoder.output_head(features)[:, 0].sigmoid()
    # The first rejection sees a 2x2 grid with k = 1: at most 4 of 12 classes survive.
    assert len(kept[0]) <= 4 < len(vocabulary)
    rejected = sorted(set(range(len(vocabulary))) - set(survivors))
    assert rejected and REJECTED_SCORE == 0.0
    assert torch.all(scores[rejected] == REJECTED_SCORE)
    torch.testing.assert_close(scores[survivors], expected, atol=1e-6, rtol=0)
    assert float(scores[survivors].min()) > 0
    # Through the model's forward: rejected classes are exactly 0 at the output size, too.
    (output,) = run(model, [x], cer=True, top_k=1)
    assert torch.all(output[rejected] == 0) and float(output[survivors].min()) > 0


@pytest.mark.parametrize("cer", [False, True])
def test_permuting_the_vocabulary_permutes_the_output(model, cer):
    permutation = [3, 0, 5, 1, 4, 2]
    x = image_input(5)
    (scores,) = run(model, [x], cer=cer, top_k=2)
    permuted = dict(x, vocabulary=tuple(VOCABULARY[i] for i in permutation))
    (permuted_scores,) = run(model, [permuted], cer=cer, top_k=2)
    torch.testing.assert_close(permuted_scores, scores[permutation], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes", [1, 3, 200])
def test_vocabularies_of_1_3_and_200_classes(model, num_classes):
    vocabulary = [f"category {i}" for i in range(num_classes)]
    x = image_input(6, vocabulary=vocabulary)
    for cer in (False, True):
        (scores,) = run(model, [x], cer=cer, top_k=2)
        assert scores.shape == (num_classes, x["height"], x["width"])
        assert torch.isfinite(scores).all() and 0 <= float(scores.min()) and float(scores.max()) <= 1


def test_default_vocabulary_and_bad_batches(model):
    from escnet.utils.errors import EscnetError

    x = image_input()
    del x["vocabulary"]
    (scores,) = run(model, [x])
    assert scores.shape[0] == len(VOCABULARY)  # the synthetic val set's classes
    with pytest.raises(EscnetError, match="share one vocabulary"):
        run(model, [image_input(), image_input(vocabulary=("cat", "dog"))])


# ------------------------------------------------------------------ config, parameters
def test_config_keys_reach_the_model():
    from detectron2.modeling import build_model

    sed = build_model(sed_cfg(opts=["MODEL.SED.CER.ENABLED", "True", "MODEL.SED.CER.TOP_K", "3"]))
    assert sed.cer_enabled and sed.cer_top_k == 3
    assert len(sed.encoder.templates) == 3 and sed.decoder.cost_embed.in_channels == 3
    assert [layer.fuse[0].out_channels for layer in sed.decoder.layers] == [32, 16, 16]


def test_bad_config_values_are_one_line_errors():
    from detectron2.modeling import build_model

    from escnet.utils.errors import EscnetError

    for opts, pattern in [
        (["MODEL.SED.CER.TOP_K", "0"], "TOP_K"),
        (["TEST.SLIDING_WINDOW", "True"], "SLIDING_WINDOW"),
        (["MODEL.SED.CLIP_FINETUNE", "attention"], "CLIP_FINETUNE"),
        (["MODEL.SED.CLIP_MODEL", "configs/clip/tiny-vit.json"], "ConvNeXt"),
        (["MODEL.SED.DECODER_DIMS", "[32, 16]"], "decoder"),
    ]:
        with pytest.raises(EscnetError, match=pattern) as info:
            build_model(sed_cfg(opts=opts))
        assert "\n" not in str(info.value)


def test_encoder_trains_at_the_clip_multiplier_and_text_is_frozen(model):
    from escnet.engine.optimizer import build_optimizer

    cfg = sed_cfg()
    optimizer = build_optimizer(cfg, model)
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if name.startswith("encoder.clip.visual."):
            assert param.requires_grad and lrs[id(param)] == pytest.approx(cfg.SOLVER.BASE_LR * cfg.SOLVER.CLIP_MULTIPLIER)
        elif name.startswith("encoder."):
            assert not param.requires_grad, name  # text tower, logit scale
        else:
            assert lrs[id(param)] == pytest.approx(cfg.SOLVER.BASE_LR), name


def test_training_losses_and_gradients(model):
    model.train()
    try:
        x = image_input(7, size=(64, 64))
        target = torch.randint(0, len(VOCABULARY), (64, 64))
        target[:4] = 255
        losses = model([{"image": x["image"], "sem_seg": target}])
        assert set(losses) == {"loss_sem_seg", "loss_rejection_0", "loss_rejection_1", "loss_rejection_2"}
        sum(losses.values()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing
        # Stop-gradient on the skips: the encoder learns through the cost map alone, and the
        # rejection heads' losses do not reach the decoder.
        model.zero_grad()
        model([{"image": x["image"], "sem_seg": target}])["loss_rejection_2"].backward()
        assert model.decoder.rejection_heads[2].weight.grad is not None
        assert model.decoder.layers[0].fuse[0].weight.grad is None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


# ------------------------------------------------------------------ official checkpoints
def official_decoder_names(num_layers=3):
    """Every tensor name of the official Aggregator (TEXT_GUIDANCE_DIM 0), from its source."""
    names = ["conv1.weight", "conv1.bias", "head.weight", "head.bias"]
    for i in range(num_layers):
        names += [f"decoder_guidance_projection.{i}.0.{p}" for p in ("weight", "bias")]
        names += [f"decoder_corr_guidance_projection.{i}.0.{p}" for p in ("weight", "bias")]
        names += [f"head{i}.weight", f"head{i}.bias"]
        d = f"decoder{i + 1}."
        names += [d + f"up.{p}" for p in ("weight", "bias")]
        names += [d + f"conv.double_conv.{p}" for p in ("0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias")]
        names += [d + f"cnext.{p}" for p in ("dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight",
                                             "pwconv1.bias", "pwconv2.weight", "pwconv2.bias", "gamma")]
        names += [d + f"attention.attention.{m}.{p}" for m in "qkv" for p in ("weight", "bias")]
        names += [d + f"attention.MLP.{m}.{p}" for m in (0, 2) for p in ("weight", "bias")]
        names += [d + f"attention.norm{m}.{p}" for m in (1, 2) for p in ("weight", "bias")]
    return {"sem_seg_head.predictor.transformer." + n for n in names}


def official_state_dict(sed):
    """A random state dict with the official names (as a released model_final.pth holds them)."""
    import open_clip

    from escnet.modeling.sed import to_official_names

    official = to_official_names(sed.state_dict())
    clip_names = {"sem_seg_head.predictor.clip_model." + k for k in sed.encoder.clip.state_dict()}
    assert set(official) == official_decoder_names(sed.decoder.num_layers) | clip_names
    assert isinstance(sed.encoder.clip, open_clip.CLIP)
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=generator).to(v.dtype) for k, v in official.items()}


def official_shapes_of_the_b_config(official, num_templates=80):
    t = "sem_seg_head.predictor.transformer."
    assert official[t + "conv1.weight"].shape == (128, num_templates, 7, 7)
    assert official[t + "decoder_corr_guidance_projection.0.0.weight"].shape == (num_templates, 32, 2, 2)
    assert official[t + "decoder_guidance_projection.0.0.weight"].shape == (32, 512, 3, 3)  # res4 of ConvNeXt-B
    assert official[t + "decoder1.up.weight"].shape == (128, 96, 2, 2)
    assert official[t + "decoder1.conv.double_conv.0.weight"].shape == (64, 160, 3, 3)
    assert official[t + "decoder3.cnext.dwconv.weight"].shape == (32, 1, 9, 9)
    assert official[t + "head.weight"].shape == (1, 16, 3, 3)
    c = "sem_seg_head.predictor.clip_model."
    assert official[c + "visual.trunk.stages.3.blocks.0.mlp.fc2.weight"].shape == (1024, 4096)
    assert official[c + "visual.head.proj.weight"].shape == (640, 1024)


def test_official_checkpoint_loads_with_every_tensor_in_place(model, tmp_path):
    from escnet.engine import AtomicCheckpointer
    from escnet.modeling.sed import to_escnet_names

    official = official_state_dict(model)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": official, "iteration": 79999}, path)
    from detectron2.modeling import build_model

    fresh = build_model(sed_cfg())
    AtomicCheckpointer(fresh).load(path)
    ours = fresh.state_dict()
    expected = to_escnet_names(official)
    assert set(expected) == set(ours)
    # Spot checks written out by hand, then every tensor.
    t = "sem_seg_head.predictor.transformer."
    assert torch.equal(ours["decoder.cost_embed.weight"], official[t + "conv1.weight"])
    assert torch.equal(ours["decoder.layers.1.class_attention.q.bias"], official[t + "decoder2.attention.attention.q.bias"])
    assert torch.equal(ours["decoder.layers.2.fuse.4.weight"], official[t + "decoder3.conv.double_conv.4.weight"])
    assert torch.equal(ours["decoder.rejection_heads.0.weight"], official[t + "head0.weight"])
    assert torch.equal(ours["decoder.output_head.bias"], official[t + "head.bias"])
    assert torch.equal(ours["encoder.clip.visual.head.proj.weight"],
                       official["sem_seg_head.predictor.clip_model.visual.head.proj.weight"])
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    fresh.eval()
    (scores,) = run(fresh, [image_input()])
    assert torch.isfinite(scores).all()
    # A plain load_state_dict converts as well (strict: every tensor accounted for).
    again = build_model(sed_cfg())
    again.load_state_dict(official, strict=True)
    assert torch.equal(again.state_dict()["decoder.layers.0.spatial.gamma"], official[t + "decoder1.cnext.gamma"])


def test_missing_or_misshapen_official_tensor_is_a_one_line_error(model, tmp_path):
    from detectron2.modeling import build_model

    from escnet.engine import AtomicCheckpointer
    from escnet.utils.errors import EscnetError

    official = official_state_dict(model)
    t = "sem_seg_head.predictor.transformer."
    cases = {
        "missing": ({k: v for k, v in official.items() if k != t + "decoder2.up.weight"}, "missing.*decoder.layers.1.upsample.weight"),
        "misshapen": ({**official, t + "conv1.weight": torch.zeros(32, 80, 7, 7)}, "cost_embed.weight.*shape"),
        "unknown": ({**official, t + "text_guidance_projection.0.0.weight": torch.zeros(32, 32)}, "text_guidance_projection"),
    }
    for name, (state, pattern) in cases.items():
        path = str(tmp_path / f"{name}.pth")
        torch.save({"model": state}, path)
        with pytest.raises(EscnetError, match=pattern) as info:
            AtomicCheckpointer(build_model(sed_cfg())).load(path)
        assert "\n" not in str(info.value), name


def test_convnext_b_config_builds_with_official_shapes_and_runs():
    """configs/sed_convnext_b.yaml with random weights: official tensor names and shapes, one
    small forward (input size lowered only here, to keep the test short)."""
    from detectron2.modeling import build_model

    from escnet.modeling.sed import to_official_names

    torch.manual_seed(0)
    sed = build_model(sed_cfg(SED_B, ["MODEL.SED.CLIP_PRETRAINED", "", "MODEL.SED.CLIP_INPUT_SIZE", "128"]))
    official = to_official_names(sed.state_dict())
    official_shapes_of_the_b_config(official)
    assert {k for k in official if k.startswith("sem_seg_head.predictor.transformer.")} == official_decoder_names()
    assert sed.yardstick_input_size == (128, 128)
    sed.eval()
    (scores,) = run(sed, [image_input(vocabulary=("cat", "dog"))], cer=True, top_k=1)
    assert scores.shape == (2, 55, 59) and 0 <= float(scores.min()) and float(scores.max()) <= 1


def test_shipped_configs_name_the_official_encoders():
    b, large = sed_cfg(SED_B), sed_cfg(SED_L)
    assert (b.MODEL.SED.CLIP_MODEL, b.MODEL.SED.CLIP_PRETRAINED) == ("convnext_base_w_320", "laion_aesthetic_s13b_b82k")
    assert (large.MODEL.SED.CLIP_MODEL, large.MODEL.SED.CLIP_PRETRAINED) == ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    for cfg in (b, large):
        assert cfg.MODEL.META_ARCHITECTURE == "SED" and cfg.MODEL.SED.CLIP_INPUT_SIZE == 768
        assert len(cfg.MODEL.SED.CLIP_TEMPLATES) == 80 and cfg.MODEL.SED.CLIP_TEMPLATES[0] == "a bad photo of a {}."
        assert tuple(cfg.INPUT.CROP.SIZE) == (768, 768) and cfg.SOLVER.BASE_LR == 2e-4 and cfg.SOLVER.MAX_ITER == 80000
        assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.CLIP_MULTIPLIER == 0.01
        assert cfg.DATASETS.TRAIN == ("coco_2017_train_stuff_all_sem_seg",)


def test_offline_missing_convnext_weights_name_the_file(tmp_path, monkeypatch):
    from detectron2.modeling import build_model

    from escnet.utils.errors import EscnetError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EscnetError, match="not available offline.*MODEL.SED.CLIP_PRETRAINED") as info:
        build_model(sed_cfg(SED_B, ["MODEL.SED.CLIP_OFFLINE", "True", "MODEL.SED.CLIP_CACHE_DIR", str(tmp_path)]))
    assert "convnext_base_w_320" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ tools/benchmark_sed.py
def test_benchmark_sed_smoke_and_combined_table(tmp_path):
    """tools/benchmark_sed.py on the tiny config (one timed run per case: a smoke run, not a speed
    claim), then the combined table from its report beside a tools/benchmark.py report."""
    report_path = tmp_path / "sed.json"
    proc = run_cli(["tools/benchmark_sed.py", "--config-file", SED_TINY, "--num-classes", "3,12", "--top-k", "1",
                    "--warmup", "0", "--repeats", "1", "--threads", "1", "--output", str(report_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["schema"] == "escnet-benchmark-sed/1" and report["top_k"] == 1
    cases = {(c["num_classes"], c["cer"]): c for c in report["cases"]}
    assert set(cases) == {(3, True), (12, True), (3, False), (12, False)}
    for case in cases.values():
        assert case["ratio_to_yardstick"] == pytest.approx(case["median_s"] / case["yardstick_median_s"])
        assert len(report["yardstick"]["times_s"]) == 1 + 2 * len(cases)  # before and after each case
        assert case["peak_memory_bytes"] > 0 and case["image_size"] == [64, 64]
    # k = 1 on the 2 x 2 grid before the first decoder layer: at most 4 of 12 classes go on.
    kept = cases[(12, True)]["classes_per_layer"]
    assert len(kept) == 3 and 1 <= kept[2] <= kept[1] <= kept[0] <= 4
    row = "| SED | sed_tiny.yaml | 64x64 | 12 | k = 1 | "
    assert row in proc.stdout and "| SED | sed_tiny.yaml | 64x64 | 12 | off | " in proc.stdout

    escnet = {  # the fields of a tools/benchmark.py report (schema escnet-benchmark/1) that the table reads
        "schema": "escnet-benchmark/1", "config_file": "configs/tiny.yaml", "meta_architecture": "ESCNet",
        "opts": ["MODEL.ESCNET.CER.ENABLED", "True", "MODEL.ESCNET.CER.TOP_K", "5"],
        "yardstick": {"median_s": 0.5, "input_size": [64, 64]},
        "cases": [{"view": "single", "image_size": [64, 64], "num_classes": 6, "precision": "fp32", "median_s": 2.0,
                   "ratio_to_yardstick": 4.0, "yardstick_median_s": 0.5, "peak_memory_bytes": 2**30, "memory_kind": "rss"}],
    }
    escnet_path = tmp_path / "escnet.json"
    escnet_path.write_text(json.dumps(escnet))
    proc = run_cli(["tools/benchmark_sed.py", "--from-report", str(report_path), "--combine-with", str(escnet_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines.index("| model | config | input | Nc | CER | median s | x yardstick | yardstick: CLIP image encoder | peak memory |")
    assert lines[header + 2] == "| ESCNet | tiny.yaml | 64x64 | 6 | k = 5 | 2.00 | 4.00 | 0.50 s at 64x64 | 1.00 GiB |"
    assert sum(line.startswith("| SED | sed_tiny.yaml |") for line in lines[header:]) == 4
    # Reports of the wrong tool are a one-line error.
    proc = run_cli(["tools/benchmark_sed.py", "--from-report", str(escnet_path)])
    assert proc.returncode != 0 and "not a report of escnet-benchmark-sed/1" in proc.stderr
