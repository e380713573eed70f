"""CLIPer meta-architecture: training-free open-vocabulary segmentation (arXiv 2411.13836,
official code ``linsun449/cliper.code``).

Per image (``Nf`` foreground classes of the vocabulary, CLIP grid ``h x w``):

1. the image is resized so its shorter side is ``SHORT_SIDE`` (bicubic, sides rounded to patch
   multiples) and normalised with CLIP's mean/std;
2. early-layer fusion (:mod:`.early_fusion`) gives every layer's patch features and the fused
   attention; :mod:`.class_maps` turns them into ``Nf x h x w`` coarse maps (with the protocol's
   sliding window, :mod:`.sliding_window`, blended with the windows' maps first);
3. with ``FGC``, Stable Diffusion's self-attention (:mod:`.diffusion_attention`) refines them to
   ``Nf x G x G`` (:mod:`.refinement`); without it the coarse maps are used as they are;
4. :mod:`.scores` rescales them to the original image and applies the input's protocol
   (:mod:`.protocol`: thresholds and background of the official per-dataset configs).

Follows the model contract of docs/architecture.md; no weights are trained (``needs_trained_weights``
is False: train_net.py --eval-only, the Segmenter and the demo take no ``MODEL.WEIGHTS``). The
returned ``sem_seg`` is CLIPer's own per-pixel class score (not a softmax), normalised to sum 1
over the vocabulary at each pixel; its argmax is the official label.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...data.build import default_vocabulary
from ...utils.errors import EscnetError
from ...vocabulary import validate_vocabulary
from ..clip_weights import build_clip_model, offline_mode
from ..model_inputs import batch_vocabulary, output_size
from ..text_encoder import (
    TextFeatureCache,
    TextFeatureStore,
    build_tokenizer,
    encode_class_texts,
    text_feature_store,
)
from .class_maps import class_texts, propagate_class_maps, text_probabilities
from .diffusion_attention import DiffusionSelfAttention, null_prompt_embedding
from .early_fusion import EarlyLayerFusion
from .protocol import CliperProtocol, protocols_from_config
from .refinement import refine_class_maps
from .scores import class_scores, foreground_maps, vocabulary_scores
from .sd_weights import load_sd_parts, resolve_sd_folder
from .sliding_window import sliding_window_logits

UINT8_MAX = 255.0


def resized_side(length: int, ratio: float, patch: int) -> int:
    """``length * ratio`` rounded to the nearest multiple of ``patch`` (official ``_resize``)."""
    return max(int(length * ratio / patch + 0.5), 1) * patch


def build_diffusion_attention(cfg) -> DiffusionSelfAttention:
    """Stable Diffusion self-attention from ``MODEL.CLIPER.SD_*`` (loads the weights)."""
    c = cfg.MODEL.CLIPER
    folder = resolve_sd_folder(c.SD_MODEL, offline=offline_mode(c.SD_OFFLINE), cache_dir=c.SD_CACHE_DIR)
    parts = load_sd_parts(folder)
    null_embedding = null_prompt_embedding(parts.text_encoder, parts.tokenizer)
    return DiffusionSelfAttention(
        vae=parts.vae,
        unet=parts.unet,
        scheduler=parts.scheduler,
        null_embedding=null_embedding,
        layers=list(c.SD_ATTENTION_LAYERS),
        input_size=c.SD_INPUT_SIZE,
        num_inference_steps=c.SD_NUM_INFERENCE_STEPS,
        timestep_index=c.SD_TIMESTEP_INDEX,
        noise_seed=c.SD_NOISE_SEED,
    )


@META_ARCH_REGISTRY.register()
class CLIPer(nn.Module):
    """CLIPer for open-vocabulary semantic segmentation (see the module docstring)."""

    # Training-free: the weights come from open_clip / diffusers pretrained tags.
    needs_trained_weights = False

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        clip_mean: Sequence[float],
        clip_std: Sequence[float],
        diffusion: Optional[DiffusionSelfAttention],
        default_protocol: CliperProtocol,
        dataset_protocols: Dict[str, CliperProtocol],
        short_side: int,
        refined_score_weight: float = 0.5,
        sliding_weight: float = 0.5,
        input_format: str = "RGB",
        test_vocabulary=None,
        vocabulary_error: str = "",
        text_chunk_size: int = 1024,
        text_cache_size: int = 8,
        text_store: Optional[TextFeatureStore] = None,
        clip_name: str = "",
    ):
        """
        Args:
            clip_model: open_clip ``CLIP`` (ViT) with its weights.
            clip_mean / clip_std: the weights' 0..1 RGB normalisation.
            diffusion: Stable Diffusion self-attention for the fine-grained compensation, or None.
            default_protocol / dataset_protocols: protocol of inputs without / with a known
                ``"dataset_name"``.
            short_side: the CLIP input's shorter side (before rounding to patch multiples).
            refined_score_weight: weight of the refined map's peak in a class's score.
            sliding_weight: weight of the sliding-window probabilities (protocols with a window).
            test_vocabulary: vocabulary of inputs without one (None: such inputs raise
                ``EscnetError`` with ``vocabulary_error``).
            text_store: on-disk text-feature cache (``MODEL.TEXT_CACHE``); None: memory only.
            clip_name: the CLIP model's name in the on-disk cache's key (``MODEL.CLIPER.CLIP_MODEL``).
        """
        super().__init__()
        if short_side < 1:
            raise EscnetError(f"MODEL.CLIPER.SHORT_SIDE must be positive, got {short_side}")
        if not 0.0 <= refined_score_weight <= 1.0:
            raise EscnetError(f"MODEL.CLIPER.FGC_SCORE_WEIGHT must lie in 0..1, got {refined_score_weight}")
        if not 0.0 <= sliding_weight <= 1.0:
            raise EscnetError(f"MODEL.CLIPER.SLIDING_WEIGHT must lie in 0..1, got {sliding_weight}")
        if input_format not in ("RGB", "BGR"):
            raise EscnetError(f"INPUT.FORMAT={input_format!r}: CLIPer takes RGB or BGR images")
        if text_chunk_size < 1:
            raise EscnetError(f"MODEL.CLIPER.TEXT_CHUNK_SIZE must be positive, got {text_chunk_size}")
        self.clip = clip_model
        for param in self.clip.parameters():
            param.requires_grad = False
        self.fusion = EarlyLayerFusion(clip_model.visual)
        self.diffusion = diffusion
        for protocol in (default_protocol, *dataset_protocols.values()):
            if not -self.fusion.depth <= protocol.select_layer < self.fusion.depth:
                raise EscnetError(
                    f"SELECT_LAYER {protocol.select_layer} is outside the {self.fusion.depth} layers of the CLIP ViT"
                )
            sizes = (protocol.sliding_crop_size, protocol.sliding_stride) if protocol.sliding_crop_size else ()
            if any(size % p for size in sizes for p in self.fusion.patch_size):
                raise EscnetError(
                    f"SLIDING_CROP_SIZE {protocol.sliding_crop_size} and SLIDING_STRIDE {protocol.sliding_stride} "
                    f"must be multiples of the CLIP patch size {self.fusion.patch_size[0]}"
                )
        self.default_protocol = default_protocol
        self.dataset_protocols = dict(dataset_protocols)
        self.short_side = int(short_side)
        self.refined_score_weight = float(refined_score_weight)
        self.sliding_weight = float(sliding_weight)
        self.input_format = input_format
        self.test_vocabulary = tuple(test_vocabulary) if test_vocabulary else None
        self.vocabulary_error = vocabulary_error
        self.register_buffer("pixel_mean", torch.tensor(clip_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(clip_std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.tokenizer = build_tokenizer(clip_model)
        self.text_chunk_size = int(text_chunk_size)
        # (entries, templates, device, dtype, autocast) -> L2-normalised text features; LRU dropped.
        self._text_cache = TextFeatureCache(text_cache_size)
        # Memory misses go to the shared on-disk store (keyed by name, text weights, templates, entries).
        self.text_store = text_store
        self.clip_name = str(clip_name)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CLIPER
        if cfg.TEST.SLIDING_WINDOW:
            raise EscnetError(
                "TEST.SLIDING_WINDOW is not CLIPer's sliding window: set it False and use "
                "MODEL.CLIPER.DEFAULT_PROTOCOL.SLIDING_CROP_SIZE (or DATASET_PROTOCOLS.<dataset>.SLIDING_CROP_SIZE)"
            )
        default_protocol, dataset_protocols = protocols_from_config(cfg)
        clip_model, info = build_clip_model(
            c.CLIP_MODEL, c.CLIP_PRETRAINED, offline=offline_mode(c.CLIP_OFFLINE), cache_dir=c.CLIP_CACHE_DIR
        )
        try:
            test_vocabulary, error = default_vocabulary(cfg, is_train=False), ""
        except EscnetError as err:  # resolved lazily: inputs may carry their own vocabulary
            test_vocabulary, error = None, str(err)
        return {
            "clip_model": clip_model,
            "clip_mean": info["mean"],
            "clip_std": info["std"],
            "diffusion": build_diffusion_attention(cfg) if c.FGC else None,
            "default_protocol": default_protocol,
            "dataset_protocols": dataset_protocols,
            "short_side": c.SHORT_SIDE,
            "refined_score_weight": c.FGC_SCORE_WEIGHT,
            "sliding_weight": c.SLIDING_WEIGHT,
            "input_format": cfg.INPUT.FORMAT,
            "test_vocabulary": test_vocabulary,
            "vocabulary_error": error,
            "text_chunk_size": c.TEXT_CHUNK_SIZE,
            "text_cache_size": c.TEXT_CACHE_SIZE,
            "text_store": text_feature_store(cfg),
            "clip_name": c.CLIP_MODEL,
        }

    # ------------------------------------------------------------------ parameters / benchmark
    def lr_group(self, param_name: str) -> str:
        """Every parameter is a frozen pretrained one (``"clip"``; CLIPer trains nothing)."""
        return "clip"

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def patch_size(self) -> Tuple[int, int]:
        return self.fusion.patch_size

    @property
    def yardstick_input_size(self) -> Tuple[int, int]:
        """A square image of ``SHORT_SIDE`` (patch-rounded): the speed yardstick's input."""
        return tuple(resized_side(1, self.short_side, p) for p in self.patch_size)

    def run_yardstick(self, images: torch.Tensor) -> torch.Tensor:
        """The CLIP image encoder alone on ``B x 3 x H x W`` normalised images (``B x C``)."""
        return self.fusion.encode(images)

    def encode_vocabulary(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """``Nc x C`` text features of the default protocol's templates, every cache bypassed."""
        vocabulary = validate_vocabulary(vocabulary)
        with torch.no_grad():
            return encode_class_texts(self.clip, self.tokenizer, vocabulary, self.default_protocol.templates,
                                      self.text_chunk_size)

    def text_features(self, entries: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``len(entries) x C`` L2-normalised text features (``0 x C`` for no entries).

        Cached in memory and, with ``MODEL.TEXT_CACHE.ENABLED``, on disk: foreground classes and
        background words are two entries of the shared store, each keyed by its names and templates.
        """
        entries, templates = tuple(entries), tuple(templates)
        weight = self.clip.token_embedding.weight
        if not entries:
            return weight.new_zeros(0, int(self.clip.visual.output_dim))
        key = (entries, templates, weight.device, weight.dtype, torch.is_autocast_enabled(weight.device.type))
        return self._text_cache.get_or_compute(
            key, lambda: encode_class_texts(self.clip, self.tokenizer, entries, templates, self.text_chunk_size,
                                            store=self.text_store, model_name=self.clip_name)
        )

    def _load_from_state_dict(self, *args, **kwargs):
        self._text_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        """Model contract of docs/architecture.md (inference only; see the module docstring)."""
        if self.training:
            raise EscnetError("CLIPer is training-free: use train_net.py --eval-only, the demo or escnet.Segmenter")
        vocabulary = batch_vocabulary(batched_inputs, self.test_vocabulary, self.vocabulary_error)
        protocol = self._protocol(batched_inputs)
        foreground, background_index = protocol.foreground_vocabulary(vocabulary)
        with torch.no_grad():
            fg_text = self.text_features(foreground, protocol.templates)
            bg_text = self.text_features(protocol.background_words, protocol.templates)
            return [{"sem_seg": self._segment(x, fg_text, bg_text, background_index, protocol)} for x in batched_inputs]

    def predict_class_maps(self, rgb: torch.Tensor, fg_text: torch.Tensor, bg_text: torch.Tensor,
                           protocol: CliperProtocol):
        """``(coarse Nf x h x w, refined Nf x G x G)`` maps of a ``3 x H x W`` uint8 RGB image.

        Without FGC, ``refined`` is ``coarse``.
        """
        clip_input = self.clip_input(rgb)
        features, attention = self.fusion(clip_input)
        grid = self.fusion.grid_size(clip_input)
        fg_text, bg_text = fg_text.to(features.dtype), bg_text.to(features.dtype)
        probs = text_probabilities(features[:, 0], fg_text, bg_text, protocol.logit_scale)  # L x N x Nf
        if protocol.sliding_crop_size:
            merged = sliding_window_logits(self.fusion, clip_input, class_texts(fg_text, bg_text),
                                           protocol.logit_scale, protocol.sliding_crop_size, protocol.sliding_stride)
            windows = merged.transpose(-1, -2).softmax(dim=-1)[..., : fg_text.shape[0]]  # L x N x Nf
            probs = self.sliding_weight * windows + (1 - self.sliding_weight) * probs
        coarse = propagate_class_maps(
            probs, attention[0], protocol.attention_threshold, protocol.select_layer
        ).reshape(-1, *grid)
        if self.diffusion is None:
            return coarse, coarse
        maps = self.diffusion(rgb)
        return coarse, refine_class_maps(coarse, maps, protocol.attention_threshold)

    def clip_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """``1 x 3 x h x w`` CLIP input of a ``3 x H x W`` uint8 RGB image (PIL bicubic, as the official code)."""
        height, width = rgb.shape[-2:]
        ratio = self.short_side / min(height, width)
        size = (resized_side(width, ratio, self.patch_size[1]), resized_side(height, ratio, self.patch_size[0]))
        picture = Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy()).resize(size, Image.BICUBIC)
        x = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).to(self.device).float() / UINT8_MAX
        return ((x - self.pixel_mean) / self.pixel_std)[None]

    def _segment(self, x, fg_text, bg_text, background_index, protocol):
        rgb = self._rgb(x["image"])
        coarse, refined = self.predict_class_maps(rgb, fg_text, bg_text, protocol)
        scores = class_scores(refined, coarse, self.refined_score_weight if self.diffusion is not None else 1.0)
        maps = foreground_maps(refined, scores, output_size(x), protocol)
        return vocabulary_scores(maps, background_index, protocol)

    def _rgb(self, image):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise EscnetError(f"CLIPer takes 3 x H x W uint8 images, got {tuple(image.shape)} {image.dtype}")
        return image.flip(0) if self.input_format == "BGR" else image

    def _protocol(self, batched_inputs) -> CliperProtocol:
        names = {x.get("dataset_name") for x in batched_inputs}
        if len(names) > 1:
            raise EscnetError("all inputs of a batch must come from one dataset")
        return self.dataset_protocols.get(names.pop(), self.default_protocol)
