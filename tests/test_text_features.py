"""Class text features: exact short-context encoding, and the on-disk cache (hits, misses, races)."""
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from escnet.modeling import text_encoder
from escnet.modeling.text_encoder import (
    TextFeatureStore,
    build_tokenizer,
    class_prompts,
    encode_class_template_texts,
    encode_class_texts,
    encode_prompt_tokens,
    text_tower_digest,
)

from conftest import tiny_cfg

TEMPLATES = ("a photo of a {}.", "there is a {} in the scene")
# Prompts of very different token lengths, one past the 32-token context (cut by the tokenizer).
VOCABULARY = ("cat", "sofa, couch", "traffic light", "a very long name " * 8, "sky")


def tiny_clip(context_length=32, pool_type=None, seed=0):
    """A randomly initialised open_clip CLIP with a small text tower (causal mask, EOT pooling)."""
    from open_clip.model import CLIP

    text_cfg = {"context_length": context_length, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2}
    if pool_type:
        text_cfg["pool_type"] = pool_type
    torch.manual_seed(seed)
    vision_cfg = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    return CLIP(embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


def reference_class_texts(clip, vocabulary, templates):
    """The definition: full-context ``encode_text`` per prompt, normalised, averaged per class."""
    tokenizer = build_tokenizer(clip)
    prompts, owners = class_prompts(vocabulary, templates)
    features = F.normalize(clip.encode_text(tokenizer(prompts)), dim=-1)
    rows = [F.normalize(features[[i for i, o in enumerate(owners) if o == c]].mean(0), dim=-1)
            for c in range(len(vocabulary))]
    return torch.stack(rows)


# ------------------------------------------------------------------------------ exact short context
@torch.no_grad()
def test_short_context_equals_full_context_encoding():
    clip = tiny_clip()
    tokenizer = build_tokenizer(clip)
    prompts, _ = class_prompts(VOCABULARY, TEMPLATES)
    tokens = tokenizer(prompts)
    short = tokenizer(prompts[:2])
    assert int(short.argmax(-1).max()) + 1 < short.shape[1]  # the short chunk is really cut
    torch.testing.assert_close(encode_prompt_tokens(clip, short), clip.encode_text(short), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encode_prompt_tokens(clip, tokens), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)



@torch.no_grad()
def test_prompts_run_in_length_groups_and_keep_their_order(monkeypatch):
    clip = tiny_clip()
    tokenizer = build_tokenizer(clip)
    shapes = []
    forward = clip.transformer.forward

    def recording(x, attn_mask=None):
        shapes.append((x.shape[0], x.shape[1]))
        return forward(x, attn_mask=attn_mask)

    monkeypatch.setattr(clip.transformer, "forward", recording)
    vocabulary = ("cat", "dog", "traffic light", "sky")
    got = encode_class_texts(clip, tokenizer, vocabulary, ("a {}.",), chunk_size=1)
    # one chunk per prompt (chunk_size 1), each on its own length ("<start> a cat . <end>": 5)
    true_lengths = sorted(int(t.argmax()) + 1 for t in tokenizer([f"a {n}." for n in vocabulary]))
    assert shapes == [(1, n) for n in true_lengths] and true_lengths[0] == 5 and max(true_lengths) < 32
    torch.testing.assert_close(got, reference_class_texts(clip, vocabulary, ("a {}.",)), atol=1e-5, rtol=1e-5)
    shapes.clear()
    grouped = encode_class_texts(clip, tokenizer, vocabulary, ("a {}.",), chunk_size=64)
    assert [n for n, _ in shapes] == [3, 1]  # cat, dog, sky share a length; traffic light is longer
    torch.testing.assert_close(grouped, got, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_class_features_equal_the_full_context_definition():
    clip = tiny_clip()
    tokenizer = build_tokenizer(clip)
    expected = reference_class_texts(clip, VOCABULARY, TEMPLATES)
    got = encode_class_texts(clip, tokenizer, VOCABULARY, TEMPLATES, chunk_size=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    per_template = encode_class_template_texts(clip, tokenizer, VOCABULARY, TEMPLATES, chunk_size=4)
    assert per_template.shape == (len(VOCABULARY), len(TEMPLATES), 24)
    for t, template in enumerate(TEMPLATES):
        reference = reference_class_texts(clip, VOCABULARY, (template,))
        torch.testing.assert_close(per_template[:, t], reference, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_towers_where_cutting_is_not_exact_run_unchanged():
    clip = tiny_clip(pool_type="last")  # pools the last position: the padding matters
    tokens = build_tokenizer(clip)(["a cat.", "a traffic light."])
    assert text_encoder._pool_positions(clip, tokens) is None
    torch.testing.assert_close(encode_prompt_tokens(clip, tokens), clip.encode_text(tokens))


# ------------------------------------------------------------------------------ on-disk cache
class Counting:
    """A ``compute`` callback that counts its calls."""

    def __init__(self, clip, vocabulary=VOCABULARY, templates=TEMPLATES):
        self.calls = 0
        self.clip, self.vocabulary, self.templates = clip, vocabulary, templates

    def __call__(self):
        self.calls += 1
        return torch.randn(len(self.vocabulary), 24)  # the value is the store's business, not how it was made


def lookup(store, clip, vocabulary=VOCABULARY, templates=TEMPLATES, model_name="tiny"):
    counter = Counting(clip, vocabulary, templates)
    with torch.no_grad():
        value = store.get_or_compute(clip, model_name, "class_mean", vocabulary, templates, counter)
    return value, counter.calls


def test_store_hits_and_misses_on_every_key_part(tmp_path):
    store = TextFeatureStore(tmp_path)
    clip = tiny_clip()
    first, calls = lookup(store, clip)
    assert calls == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    again, calls = lookup(TextFeatureStore(tmp_path), clip)  # a new run: read from disk
    assert calls == 0 and torch.equal(again, first)
    assert lookup(store, tiny_clip())[1] == 0  # same weights rebuilt: same digest
    assert lookup(store, clip, vocabulary=VOCABULARY[:-1])[1] == 1  # names
    assert lookup(store, clip, vocabulary=VOCABULARY[::-1])[1] == 1  # their order
    assert lookup(store, clip, templates=TEMPLATES[:1])[1] == 1  # templates
    assert lookup(store, clip, model_name="other")[1] == 1  # model name
    with torch.no_grad():
        clip.visual.conv1.weight.add_(1.0)  # image tower: text features unchanged
    assert lookup(store, clip)[1] == 0
    with torch.no_grad():
        clip.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.5)  # text weights changed in place
    assert lookup(store, clip)[1] == 1
    assert lookup(store, tiny_clip(seed=1))[1] == 1  # other weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lookup(store, tiny_clip())[1] == 1  # bf16 features are stored apart
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.pt")]  # no partial files left


def test_digest_covers_text_weights_and_architecture_only():
    clip = tiny_clip()
    digest = text_tower_digest(clip)
    assert digest == text_tower_digest(tiny_clip()) and len(digest) == 64
    with torch.no_grad():
        clip.logit_scale.add_(1.0)
        clip.visual.proj.add_(1.0)
    assert text_tower_digest(clip) == digest
    with torch.no_grad():
        clip.token_embedding.weight[0, 0] += 1e-3
    assert text_tower_digest(clip) != digest
    assert text_tower_digest(tiny_clip(context_length=16)) != text_tower_digest(tiny_clip())


def test_corrupt_files_are_recomputed(tmp_path, caplog):
    store = TextFeatureStore(tmp_path)
    clip = tiny_clip()
    first, _ = lookup(store, clip)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="escnet.modeling.text_encoder"):
        again, calls = lookup(store, clip)
    assert calls == 1 and again.shape == first.shape and "unreadable" in caplog.text
    assert lookup(store, clip)[1] == 0  # rewritten


def test_unwritable_folder_only_costs_the_computation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    value, calls = lookup(TextFeatureStore(blocker / "cache"), tiny_clip())
    assert calls == 1 and value.shape == (len(VOCABULARY), 24)


RACE_SCRIPT = """
import os, sys, time, torch
from test_text_features import tiny_clip, VOCABULARY, TEMPLATES
from escnet.modeling.text_encoder import TextFeatureStore
folder, counter, go = sys.argv[1:4]
clip = tiny_clip()

def compute():
    with open(counter, "a") as f:
        f.write("x")
    time.sleep(1.0)  # a slow computation: the others arrive while it runs
    return torch.full((len(VOCABULARY), 24), float(os.getpid()))

while not os.path.exists(go):
    time.sleep(0.01)
with torch.no_grad():
    value = TextFeatureStore(folder).get_or_compute(clip, "tiny", "class_mean", VOCABULARY, TEMPLATES, compute)
print(int(value[0, 0]))
"""


def test_concurrent_runs_compute_once_and_agree(tmp_path):
    counter, go, cache = tmp_path / "computed", tmp_path / "go", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    workers = [
        subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(cache), str(counter), str(go)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    go.write_text("")
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    assert counter.read_text() == "x"  # one process computed, the others waited and read its file
    writers = {out.strip() for out, _ in outputs}
    assert len(writers) == 1 and writers <= {str(w.pid) for w in workers}
    assert len(list(cache.glob("*.pt"))) == 1


# ------------------------------------------------------------------------------ in the model
def test_second_model_reads_the_disk_and_training_bypasses_it(tmp_path, monkeypatch):
    from detectron2.modeling import build_model

    cfg = tiny_cfg()
    cfg.MODEL.TEXT_CACHE.DIR = str(tmp_path)
    encoded = []
    encode = text_encoder.encode_prompts
    monkeypatch.setattr(text_encoder, "encode_prompts", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    torch.manual_seed(0)
    first = build_model(cfg).eval().clip_encoder
    features = first.encode_text(VOCABULARY)
    assert len(encoded) == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    torch.manual_seed(0)
    second = build_model(cfg).eval().clip_encoder  # a second run, same weights
    torch.testing.assert_close(second.encode_text(VOCABULARY), features)
    assert len(encoded) == 1
    second.train()  # the text tower's attention trains: fresh features with grad, nothing stored
    trained = second.encode_text(("bird",))
    assert trained.requires_grad and len(encoded) == 2 and len(list(tmp_path.glob("*.pt"))) == 1
    cfg.MODEL.TEXT_CACHE.ENABLED = False
    assert build_model(cfg).clip_encoder.text_store is None
