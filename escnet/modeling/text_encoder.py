"""Class text embeddings from an open_clip text tower, shared by every model.

``encode_class_texts`` turns a vocabulary into ``Nc x C`` L2-normalised class embeddings:
each prompt (template x synonym) is encoded by open_clip's ``encode_text`` and normalised,
the prompts of a class are averaged and the mean is normalised again. ``TextFeatureCache``
keeps the results of recent (vocabulary, templates, ...) keys, least recently used dropped.
"""
from collections import OrderedDict
from typing import Callable, Hashable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils.errors import EscnetError
from ..vocabulary import synonyms


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


def encode_class_texts(
    clip_model, tokenizer, vocabulary: Sequence[str], templates: Sequence[str], chunk_size: int = 1024
) -> torch.Tensor:
    """``Nc x C`` L2-normalised class embeddings (prompt features averaged per class).

    Prompts are encoded ``chunk_size`` at a time on the text tower's device.
    """
    prompts, owners = class_prompts(vocabulary, templates)
    device = clip_model.token_embedding.weight.device
    features = []
    for start in range(0, len(prompts), chunk_size):
        tokens = tokenizer(prompts[start:start + chunk_size]).to(device)
        features.append(F.normalize(clip_model.encode_text(tokens), dim=-1))
    features = torch.cat(features, dim=0)  # P x C
    owners = torch.tensor(owners, device=device)
    summed = features.new_zeros(len(vocabulary), features.shape[-1]).index_add(0, owners, features)
    counts = torch.bincount(owners, minlength=len(vocabulary)).to(features.dtype).unsqueeze(1)
    return F.normalize(summed / counts, dim=-1)


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
