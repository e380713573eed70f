"""CLIP image and text encoders of ESC-Net (open_clip ViT), with dense image features.

Image side: ``encode_image_dense`` runs CLIP's vision transformer at ``input_size`` (the
positional embedding is resized once at build time) and returns
  * dense features ``B x C x h x w`` in CLIP's joint space: CAT-Seg style, ``ln_post`` and
    ``proj`` are applied to every token of the last block's output (the class token of
    that output is exactly open_clip's ``encode_image``). They are NOT L2-normalised
    (normalise along dim 1 for cosine similarities with ``encode_text``'s output);
  * intermediate features ``B x D x h x w`` (raw residual stream, no norm) after the blocks
    listed in ``intermediate_layers`` (0-based block indices), for the decoder's skips.

Text side: ``encode_text(vocabulary)`` returns ``Nc x C`` L2-normalised class embeddings:
each prompt (template x synonym) is encoded by the text tower (``text_encoder.encode_prompts``)
and normalised, the prompts of a class are averaged and the mean is normalised again. Results are
cached in memory and, with ``MODEL.TEXT_CACHE.ENABLED``, on disk (``TextFeatureStore``).

Fine-tuning (``finetune``): ``"attention"`` (ESC-Net / CAT-Seg: only the attention layers of
both towers train), ``"none"`` or ``"full"``. ``logit_scale`` is never trained (unused here).
Every parameter of this module belongs to the optimizer's ``"clip"`` group.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable

from ...utils.errors import EscnetError
from ...vocabulary import validate_vocabulary
from ..clip_weights import build_clip_model, offline_mode, resize_grid_embedding
from ..text_encoder import (
    CachedTextEncoderMixin,
    TextFeatureCache,
    TextFeatureStore,
    build_tokenizer,
    encode_class_texts,
    text_feature_store,
    validate_templates,
)

FINETUNE_MODES = ("attention", "none", "full")


def default_intermediate_layers(depth):
    """CAT-Seg's skip layers: the blocks ending the first and second third of the ViT.

    ViT-B/16 (12 blocks): [3, 7]; ViT-L/14 (24 blocks): [7, 15]; 3 blocks: [0, 1].
    """
    return [max(depth // 3 - 1, 0), max(2 * depth // 3 - 1, 0)]


class CLIPEncoder(CachedTextEncoderMixin):
    """open_clip CLIP wrapped for dense open-vocabulary segmentation (see the module doc).

    Attributes: ``embed_dim`` (C, joint space), ``width`` (D, vision width), ``grid_size``
    ``(h, w)``, ``input_size`` ``(S, S)``, ``intermediate_layers``, ``pixel_mean`` /
    ``pixel_std`` (3 x 1 x 1 buffers, 0..255 RGB), ``clip`` (the open_clip model).
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        pretrained: str,
        input_size: int,
        templates: Sequence[str],
        intermediate_layers: Sequence[int] = (),
        finetune: str = "attention",
        offline: bool = False,
        cache_dir: str = "",
        text_chunk_size: int = 1024,
        text_cache_size: int = 8,
        text_store: Optional[TextFeatureStore] = None,
        load_pretrained: bool = True,
    ):
        """
        Args:
            model_name: open_clip model name or path to a JSON model config.
            pretrained: open_clip tag, checkpoint file path, or "" (random init).
            input_size: side S of the square input images (e.g. 384 for ViT-B/16).
            templates: prompt templates with one ``{}`` for the class name.
            intermediate_layers: 0-based vision block indices for skip features; empty:
                ``default_intermediate_layers`` of the model's depth.
            finetune: "attention" | "none" | "full" (which CLIP parameters train).
            offline: never download; a missing weight is an EscnetError.
            cache_dir: weight cache folder (empty: open_clip's / Hugging Face's defaults).
            text_chunk_size: prompts encoded per text-encoder call.
            text_cache_size: vocabularies whose text features are kept (eval mode).
            text_store: on-disk text-feature cache (``MODEL.TEXT_CACHE``); None: memory only.
            load_pretrained: load ``pretrained``'s weights; False when a trained escnet
                checkpoint (``MODEL.WEIGHTS``) will replace them (no download needed).
        """
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise EscnetError(f"MODEL.ESCNET.CLIP_FINETUNE={finetune!r}; expected one of {', '.join(FINETUNE_MODES)}")
        if text_chunk_size < 1:
            raise EscnetError(f"MODEL.ESCNET.CLIP_TEXT_CHUNK_SIZE must be positive, got {text_chunk_size}")
        self.clip, info = build_clip_model(
            model_name, pretrained, offline=offline_mode(offline), cache_dir=cache_dir, load_weights=load_pretrained
        )
        self.quick_gelu = info["quick_gelu"]
        visual = self.clip.visual
        self.embed_dim = int(visual.output_dim)
        self.width = int(visual.conv1.out_channels)
        self.patch_size = tuple(visual.patch_size)
        self.input_size = (int(input_size), int(input_size))
        if any(s % p for s, p in zip(self.input_size, self.patch_size)):
            raise EscnetError(
                f"CLIP input size {input_size} is not a multiple of the patch size {self.patch_size[0]}"
            )
        self.grid_size = tuple(s // p for s, p in zip(self.input_size, self.patch_size))
        self._resize_positional_embedding()

        depth = len(visual.transformer.resblocks)
        layers = list(intermediate_layers) or default_intermediate_layers(depth)
        if any(not 0 <= i < depth for i in layers):
            raise EscnetError(f"CLIP intermediate layers {layers} out of range for a {depth}-block ViT")
        self.intermediate_layers = layers

        self.register_buffer("pixel_mean", torch.tensor(info["mean"]).view(3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(info["std"]).view(3, 1, 1) * 255.0, persistent=False)

        self.tokenizer = build_tokenizer(self.clip)
        self.model_name = model_name
        self.text_store = text_store
        self.text_chunk_size = int(text_chunk_size)
        self._templates = validate_templates(templates)
        # (vocabulary, templates, device, dtype, autocast) -> Nc x C; bounded, least recently used dropped.
        self._text_cache = TextFeatureCache(text_cache_size)
        self._set_trainable(finetune)

    @classmethod
    def from_config(cls, cfg):
        e = cfg.MODEL.ESCNET
        return {
            "model_name": e.CLIP_MODEL,
            "pretrained": e.CLIP_PRETRAINED,
            "input_size": e.CLIP_INPUT_SIZE,
            "templates": list(e.CLIP_TEMPLATES),
            "intermediate_layers": list(e.CLIP_INTERMEDIATE_LAYERS),
            "finetune": e.CLIP_FINETUNE,
            "offline": e.CLIP_OFFLINE,
            "cache_dir": e.CLIP_CACHE_DIR,
            "text_chunk_size": e.CLIP_TEXT_CHUNK_SIZE,
            "text_cache_size": e.CLIP_TEXT_CACHE_SIZE,
            "text_store": text_feature_store(cfg),
            "load_pretrained": not cfg.MODEL.WEIGHTS,
        }

    # ------------------------------------------------------------------ set-up
    def _resize_positional_embedding(self):
        """Resize the vision positional embedding to ``grid_size`` (class token kept)."""
        visual = self.clip.visual
        native_grid = tuple(visual.grid_size)
        if native_grid != self.grid_size:
            with torch.no_grad():
                resized = resize_grid_embedding(visual.positional_embedding.data, native_grid, self.grid_size)
            visual.positional_embedding = nn.Parameter(resized, requires_grad=visual.positional_embedding.requires_grad)
            visual.grid_size = self.grid_size
            visual.image_size = self.input_size

    def _set_trainable(self, finetune):
        for name, param in self.clip.named_parameters():
            if name in ("logit_scale", "logit_bias"):
                param.requires_grad = False
            elif finetune == "full":
                param.requires_grad = True
            elif finetune == "attention":
                param.requires_grad = ".attn." in name and ".resblocks." in name
            else:
                param.requires_grad = False

    # ------------------------------------------------------------------ image
    def encode_image_dense(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Dense CLIP image features.

        Args:
            images: ``B x 3 x S x S`` normalised with ``pixel_mean`` / ``pixel_std``,
                ``S`` = ``input_size``.
        Returns:
            dense: ``B x C x h x w`` joint-space features (ln_post + proj on every token of
                the last block), not L2-normalised.
            intermediates: one ``B x D x h x w`` tensor per ``intermediate_layers`` entry.
        """
        tokens, intermediates = self.encode_image_tokens(images)
        return _tokens_to_grid(tokens[:, 1:], self.grid_size), intermediates

    def encode_image_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``B x (1 + h*w) x C`` joint-space tokens (class token first) and the intermediates.

        The class token equals open_clip's ``encode_image(images)`` (unnormalised).
        """
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"CLIPEncoder expects B x 3 x {self.input_size[0]} x {self.input_size[1]} images, "
                f"got {tuple(images.shape)}"
            )
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # B x D x h x w
        x = x.flatten(2).transpose(1, 2)  # B x hw x D
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)  # B x (1 + hw) x D (patch dropout is a training-time regulariser: off)

        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        taken = {}
        for index, block in enumerate(transformer.resblocks):
            x = block(x)
            if index in self.intermediate_layers:
                tokens = x if batch_first else x.transpose(0, 1)
                taken[index] = _tokens_to_grid(tokens[:, 1:], self.grid_size)
        if not batch_first:
            x = x.transpose(0, 1)
        x = visual.ln_post(x)
        if visual.proj is not None:
            x = x @ visual.proj
        return x, [taken[index] for index in self.intermediate_layers]

    # ------------------------------------------------------------------ text
    def encode_text(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """``Nc x C`` L2-normalised class embeddings for ``vocabulary``.

        An entry's synonyms (``"sofa, couch"``) and the templates are averaged over
        normalised prompt features. Computed fresh (with grad) in training mode when a text
        parameter trains; otherwise cached per (vocabulary, templates, device, dtype).
        """
        vocabulary = validate_vocabulary(vocabulary)
        if self.training and self._text_trains():
            return self._compute_text_features(vocabulary)
        weight = self.clip.token_embedding.weight
        key = (vocabulary, self._templates, weight.device, weight.dtype, torch.is_autocast_enabled(weight.device.type))
        return self._text_cache.get_or_compute(key, lambda: self._compute_text_features(vocabulary))

    def _text_trains(self):
        return any(
            p.requires_grad for n, p in self.clip.named_parameters() if not n.startswith("visual.")
        )

    def compute_text_features(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """``Nc x C`` class embeddings of ``vocabulary`` computed afresh (no cache; for timing)."""
        vocabulary = validate_vocabulary(vocabulary)
        return encode_class_texts(self.clip, self.tokenizer, vocabulary, self._templates, self.text_chunk_size)

    def _compute_text_features(self, vocabulary):
        """Memory-cache miss: the on-disk store (``MODEL.TEXT_CACHE``) or the text tower."""
        return encode_class_texts(
            self.clip, self.tokenizer, vocabulary, self._templates, self.text_chunk_size,
            store=self.text_store, model_name=self.model_name,
        )


def _tokens_to_grid(tokens, grid_size):
    """``B x hw x K`` tokens -> ``B x K x h x w``."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, grid_size[0], grid_size[1])
