"""SED's hierarchical encoder: an open_clip ConvNeXt CLIP read densely, and its text tower.

Image side (``encode_image``), for ``B x 3 x S x S`` normalised images:
  * ``dense``: ``B x C x S/32 x S/32`` pixel embeddings in CLIP's joint space: the last stage's
    output passed, pixel by pixel, through CLIP's pooling head (the timm head's LayerNorm, then
    the CLIP projection), exactly what ``encode_image`` does to the pooled feature. Not
    L2-normalised;
  * ``stages``: the four stage outputs ``[res2, res3, res4, res5]`` (strides 4, 8, 16, 32).

Text side (``encode_text``): ``Nc x P x C`` L2-normalised embeddings, one per (class, template);
the synonyms of an entry are averaged per template (``encode_class_template_texts``). Cached per
(vocabulary, templates, device, dtype, autocast) in memory and, with ``MODEL.TEXT_CACHE``, on
disk. The text tower never trains.

Fine-tuning (``finetune``): ``"full"`` trains the whole image tower (the official setting),
``"none"`` freezes it. Every parameter of this module is in the optimizer's ``"clip"`` group.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from detectron2.config import configurable

from ...utils.errors import EscnetError
from ...vocabulary import validate_vocabulary
from ..clip_weights import build_clip_model, offline_mode
from ..text_encoder import (
    CachedTextEncoderMixin,
    TextFeatureCache,
    TextFeatureStore,
    build_tokenizer,
    encode_class_template_texts,
    text_feature_store,
    validate_templates,
)

FINETUNE_MODES = ("full", "none")
STAGE_STRIDES = (4, 8, 16, 32)


class ConvNextCLIPEncoder(CachedTextEncoderMixin):
    """open_clip ConvNeXt CLIP for SED (see the module docstring).

    Attributes: ``embed_dim`` (C), ``stage_dims`` (channels of res2..res5), ``input_size``
    ``(S, S)``, ``grid_size`` ``(S/32, S/32)``, ``pixel_mean`` / ``pixel_std`` (3 x 1 x 1,
    0..255 RGB), ``clip`` (the open_clip model; official name ``clip_model``).
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        pretrained: str,
        input_size: int,
        templates: Sequence[str],
        finetune: str = "full",
        offline: bool = False,
        cache_dir: str = "",
        text_chunk_size: int = 1024,
        text_cache_size: int = 8,
        text_store: Optional[TextFeatureStore] = None,
        load_pretrained: bool = True,
    ):
        """Arguments mirror ``MODEL.SED.CLIP_*``; ``text_store``: the on-disk text-feature cache
        (``MODEL.TEXT_CACHE``; None: memory only); ``load_pretrained`` False when ``MODEL.WEIGHTS``
        (a trained SED checkpoint) replaces every tensor, so nothing is downloaded."""
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise EscnetError(f"MODEL.SED.CLIP_FINETUNE={finetune!r}; expected one of {', '.join(FINETUNE_MODES)}")
        if text_chunk_size < 1:
            raise EscnetError(f"MODEL.SED.CLIP_TEXT_CHUNK_SIZE must be positive, got {text_chunk_size}")
        if input_size % STAGE_STRIDES[-1]:
            raise EscnetError(f"MODEL.SED.CLIP_INPUT_SIZE={input_size} is not a multiple of {STAGE_STRIDES[-1]}")
        try:
            self.clip, info = build_clip_model(
                model_name, pretrained, offline=offline_mode(offline), cache_dir=cache_dir,
                load_weights=load_pretrained, tower="convnext",
            )
        except EscnetError as err:  # the shared builder names ESC-Net's keys
            raise EscnetError(str(err).replace("MODEL.ESCNET.", "MODEL.SED.")) from None
        trunk = self.clip.visual.trunk
        self.stage_dims = [int(stage.blocks[-1].mlp.fc2.out_features) for stage in trunk.stages]
        self.embed_dim = int(self.clip.text_projection.shape[-1])
        self.input_size = (int(input_size), int(input_size))
        self.grid_size = tuple(s // STAGE_STRIDES[-1] for s in self.input_size)
        self.register_buffer("pixel_mean", torch.tensor(info["mean"]).view(3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(info["std"]).view(3, 1, 1) * 255.0, persistent=False)

        self.model_name = model_name
        self.text_store = text_store
        self.tokenizer = build_tokenizer(self.clip)
        self.text_chunk_size = int(text_chunk_size)
        self._templates = validate_templates(templates, "MODEL.SED.CLIP_TEMPLATES")
        self._text_cache = TextFeatureCache(text_cache_size)
        for name, param in self.clip.named_parameters():
            param.requires_grad = finetune == "full" and name.startswith("visual.")

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SED
        return {
            "model_name": s.CLIP_MODEL,
            "pretrained": s.CLIP_PRETRAINED,
            "input_size": s.CLIP_INPUT_SIZE,
            "templates": list(s.CLIP_TEMPLATES),
            "finetune": s.CLIP_FINETUNE,
            "offline": s.CLIP_OFFLINE,
            "cache_dir": s.CLIP_CACHE_DIR,
            "text_chunk_size": s.CLIP_TEXT_CHUNK_SIZE,
            "text_cache_size": s.CLIP_TEXT_CACHE_SIZE,
            "text_store": text_feature_store(cfg),
            "load_pretrained": not cfg.MODEL.WEIGHTS,
        }

    # ------------------------------------------------------------------ image
    def encode_image(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``B x 3 x S x S`` normalised images -> (dense ``B x C x S/32 x S/32``, [res2, res3, res4, res5])."""
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"ConvNextCLIPEncoder expects B x 3 x {self.input_size[0]} x {self.input_size[1]} images, "
                f"got {tuple(images.shape)}"
            )
        visual = self.clip.visual
        trunk = visual.trunk
        x = trunk.stem(images)
        stages = []
        for stage in trunk.stages:
            x = stage(x)
            stages.append(x)
        x = trunk.norm_pre(x)
        batch, channels, height, width = x.shape
        # Every pixel through the pooling head as a 1 x 1 "image" (its average pool is then the
        # identity), then CLIP's projection: the pixel's embedding in the joint space.
        pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels, 1, 1)
        embedded = visual.head(trunk.head(pixels))
        dense = embedded.view(batch, height, width, -1).permute(0, 3, 1, 2)
        return dense, stages

    # ------------------------------------------------------------------ text
    def encode_text(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """``Nc x P x C`` L2-normalised (class, template) embeddings for ``vocabulary`` (cached)."""
        vocabulary = validate_vocabulary(vocabulary)
        weight = self.clip.token_embedding.weight
        key = (vocabulary, self._templates, weight.device, weight.dtype, torch.is_autocast_enabled(weight.device.type))
        return self._text_cache.get_or_compute(
            key,
            lambda: encode_class_template_texts(
                self.clip, self.tokenizer, vocabulary, self._templates, self.text_chunk_size,
                store=self.text_store, model_name=self.model_name,
            ),
        )
