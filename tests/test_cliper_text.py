"""CLIPer's text side: template sets read from files (the official ``car_template.txt`` format, one
template per line) with one-line errors for missing, empty or malformed files, and the shared
on-disk text-feature store (a second model instance encodes nothing; templates, background words
and text weights are part of the key)."""
import os

import pytest
import torch

from conftest import REPO

TINY_CONFIG = os.path.join(REPO, "configs", "cliper_tiny.yaml")
VOCABULARY = ("red ball", "blue box", "grass", "sky")


def protocols(opts=(), config=TINY_CONFIG):
    from escnet.engine import load_config
    from escnet.modeling.cliper.protocol import protocols_from_config

    return protocols_from_config(load_config(config, list(opts)))


def build(opts=()):
    from detectron2.modeling import build_model

    from escnet.engine import load_config

    torch.manual_seed(0)  # the same random tiny CLIP every time
    cfg = load_config(TINY_CONFIG, list(opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.eval()
    return model


# ---------------------------------------------------------------------------------- template files
def test_template_file_replaces_the_built_in_set(tmp_path):
    from escnet.modeling.cliper.templates import CAR_TEMPLATES

    path = tmp_path / "car_template.txt"
    path.write_text("a photo of a {}.\n  There is a {} in the scene  \n\nitap of a {}.\n", encoding="utf-8")
    default, per_dataset = protocols(["MODEL.CLIPER.TEMPLATE_FILES.car", str(path)])
    # Stripped lines in file order (as the official main_ovs.py reads semantic_templates), blank line skipped.
    assert default.templates == ("a photo of a {}.", "There is a {} in the scene", "itap of a {}.")
    plain, _ = protocols()
    assert plain.templates == CAR_TEMPLATES


def test_template_file_adds_a_set_named_in_yaml(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("a sketch of a {}\n", encoding="utf-8")
    config = tmp_path / "cliper_files.yaml"
    config.write_text(f"_BASE_: {TINY_CONFIG}\nMODEL:\n  CLIPER:\n    TEMPLATE_FILES:\n      mine: {path}\n"
                      "    DATASET_PROTOCOLS:\n      synthetic_shapes_val:\n        TEMPLATES: mine\n")
    default, per_dataset = protocols(config=str(config))
    assert per_dataset["synthetic_shapes_val"].templates == ("a sketch of a {}",)
    assert default.templates != ("a sketch of a {}",)


@pytest.mark.parametrize("content, message", [
    (None, "template file .*missing.txt not found"),
    ("\n   \n", "template file .*missing.txt is empty"),
    ("a photo of a {}.\na photo of a thing\n", r"line 2 of .*missing.txt .*exactly one '\{\}'"),
])
def test_bad_template_files_are_one_line_errors(tmp_path, content, message):
    from escnet.utils.errors import EscnetError

    path = tmp_path / "missing.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(EscnetError, match=message) as info:
        protocols(["MODEL.CLIPER.TEMPLATE_FILES.openai", str(path)])
    text = str(info.value)
    assert "\n" not in text and "MODEL.CLIPER.TEMPLATE_FILES.openai" in text


# ---------------------------------------------------------------------------------- on-disk cache
class TextTowerCalls:
    """Counts text-tower calls (``encode_prompt_tokens``, every prompt chunk goes through it)."""

    def __init__(self, monkeypatch):
        from escnet.modeling import text_encoder

        self.count = 0
        original = text_encoder.encode_prompt_tokens

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(text_encoder, "encode_prompt_tokens", counted)


def stored(folder):
    """The store's feature files (lock files aside)."""
    return [name for name in os.listdir(folder) if name.endswith(".pt") and not name.startswith(".")]


def test_second_instance_reads_text_features_from_disk(tmp_path, monkeypatch):
    store = ["MODEL.TEXT_CACHE.ENABLED", "True", "MODEL.TEXT_CACHE.DIR", str(tmp_path / "text_cache")]
    background = ["MODEL.CLIPER.DEFAULT_PROTOCOL.BACKGROUND_WORDS", "['sand', 'water']"]
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "vocabulary": VOCABULARY}]
    calls = TextTowerCalls(monkeypatch)

    first = build(store + background)
    with torch.no_grad():
        expected = first(inputs)[0]["sem_seg"]
    assert calls.count > 0 and len(stored(tmp_path / "text_cache")) == 2  # classes, background words

    calls.count = 0
    second = build(store + background)  # a new instance: empty memory cache
    with torch.no_grad():
        out = second(inputs)[0]["sem_seg"]
    assert calls.count == 0  # classes and background words both read from disk
    torch.testing.assert_close(out, expected)

    # Another template set, other background words, other text weights: each misses.
    second.text_features(VOCABULARY, ("a sketch of a {}.",))
    assert calls.count > 0
    calls.count = 0
    second.text_features(("sand", "rock"), second.default_protocol.templates)
    assert calls.count > 0
    fresh = build(store + background)
    with torch.no_grad():
        fresh.clip.token_embedding.weight.mul_(1.5)
    calls.count = 0
    changed = fresh.text_features(VOCABULARY, fresh.default_protocol.templates)
    assert calls.count > 0
    assert (changed - first.text_features(VOCABULARY, first.default_protocol.templates)).abs().max() > 1e-4
    assert len(stored(tmp_path / "text_cache")) == 5


def test_text_cache_disabled_writes_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "text_cache"
    model = build(["MODEL.TEXT_CACHE.ENABLED", "False", "MODEL.TEXT_CACHE.DIR", str(folder)])
    assert model.text_store is None
    model.text_features(VOCABULARY, model.default_protocol.templates)
    assert not folder.exists()
