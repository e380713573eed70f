"""Class text embeddings from an open_clip text tower, shared by every model.

``encode_class_texts`` turns a vocabulary into ``Nc x C`` L2-normalised class embeddings:
each prompt (template x synonym) is encoded by the text tower and normalised, the prompts of a
class are averaged and the mean is normalised again (``encode_class_template_texts``:
``Nc x P x C``, one embedding per template).

Speed: prompts are tokenised once, sorted by length and encoded ``chunk_size`` at a time on the
shortest context holding every prompt of the chunk (``encode_prompt_tokens``). CLIP's text
transformer is causal and pools at the end-of-text token, so the padding after it never reaches
the pooled feature: the result equals ``encode_text`` on the full 77-token context.

Caching: ``TextFeatureCache`` keeps recent results in memory (least recently used dropped);
``TextFeatureStore`` keeps them on disk, keyed by the model name, a digest of the text tower's
weights, the templates, the class names and the compute dtype, so that a second evaluation or
demo run with the same vocabulary pays nothing (``MODEL.TEXT_CACHE``, ``text_feature_store(cfg)``).
Pass ``store=`` and ``model_name=`` to the encoding functions to use it.
"""
import hashlib
import json
import logging
import os
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils.errors import EscnetError
from ..utils.io import atomic_path
from ..utils.locking import file_lock
from ..vocabulary import synonyms

logger = logging.getLogger(__name__)


def validate_templates(templates, key: str = "MODEL.ESCNET.CLIP_TEMPLATES") -> Tuple[str, ...]:
    """Templates as a tuple; each holds exactly one ``{}`` (the class name). ``key`` names the config key."""
    if isinstance(templates, str):
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise EscnetError(f"{key} is empty: give at least one prompt template")
    for template in templates:
        if template.count("{}") != 1:
            raise EscnetError(f"CLIP prompt template {template!r} must contain exactly one '{{}}'")
    return templates


def class_prompts(vocabulary: Sequence[str], templates: Sequence[str]) -> Tuple[List[str], List[int]]:
    """Every (synonym x template) prompt of the vocabulary and the class index owning each."""
    prompts, owners = [], []
    for class_index, entry in enumerate(vocabulary):
        for name in synonyms(entry):
            for template in templates:
                prompts.append(template.format(name))
                owners.append(class_index)
    return prompts, owners


def build_tokenizer(clip_model):
    """open_clip's BPE tokenizer with the text tower's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(clip_model.positional_embedding.shape[0]))


def encode_prompt_tokens(clip_model, tokens: torch.Tensor) -> torch.Tensor:
    """``P x C`` unnormalised prompt features, equal to ``clip_model.encode_text(tokens)``.

    For open_clip text towers with a causal mask and end-of-text (or first-token) pooling, the
    tokens are cut after the last pooled position: the transformer then runs on ``L`` instead of
    the full context (77), with the same result. Other towers run ``encode_text`` unchanged.
    """
    pool_positions = _pool_positions(clip_model, tokens)
    if pool_positions is None:
        return clip_model.encode_text(tokens)
    length = int(pool_positions.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast_dtype)  # P x L x D
    x = x + clip_model.positional_embedding[:length].to(cast_dtype)
    x = clip_model.transformer(x, attn_mask=clip_model.attn_mask[:length, :length])
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pool_positions]  # P x D
    projection = clip_model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def _pool_positions(clip_model, tokens):
    """``P`` pooled token positions when cutting the context is exact for ``clip_model``, else None."""
    if torch.jit.is_tracing():  # data-dependent cuts cannot be traced (fvcore FLOP counts): full context
        return None
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    if not all(hasattr(clip_model, name) for name in needed) or clip_model.attn_mask is None:
        return None
    mask = clip_model.attn_mask
    causal = torch.full_like(mask, float("-inf")).triu(1)
    if mask.shape != (tokens.shape[1], tokens.shape[1]) or not torch.equal(mask, causal):
        return None
    pool_type = getattr(clip_model, "text_pool_type", "argmax")
    if pool_type == "argmax":  # the end-of-text token has the highest id
        return tokens.argmax(dim=-1)
    if pool_type == "eos" and getattr(clip_model, "text_eos_id", None) is not None:
        return (tokens == clip_model.text_eos_id).int().argmax(dim=-1)
    if pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    return None


def encode_prompts(clip_model, tokenizer, prompts: Sequence[str], chunk_size: int = 1024) -> torch.Tensor:
    """``P x C`` L2-normalised features of ``prompts``, in order.

    Prompts are sorted by token length and encoded ``chunk_size`` at a time, each chunk on its
    own shortest exact context (``encode_prompt_tokens``), on the text tower's device.
    """
    device = clip_model.token_embedding.weight.device
    tokens = tokenizer(list(prompts))  # P x context
    order, groups = _length_groups(clip_model, tokens, chunk_size)
    chunks = [
        F.normalize(encode_prompt_tokens(clip_model, tokens[index].to(device)), dim=-1)
        for index in order.split(groups)
    ]
    return torch.cat(chunks)[torch.argsort(order).to(device)]  # back to the prompts' order


def _length_groups(clip_model, tokens, chunk_size):
    """Prompt order (sorted by token length, stable) and the sizes of its consecutive chunks.

    A chunk holds prompts of one length (no padding beyond the longest) and at most ``chunk_size``.
    """
    positions = _pool_positions(clip_model, tokens)
    if positions is None:
        order, counts = torch.arange(tokens.shape[0]), [tokens.shape[0]]
    else:
        order = torch.argsort(positions, stable=True)
        counts = torch.unique_consecutive(positions[order], return_counts=True)[1].tolist()  # prompts per length
    groups = []
    for count in counts:
        groups += [chunk_size] * (count // chunk_size) + ([count % chunk_size] if count % chunk_size else [])
    return order, groups


def _average_per_owner(features, owners, slots):
    """``slots x C``: normalised mean of the features of each owner index."""
    owners = torch.tensor(owners, device=features.device)
    summed = features.new_zeros(slots, features.shape[-1]).index_add(0, owners, features)
    counts = torch.bincount(owners, minlength=slots).to(features.dtype).unsqueeze(1)
    return F.normalize(summed / counts, dim=-1)


def _text_trains_now(clip_model):
    """True while gradients flow into the text tower (features then change every step: not stored)."""
    return torch.is_grad_enabled() and any(t.requires_grad for _, t in _text_tensors(clip_model))


def encode_class_texts(
    clip_model,
    tokenizer,
    vocabulary: Sequence[str],
    templates: Sequence[str],
    chunk_size: int = 1024,
    *,
    store: Optional["TextFeatureStore"] = None,
    model_name: str = "",
) -> torch.Tensor:
    """``Nc x C`` L2-normalised class embeddings (prompt features averaged per class).

    ``store``: on-disk cache to read from / write to (``model_name`` names the CLIP model in its key).
    """

    def compute():
        prompts, owners = class_prompts(vocabulary, templates)
        return _average_per_owner(encode_prompts(clip_model, tokenizer, prompts, chunk_size), owners, len(vocabulary))

    if store is None or _text_trains_now(clip_model):
        return compute()
    return store.get_or_compute(clip_model, model_name, "class_mean", vocabulary, templates, compute)


def encode_class_template_texts(
    clip_model,
    tokenizer,
    vocabulary: Sequence[str],
    templates: Sequence[str],
    chunk_size: int = 1024,
    *,
    store: Optional["TextFeatureStore"] = None,
    model_name: str = "",
) -> torch.Tensor:
    """``Nc x P x C`` class embeddings per template (``P`` templates), L2-normalised.

    For each (class, template) the normalised prompt features of the class's synonyms are
    averaged and normalised again (SED's prompt ensemble keeps the templates apart).
    ``store`` / ``model_name``: as in ``encode_class_texts``.
    """

    def compute():
        prompts, owners = [], []
        for class_index, entry in enumerate(vocabulary):
            for name in synonyms(entry):
                for template_index, template in enumerate(templates):
                    prompts.append(template.format(name))
                    owners.append(class_index * len(templates) + template_index)
        features = encode_prompts(clip_model, tokenizer, prompts, chunk_size)
        slots = len(vocabulary) * len(templates)
        return _average_per_owner(features, owners, slots).view(len(vocabulary), len(templates), -1)

    if store is None or _text_trains_now(clip_model):
        return compute()
    return store.get_or_compute(clip_model, model_name, "class_template", vocabulary, templates, compute)


class TextFeatureCache:
    """Bounded least-recently-used cache of class embeddings, keyed by any hashable key."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise EscnetError(f"text cache size must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def __iter__(self):
        """Keys, least recently used first."""
        return iter(list(self._entries))

    def clear(self):
        self._entries.clear()

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached value of ``key``, or ``compute()`` (run without grad), stored most recent."""
        value = self._entries.pop(key, None)
        if value is None:
            with torch.no_grad():
                value = compute()
        if self.capacity:
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value


# ---------------------------------------------------------------------------------- on disk
TEXT_CACHE_FORMAT = 1  # bump when the stored layout or the encoding changes


def default_text_cache_dir() -> str:
    """``$XDG_CACHE_HOME/escnet/text_features`` (``~/.cache/escnet/text_features`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "escnet", "text_features")


def text_feature_store(cfg) -> Optional["TextFeatureStore"]:
    """The on-disk store of ``cfg.MODEL.TEXT_CACHE`` (None when disabled)."""
    if not cfg.MODEL.TEXT_CACHE.ENABLED:
        return None
    return TextFeatureStore(cfg.MODEL.TEXT_CACHE.DIR or default_text_cache_dir())


def text_tower_digest(clip_model) -> str:
    """SHA-256 of the text tower: its architecture (module structure) and every tensor's values.

    Covers all parameters and buffers outside the image tower (``visual.*``) except the logit
    scale/bias, which do not change text features.
    """
    digest = hashlib.sha256()
    for name, child in clip_model.named_children():
        if name != "visual":
            digest.update(f"{name}:{child!r}\n".encode())
    for name, tensor in _text_tensors(clip_model):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _text_tensors(clip_model):
    tensors = list(clip_model.named_parameters()) + list(clip_model.named_buffers())
    return sorted(
        (name, t) for name, t in tensors
        if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")
    )


class CachedTextEncoderMixin(torch.nn.Module):
    """Owns ``_templates`` and an in-memory ``_text_cache`` (``TextFeatureCache``) for a CLIP encoder.

    The cache is emptied whenever its content could be stale: templates replaced, train/eval
    switched, weights loaded.
    """

    @property
    def templates(self) -> Tuple[str, ...]:
        return self._templates

    @templates.setter
    def templates(self, templates):
        self._templates = validate_templates(templates)
        self._text_cache.clear()

    def clear_text_cache(self):
        """Forget cached class embeddings (weights, templates or mode changed)."""
        self._text_cache.clear()

    def train(self, mode: bool = True):
        self._text_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._text_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)


class TextFeatureStore:
    """Class embeddings on disk: one ``<folder>/<key hash>.pt`` file per key.

    The key holds the model name, ``text_tower_digest`` of the weights, the kind of embedding,
    the templates, the class names and the compute dtype (autocast included): changing any of
    them is a miss. Files are written atomically under an inter-process lock, so concurrent runs
    compute a missing entry once and never read a partial file. An unreadable or mismatching
    file is recomputed; a folder that cannot be written only costs the recomputation (warning).
    """

    def __init__(self, folder: str):
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        # weight-version fingerprint -> digest, so unchanged weights are hashed once
        self._digests = {}

    def weights_digest(self, clip_model) -> str:
        """``text_tower_digest(clip_model)``, recomputed only when a text tensor changed in place or was replaced."""
        fingerprint = (id(clip_model),) + tuple(
            (name, id(t), t.data_ptr(), t._version, t.dtype, str(t.device)) for name, t in _text_tensors(clip_model)
        )
        if fingerprint not in self._digests:
            self._digests.clear()
            self._digests[fingerprint] = text_tower_digest(clip_model)
        return self._digests[fingerprint]

    def key(self, clip_model, model_name, kind, vocabulary, templates) -> dict:
        weight = clip_model.token_embedding.weight
        device_type = weight.device.type
        autocast = torch.is_autocast_enabled(device_type)
        return {
            "format": TEXT_CACHE_FORMAT,
            "model": str(model_name),
            "weights_sha256": self.weights_digest(clip_model),
            "kind": kind,
            "templates": list(templates),
            "vocabulary": list(vocabulary),
            "dtype": str(torch.get_autocast_dtype(device_type) if autocast else weight.dtype),
        }

    def path(self, key: dict) -> str:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
        return os.path.join(self.folder, f"{name}.pt")

    def get_or_compute(self, clip_model, model_name, kind, vocabulary, templates, compute) -> torch.Tensor:
        """The stored embeddings of this key, or ``compute()``'s (then stored), on the tower's device."""
        if torch.jit.is_tracing():  # fvcore FLOP counting: count the computation, touch no files
            return compute()
        device = clip_model.token_embedding.weight.device
        key = self.key(clip_model, model_name, kind, vocabulary, templates)
        path = self.path(key)
        found = self._load(path, key)
        if found is None:
            try:
                with file_lock(path):
                    found = self._load(path, key)  # another process may have written it meanwhile
                    if found is None:
                        found = compute()
                        self._save(path, key, found)
            except OSError as err:
                logger.warning("text feature cache %s not usable (%s): features not stored", self.folder, err)
                found = compute() if found is None else found
        return found.to(device)

    @staticmethod
    def _load(path, key):
        if not os.path.isfile(path):
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") == key and torch.is_tensor(stored.get("features")):
                return stored["features"]
            logger.warning("text feature cache file %s does not match its key: recomputing", path)
        except Exception as err:  # truncated or foreign file: recompute and overwrite
            logger.warning("text feature cache file %s unreadable (%s): recomputing", path, str(err).splitlines()[0])
        return None

    @staticmethod
    def _save(path, key, features):
        with atomic_path(path) as tmp:
            torch.save({"key": key, "features": features.detach().to("cpu")}, tmp)
