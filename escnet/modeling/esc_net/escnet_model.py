"""ESC-Net meta-architecture (CVPR 2025): CLIP correlation -> N ESC blocks -> U-Net decoder.

``B`` images, ``Nc`` classes, CLIP grid ``h x w`` at input size ``S x S``:

1. CLIP dense features ``F_v`` (``B x C x h x w``) and text features ``F_l`` (``Nc x C``);
2. correlation ``C(n, i) = cos(F_v(i), F_l(n))`` (``B x Nc x h x w``), embedded per class by a
   1x1 conv into the class features (``B x Nc x E x h x w``);
3. N ESC blocks (:class:`~escnet.modeling.esc_net.esc_block.ESCBlock`): pseudo prompts from the
   current class maps, a SAM two-way attention block per class, Vision-Language Fusion;
4. U-Net decoder with CLIP intermediate skips -> logits ``B x Nc x 4h x 4w`` -> ``S x S``.

Follows the model contract of docs/architecture.md; design choices are in docs/design.md.
"""
import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...data.build import default_vocabulary
from ...utils.errors import EscnetError
from ...utils.memory import release_free_heap
from ..model_inputs import batch_vocabulary, normalise_image, output_size, resize_image
from .clip_encoder import CLIPEncoder
from .decoder import UpsamplingDecoder
from .esc_block import ESCBlock, chunk_slices, class_chunks
from .prompt_generator import PseudoPromptGenerator
from .sam_blocks import PROMPT_TYPES, SamClassBlock, SamPromptEncoder, load_sam_checkpoint
from .vlf import VisionLanguageFusion

logger = logging.getLogger(__name__)

SAM_INIT_MODES = ("pretrained", "random", "none")
SAM_DECODER_DEPTH = 2  # two-way transformer layers in SAM's mask decoder (all SAM variants)
SAM_LAYER_PREFIX = "mask_decoder.transformer.layers."
# Logit of a class removed by category early rejection: exp underflows to exactly 0 in float32
# (and bfloat16) softmax next to any kept class, and sums over a few sliding views stay finite.
REJECTED_LOGIT = -1e4


@META_ARCH_REGISTRY.register()
class ESCNet(nn.Module):
    """ESC-Net for open-vocabulary semantic segmentation (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        clip_encoder: CLIPEncoder,
        num_blocks: int,
        hidden_dim: int,
        prompt_types: Sequence[str],
        num_regions: int,
        ppg_threshold: float,
        ppg_temperature: float,
        ppg_kmeans_iters: int,
        sam_init: str,
        sam_checkpoint: str,
        sam_layer_map: Sequence[int],
        sam_dim: int,
        sam_num_heads: int,
        sam_mlp_dim: int,
        sam_mask_in_chans: int,
        sam_attention_downsample: int,
        window_size: int,
        swin_num_heads: int,
        class_attention_heads: int,
        decoder_dims: Sequence[int],
        decoder_skip_dims: Sequence[int],
        ignore_value: int,
        input_format: str = "RGB",
        train_vocabulary=None,
        test_vocabulary=None,
        vocabulary_error: str = "",
        sliding_window: bool = False,
        sliding_overlap: float = 0.333,
        sliding_batch: int = 4,
        load_pretrained: bool = True,
        class_chunk_size: int = 0,
        class_feature_budget_mb: float = 0,
        cer_enabled: bool = False,
        cer_top_k: int = 8,
        cer_after_block: int = 1,
    ):
        """Keyword arguments mirror the ``MODEL.ESCNET.*`` keys (see escnet/config.py).

        ``train_vocabulary`` / ``test_vocabulary``: defaults for inputs without a vocabulary
        (None: such inputs raise ``EscnetError`` with ``vocabulary_error``).
        ``load_pretrained``: load the SAM checkpoint (and CLIP weights, via ``clip_encoder``);
        False when ``MODEL.WEIGHTS`` is set, so trained models need no download.
        ``class_chunk_size``: classes per chunk through the per-class stages (0: all at once).
        ``class_feature_budget_mb``: bounds the sliding-window views per forward (0: no bound).
        ``cer_*``: category early rejection at inference (``MODEL.ESCNET.CER.*``).
        """
        super().__init__()
        prompt_types = tuple(t.lower() for t in prompt_types)
        unknown = [t for t in prompt_types if t not in PROMPT_TYPES]
        if unknown or len(set(prompt_types)) != len(prompt_types):
            raise EscnetError(f"MODEL.ESCNET.PROMPT_TYPES={list(prompt_types)}; use distinct entries of {PROMPT_TYPES}")
        if sam_init not in SAM_INIT_MODES:
            raise EscnetError(f"MODEL.ESCNET.SAM_INIT={sam_init!r}; expected one of {', '.join(SAM_INIT_MODES)}")
        if sam_init != "none" and not prompt_types:
            raise EscnetError("MODEL.ESCNET.PROMPT_TYPES is empty: give any of point, box, mask (or SAM_INIT none)")
        if num_blocks < 1:
            raise EscnetError(f"MODEL.ESCNET.NUM_BLOCKS must be >= 1, got {num_blocks}")
        layer_map = list(sam_layer_map) or [k % SAM_DECODER_DEPTH for k in range(num_blocks)]
        if len(layer_map) != num_blocks or any(not 0 <= i < SAM_DECODER_DEPTH for i in layer_map):
            raise EscnetError(
                f"MODEL.ESCNET.SAM_LAYER_MAP={list(sam_layer_map)} must give one SAM decoder layer "
                f"(0..{SAM_DECODER_DEPTH - 1}) per ESC block ({num_blocks})"
            )
        if input_format not in ("RGB", "BGR"):
            raise EscnetError(f"INPUT.FORMAT={input_format!r}: ESC-Net takes RGB or BGR images")
        if class_chunk_size < 0:
            raise EscnetError(f"MODEL.ESCNET.CLASS_CHUNK_SIZE must be >= 0 (0: all classes at once), got {class_chunk_size}")
        if class_feature_budget_mb < 0:
            raise EscnetError(f"MODEL.ESCNET.CLASS_FEATURE_BUDGET_MB must be >= 0 (0: no bound), got {class_feature_budget_mb}")
        if cer_top_k < 1:
            raise EscnetError(f"MODEL.ESCNET.CER.TOP_K must be >= 1, got {cer_top_k}")
        if not 0 <= cer_after_block < num_blocks:
            raise EscnetError(
                f"MODEL.ESCNET.CER.AFTER_BLOCK={cer_after_block}: use 0 (CLIP correlation) .. {num_blocks - 1}"
            )
        if not 0.0 <= sliding_overlap < 1.0:
            raise EscnetError(f"TEST.SLIDING_OVERLAP must be in [0, 1), got {sliding_overlap}")

        self.clip_encoder = clip_encoder
        grid = tuple(clip_encoder.grid_size)
        self.input_size = tuple(clip_encoder.input_size)
        text_dim = clip_encoder.embed_dim
        self.correlation_embed = nn.Conv2d(1, hidden_dim, kernel_size=1)

        use_sam = sam_init != "none"
        self.prompt_encoder = None
        if use_sam:
            self.prompt_encoder = SamPromptEncoder(sam_dim, grid, sam_mask_in_chans)
        prompt_generator = PseudoPromptGenerator(num_regions, ppg_threshold, ppg_temperature, ppg_kmeans_iters)
        blocks = []
        for k in range(num_blocks):
            in_dim = text_dim if k == 0 else hidden_dim
            sam_block = None
            if use_sam:
                sam_block = SamClassBlock(
                    in_dim=in_dim,
                    text_dim=text_dim,
                    out_dim=hidden_dim,
                    sam_dim=sam_dim,
                    num_heads=sam_num_heads,
                    mlp_dim=sam_mlp_dim,
                    attention_downsample_rate=sam_attention_downsample,
                    # SAM's first layer skips the query PE (its queries are the prompts themselves),
                    # as is the case in every ESC block: keep the behaviour of the source layer.
                    skip_first_layer_pe=layer_map[k] == 0,
                )
            fusion = VisionLanguageFusion(
                hidden_dim, text_dim, grid, window_size, swin_num_heads, class_attention_heads,
                predicts_map=use_sam and k < num_blocks - 1,  # maps only feed the next PPG
            )
            blocks.append(ESCBlock(in_dim, hidden_dim, prompt_generator, sam_block, fusion, prompt_types, ppg_temperature))
        self.blocks = nn.ModuleList(blocks)
        self.sam_layer_map = layer_map if use_sam else []
        self.decoder = UpsamplingDecoder(hidden_dim, clip_encoder.width, decoder_dims, decoder_skip_dims)
        if len(clip_encoder.intermediate_layers) < self.decoder.num_stages:
            raise EscnetError(
                f"the decoder has {self.decoder.num_stages} stages but CLIP gives "
                f"{len(clip_encoder.intermediate_layers)} intermediate layers (MODEL.ESCNET.CLIP_INTERMEDIATE_LAYERS)"
            )

        if sam_init == "pretrained" and load_pretrained:
            if sam_checkpoint:
                load_sam_checkpoint(sam_checkpoint, self.sam_checkpoint_targets())
            else:
                logger.warning("MODEL.ESCNET.SAM_CHECKPOINT is empty: SAM blocks start from random weights")
        if self.prompt_encoder is not None:
            self.prompt_encoder.freeze_unused(prompt_types)

        self.ignore_value = int(ignore_value)
        self.input_format = input_format
        self.train_vocabulary = tuple(train_vocabulary) if train_vocabulary else None
        self.test_vocabulary = tuple(test_vocabulary) if test_vocabulary else None
        self.vocabulary_error = vocabulary_error
        self.sliding_window = bool(sliding_window)
        self.sliding_overlap = float(sliding_overlap)
        if sliding_batch < 1:
            raise EscnetError(f"TEST.SLIDING_BATCH must be positive, got {sliding_batch}")
        self.sliding_batch = int(sliding_batch)
        self.class_chunk_size = int(class_chunk_size)
        self.class_feature_budget_bytes = float(class_feature_budget_mb) * 2**20
        self.hidden_dim = int(hidden_dim)
        self.grid_size = grid
        self.cer_enabled = bool(cer_enabled)
        self.cer_top_k = int(cer_top_k)
        self.cer_after_block = int(cer_after_block)

    @classmethod
    def from_config(cls, cfg):
        e = cfg.MODEL.ESCNET
        vocabularies, errors = {}, []
        for is_train in (True, False):
            try:
                vocabularies[is_train] = default_vocabulary(cfg, is_train)
            except EscnetError as err:  # resolved lazily: inputs may carry their own vocabulary
                vocabularies[is_train] = None
                errors.append(str(err))
        return {
            "clip_encoder": CLIPEncoder(cfg),
            "num_blocks": e.NUM_BLOCKS,
            "hidden_dim": e.HIDDEN_DIM,
            "prompt_types": list(e.PROMPT_TYPES),
            "num_regions": e.NUM_REGIONS,
            "ppg_threshold": e.PPG_THRESHOLD,
            "ppg_temperature": e.PPG_TEMPERATURE,
            "ppg_kmeans_iters": e.PPG_KMEANS_ITERS,
            "sam_init": e.SAM_INIT,
            "sam_checkpoint": e.SAM_CHECKPOINT,
            "sam_layer_map": list(e.SAM_LAYER_MAP),
            "sam_dim": e.SAM_DIM,
            "sam_num_heads": e.SAM_NUM_HEADS,
            "sam_mlp_dim": e.SAM_MLP_DIM,
            "sam_mask_in_chans": e.SAM_MASK_IN_CHANS,
            "sam_attention_downsample": e.SAM_ATTENTION_DOWNSAMPLE,
            "window_size": e.WINDOW_SIZE,
            "swin_num_heads": e.SWIN_NUM_HEADS,
            "class_attention_heads": e.CLASS_ATTENTION_HEADS,
            "decoder_dims": list(e.DECODER_DIMS),
            "decoder_skip_dims": list(e.DECODER_SKIP_DIMS),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "input_format": cfg.INPUT.FORMAT,
            "train_vocabulary": vocabularies[True],
            "test_vocabulary": vocabularies[False],
            "vocabulary_error": "; ".join(errors),
            "sliding_window": cfg.TEST.SLIDING_WINDOW,
            "sliding_overlap": cfg.TEST.SLIDING_OVERLAP,
            "sliding_batch": cfg.TEST.SLIDING_BATCH,
            # A trained checkpoint (MODEL.WEIGHTS) replaces every CLIP and SAM tensor.
            "load_pretrained": not cfg.MODEL.WEIGHTS,
            "class_chunk_size": e.CLASS_CHUNK_SIZE,
            "class_feature_budget_mb": e.CLASS_FEATURE_BUDGET_MB,
            "cer_enabled": e.CER.ENABLED,
            "cer_top_k": e.CER.TOP_K,
            "cer_after_block": e.CER.AFTER_BLOCK,
        }

    # ------------------------------------------------------------------ parameters
    def sam_checkpoint_targets(self):
        """``[(SAM checkpoint prefix, module)]`` for :func:`load_sam_checkpoint`."""
        targets = [("prompt_encoder.", self.prompt_encoder)]
        for block, layer in zip(self.blocks, self.sam_layer_map):
            targets.append((f"{SAM_LAYER_PREFIX}{layer}.", block.sam.block))
        return targets

    def lr_group(self, param_name: str) -> str:
        """Optimizer group of a parameter: ``"clip"``, ``"sam"`` (pretrained SAM parts) or ``"default"``."""
        if param_name.startswith("clip_encoder."):
            return "clip"
        if param_name.startswith("prompt_encoder.") or ".sam.block." in param_name:
            return "sam"
        return "default"

    @property
    def device(self):
        return self.correlation_embed.weight.device

    # ------------------------------------------------------------------ speed yardstick (tools/benchmark.py)
    @property
    def yardstick_input_size(self):
        """``(H, W)`` at which ``run_yardstick`` runs: the CLIP input size."""
        return self.input_size

    def run_yardstick(self, images: torch.Tensor) -> torch.Tensor:
        """The CLIP image encoder alone (open_clip ``encode_image``) on ``B x 3 x H x W`` normalised images."""
        return self.clip_encoder.clip.encode_image(images)

    def encode_vocabulary(self, vocabulary) -> torch.Tensor:
        """``Nc x C`` text features of ``vocabulary`` computed afresh (no cache; for timing)."""
        return self.clip_encoder.compute_text_features(vocabulary)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        """Model contract of docs/architecture.md (training: losses; inference: probabilities)."""
        vocabulary = self._vocabulary(batched_inputs)
        text = self.clip_encoder.encode_text(vocabulary)  # Nc x C
        if self.training:
            images = torch.stack([self._resize(self._normalise(x["image"]), self.input_size) for x in batched_inputs])
            logits = self.predict_logits(images, text)
            return {"loss_sem_seg": self._loss(logits, [x["sem_seg"] for x in batched_inputs], len(vocabulary))}
        if self.sliding_window:
            return [{"sem_seg": self._infer_sliding(x, text)} for x in batched_inputs]
        return self._infer_global(batched_inputs, text)

    def predict_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` normalised images, ``Nc x C`` text features -> ``B x Nc x S x S`` logits.

        With category early rejection (``MODEL.ESCNET.CER``, inference only) rejected classes
        get the logit ``REJECTED_LOGIT`` (probability 0).
        """
        chunks = list(self.class_logit_chunks(images, text))
        if len(chunks) == 1 and chunks[0][1].shape[1] == text.shape[0]:
            return chunks[0][1]
        first = chunks[0][1]
        logits = first.new_full((first.shape[0], text.shape[0], *first.shape[2:]), REJECTED_LOGIT)
        for classes, chunk in chunks:
            logits[:, _as_index(classes)] = chunk
        return logits

    def class_logit_chunks(self, images: torch.Tensor, text: torch.Tensor):
        """Yield ``(class indices, B x c x S x S logits)`` chunk by chunk (``CLASS_CHUNK_SIZE``).

        Every class not yielded is rejected (category early rejection); without it the chunks
        cover ``range(Nc)`` in order. The ``B x Nc x hw x E`` class features live as a list of
        chunks (see :mod:`.esc_block`), and the decoder frees each chunk once decoded, so memory
        beyond them is bounded by the chunk size and they are gone by the time the caller holds
        most of the logits.
        """
        dense, intermediates = self.clip_encoder.encode_image_dense(images)
        text = text.to(dense.dtype)
        correlation = torch.einsum("bchw,nc->bnhw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))
        b, nc, h, w = correlation.shape
        class_features = [self._embed_correlation(correlation[:, chunk]) for chunk in class_chunks(nc, self.class_chunk_size)]
        image_features, class_maps = dense, correlation
        kept = torch.arange(nc, device=correlation.device)
        vocabulary_text, block_text = text, text
        reject = (not self.training) and self.cer_enabled
        # with many chunks on the CPU, freed heap pages go back to the system between stages
        release = len(class_features) > 1 and correlation.device.type == "cpu" and not torch.is_grad_enabled()
        if reject and self.cer_after_block == 0:
            kept, class_features, class_maps, block_text = self._reject(kept, class_maps, class_features, text)
        for index, block in enumerate(self.blocks):
            image_features, class_features, class_maps = block(
                image_features, block_text, class_features, class_maps, self.prompt_encoder, vocabulary_text,
            )
            if reject and index + 1 == self.cer_after_block:
                kept, class_features, class_maps, block_text = self._reject(kept, class_maps, class_features, text)
            if release:
                release_free_heap()
        del image_features, class_maps, dense
        guides = self.decoder.skip_guides(intermediates, (h, w))
        del intermediates
        chunks = chunk_slices(class_features)
        for index, chunk in enumerate(chunks):
            features, class_features[index] = class_features[index], None  # freed once decoded
            logits = self.decoder(features, guides, (h, w))
            del features
            if release:  # the caller's output grows meanwhile
                release_free_heap()
            yield kept[chunk], F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _embed_correlation(self, correlation: torch.Tensor) -> torch.Tensor:
        """``B x c x h x w`` correlation -> ``B x c x hw x E`` class features (the 1 -> E 1x1 conv, token-major)."""
        embed = self.correlation_embed
        # a contiguous input gives a contiguous output (a class slice of a batch is not one)
        return torch.addcmul(embed.bias, correlation.flatten(2).contiguous().unsqueeze(-1), embed.weight.view(-1))

    def _reject(self, kept, class_maps, class_features, text):
        """Category early rejection: keep the union over pixels (and images) of each pixel's
        ``CER.TOP_K`` highest-scoring classes of ``class_maps`` (``B x n x h x w``).

        ``class_features``: list of chunks (consumed) -> the kept classes' features, rechunked.
        """
        k = min(self.cer_top_k, class_maps.shape[1])
        top = class_maps.flatten(2).topk(k, dim=1).indices  # B x k x hw
        chosen = torch.zeros(class_maps.shape[1], dtype=torch.bool, device=class_maps.device)
        chosen[top.flatten()] = True
        index = chosen.nonzero().flatten()
        if index.numel() == class_maps.shape[1]:
            return kept, class_features, class_maps, text[kept]
        pieces = []
        for position, chunk in enumerate(chunk_slices(class_features)):
            local = index[(index >= chunk.start) & (index < chunk.stop)] - chunk.start
            if local.numel():
                pieces.append(class_features[position].index_select(1, local))
            class_features[position] = None
        selected = torch.cat(pieces, dim=1)
        del pieces
        chunks = class_chunks(index.numel(), self.class_chunk_size)
        features = [selected] if len(chunks) == 1 else [selected[:, c].clone() for c in chunks]
        return kept[index], features, class_maps[:, index], text[kept[index]]

    # ------------------------------------------------------------------ helpers
    def _vocabulary(self, batched_inputs):
        default = self.train_vocabulary if self.training else self.test_vocabulary
        return batch_vocabulary(batched_inputs, default, self.vocabulary_error)

    def _normalise(self, image):
        """``3 x H x W`` uint8 (INPUT.FORMAT) -> float RGB normalised with CLIP's mean/std."""
        return normalise_image(image, self.device, self.input_format, self.clip_encoder.pixel_mean, self.clip_encoder.pixel_std)

    @staticmethod
    def _resize(image, size):
        """``3 x H x W`` -> ``3 x size``, bilinear (no-op when already that size)."""
        return resize_image(image, size)

    def _loss(self, logits, targets, num_classes):
        """Per-pixel cross-entropy over the vocabulary at each target's resolution, mean over valid pixels."""
        total = logits.new_zeros(())
        valid = 0
        for logit, target in zip(logits, targets):
            target = target.to(logit.device)
            labelled = target != self.ignore_value
            if labelled.any() and int(target[labelled].max()) >= num_classes:
                raise EscnetError(
                    f"label {int(target[labelled].max())} in sem_seg is outside the vocabulary of "
                    f"{num_classes} classes (ignore value {self.ignore_value})"
                )
            if tuple(logit.shape[-2:]) != tuple(target.shape):
                logit = F.interpolate(logit[None], size=target.shape, mode="bilinear", align_corners=False)[0]
            total = total + F.cross_entropy(
                logit[None], target[None], ignore_index=self.ignore_value, reduction="sum"
            )
            valid += int(labelled.sum())
        return total / max(valid, 1)

    def _output_size(self, x):
        return output_size(x)

    def _infer_global(self, batched_inputs, text):
        """Global view only: every image resized to ``S x S``, the batch run at once.

        Class chunks of logits go straight into each image's ``Nc x height x width`` output
        (no ``B x Nc x S x S`` tensor is kept), which is then turned into probabilities in place.
        """
        images = torch.stack([self._resize(self._normalise(x["image"]), self.input_size) for x in batched_inputs])
        outputs = [torch.empty(text.shape[0], *self._output_size(x), device=images.device) for x in batched_inputs]
        written = torch.zeros(text.shape[0], dtype=torch.bool, device=images.device)
        for classes, chunk in self.class_logit_chunks(images, text):
            written[classes] = True
            classes = _as_index(classes)
            for output, logit in zip(outputs, chunk):
                output[classes] = F.interpolate(logit[None], size=output.shape[-2:], mode="bilinear", align_corners=False)[0].float()
        rejected = (~written).nonzero().flatten()
        for output in outputs:
            output[rejected] = REJECTED_LOGIT
        return [{"sem_seg": _softmax_over_classes_(output)} for output in outputs]

    def _infer_sliding(self, x, text):
        """Sliding windows of ``S x S`` (overlap ``TEST.SLIDING_OVERLAP``) plus the global view.

        The image is first scaled so that its shorter side is at least ``S``; window logits are
        averaged where windows overlap, then averaged with the global view's logits; softmax.
        The views run ``TEST.SLIDING_BATCH`` at a time (fewer for large vocabularies:
        :meth:`sliding_views_per_forward`) and each class chunk of their logits is
        added, with its weight, into one ``Nc x size`` buffer (no per-view logits are kept).
        """
        image = self._normalise(x["image"])
        height, width = image.shape[-2:]
        scale = max(1.0, max(s / l for s, l in zip(self.input_size, (height, width))))
        size = (math.ceil(height * scale), math.ceil(width * scale))
        scaled = self._resize(image, size)
        offsets = [self._window_offsets(length, win) for length, win in zip(size, self.input_size)]
        crops, boxes = [], []
        for top in offsets[0]:
            for left in offsets[1]:
                bottom, right = top + self.input_size[0], left + self.input_size[1]
                crops.append(scaled[:, top:bottom, left:right])
                boxes.append((top, bottom, left, right))
        counts = image.new_zeros(1, *size)
        for top, bottom, left, right in boxes:
            counts[:, top:bottom, left:right] += 1
        # combined = (mean of the windows + global view) / 2, as weighted sums of every view
        window_weights = 0.5 / counts
        views = crops + [self._resize(image, self.input_size)]
        regions = boxes + [None]  # None: the global view, upsampled to the whole image
        summed = image.new_zeros(text.shape[0], *size)
        num_classes = text.shape[0]
        views_per_forward = self.sliding_views_per_forward(num_classes, image.element_size())
        for start in range(0, len(views), views_per_forward):
            batch = torch.stack(views[start:start + views_per_forward])
            batch_regions = regions[start:start + views_per_forward]
            seen = torch.zeros(num_classes, dtype=torch.bool, device=summed.device)
            for classes, chunk in self.class_logit_chunks(batch, text):
                seen[classes] = True
                index = _as_index(classes)
                for logit, region in zip(chunk.float(), batch_regions):
                    self._add_view(summed, index, logit, region, window_weights, size)
            del batch
            if summed.device.type == "cpu":  # this forward's freed pages back before the next one
                release_free_heap()
            rejected = (~seen).nonzero().flatten()
            if rejected.numel():  # category early rejection: the rejected classes' logit
                constant = summed.new_full((1, 1, 1), REJECTED_LOGIT)  # a constant upsamples to itself
                for region in batch_regions:
                    self._add_view(summed, rejected, constant, region, window_weights, None)
        output_size = self._output_size(x)
        if tuple(output_size) != tuple(size):
            summed = F.interpolate(summed[None], size=output_size, mode="bilinear", align_corners=False)[0]
        return _softmax_over_classes_(summed)

    def sliding_views_per_forward(self, num_classes: int, element_size: int) -> int:
        """Views per forward in sliding-window inference: ``TEST.SLIDING_BATCH``, fewer when their
        ``views x Nc x hw x E`` class features would exceed ``CLASS_FEATURE_BUDGET_MB`` (at least 1)."""
        if self.class_feature_budget_bytes <= 0:
            return self.sliding_batch
        per_view = num_classes * self.grid_size[0] * self.grid_size[1] * self.hidden_dim * element_size
        return max(1, min(self.sliding_batch, int(self.class_feature_budget_bytes // per_view)))

    @staticmethod
    def _add_view(summed, classes, logit, region, window_weights, size):
        """Add one view's ``c x S x S`` logits of ``classes`` into ``summed`` with its weight
        (``size`` None: ``logit`` is a constant, broadcast)."""
        if region is None:
            if size is not None:  # a fresh tensor: weighted in place
                logit = F.interpolate(logit[None], size=size, mode="bilinear", align_corners=False)[0].mul_(0.5)
            else:
                logit = 0.5 * logit
            _add_into(summed, classes, logit)
            return
        top, bottom, left, right = region
        _add_into(summed[:, top:bottom, left:right], classes, logit * window_weights[:, top:bottom, left:right])

    def _window_offsets(self, length, window):
        """Start offsets of windows covering ``length``; the last window ends at ``length``."""
        if length <= window:
            return [0]
        stride = max(1, int(window * (1.0 - self.sliding_overlap)))
        count = math.ceil((length - window) / stride) + 1
        return [min(i * stride, length - window) for i in range(count)]


def _as_index(classes: torch.Tensor):
    """Sorted class indices -> a ``slice`` when they are a contiguous range (cheap writes), else themselves."""
    first, last = int(classes[0]), int(classes[-1])
    if last - first + 1 == classes.numel():
        return slice(first, last + 1)
    return classes


def _add_into(target: torch.Tensor, classes, values: torch.Tensor) -> None:
    """``target[classes] += values`` in place, with no copy of ``target[classes]`` for index tensors."""
    if isinstance(classes, slice):
        target[classes] += values
    else:
        target.index_add_(0, classes, values.expand(len(classes), *target.shape[1:]))


def _softmax_over_classes_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 of ``Nc x H x W`` float logits, in place (no second Nc-sized tensor)."""
    logits -= logits.amax(dim=0, keepdim=True)
    logits.exp_()
    logits /= logits.sum(dim=0, keepdim=True)
    return logits
