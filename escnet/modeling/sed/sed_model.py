"""SED meta-architecture (CVPR 2024): ConvNeXt CLIP cost map -> gradual fusion decoder, with CER.

``B`` images at the encoder's input size ``S x S``, ``Nc`` classes, ``P`` templates:

1. the ConvNeXt CLIP gives pixel embeddings ``B x C x S/32 x S/32`` and its four stages; the
   text tower gives ``Nc x P x C`` (class, template) embeddings;
2. cost map: cosine of every pixel embedding with every (class, template) embedding,
   ``B x Nc x P x S/32 x S/32``;
3. the gradual fusion decoder (:mod:`~escnet.modeling.sed.decoder`) turns it into one logit per
   class at ``S/4``, using the stages res4, res3, res2 (detached: the encoder learns only
   through the cost map, the paper's stop-gradient);
4. inference: per-class sigmoid, bilinearly resized to each input's ``height x width``.

Scores: SED's are **one sigmoid per class**, returned unchanged (not a softmax over the
vocabulary): each lies in [0, 1], they need not sum to 1, argmax gives the label. With category
early rejection (``MODEL.SED.CER``) rejected classes score exactly 0.

Training loss (the official code): binary cross-entropy with logits of the final map and of
each auxiliary rejection head, against one-hot targets at the target's resolution; ignored
pixels count as negatives for every class (their one-hot row is all zeros).

Released checkpoints with the official parameter names load as they are
(:mod:`~escnet.modeling.sed.official_checkpoint`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...utils.errors import EscnetError
from ...vocabulary import validate_vocabulary
from ..model_inputs import batch_vocabulary, check_labels, config_vocabularies, normalise_image, output_size, resize_image
from ..text_encoder import encode_class_template_texts
from .clip_encoder import ConvNextCLIPEncoder
from .decoder import GradualFusionDecoder
from .official_checkpoint import convert_on_load


@META_ARCH_REGISTRY.register()
class SED(nn.Module):
    """SED for open-vocabulary semantic segmentation; outputs per-class sigmoid scores (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        encoder: ConvNextCLIPEncoder,
        decoder: GradualFusionDecoder,
        cer_enabled: bool,
        cer_top_k: int,
        ignore_value: int,
        input_format: str = "RGB",
        train_vocabulary=None,
        test_vocabulary=None,
        vocabulary_error: str = "",
    ):
        """``train_vocabulary`` / ``test_vocabulary``: defaults for inputs without a vocabulary."""
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise EscnetError(f"INPUT.FORMAT={input_format!r}: SED takes RGB or BGR images")
        if cer_top_k < 1:
            raise EscnetError(f"MODEL.SED.CER.TOP_K must be >= 1, got {cer_top_k}")
        self.encoder = encoder
        self.decoder = decoder
        self.input_size = tuple(encoder.input_size)
        self.cer_enabled = bool(cer_enabled)
        self.cer_top_k = int(cer_top_k)
        self.ignore_value = int(ignore_value)
        self.input_format = input_format
        self.train_vocabulary = tuple(train_vocabulary) if train_vocabulary else None
        self.test_vocabulary = tuple(test_vocabulary) if test_vocabulary else None
        self.vocabulary_error = vocabulary_error
        self.register_load_state_dict_pre_hook(convert_on_load)

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SED
        if cfg.TEST.SLIDING_WINDOW:
            raise EscnetError(
                "TEST.SLIDING_WINDOW is not supported by SED: like the official code it segments the whole "
                "image resized to MODEL.SED.CLIP_INPUT_SIZE; set TEST.SLIDING_WINDOW False"
            )
        encoder = ConvNextCLIPEncoder(cfg)
        try:
            decoder = GradualFusionDecoder(
                num_templates=len(encoder.templates),
                stage_dims=encoder.stage_dims,
                hidden_dim=s.HIDDEN_DIM,
                decoder_dims=list(s.DECODER_DIMS),
                skip_dims=list(s.SKIP_DIMS),
                kernel_sizes=list(s.KERNEL_SIZES),
                num_heads=s.NUM_HEADS,
                pooling_size=list(s.POOLING_SIZE),
                class_chunk_size=s.CLASS_CHUNK_SIZE,
            )
        except ValueError as err:
            raise EscnetError(f"bad MODEL.SED decoder sizes: {err}") from None
        train_vocabulary, test_vocabulary, error = config_vocabularies(cfg)
        return {
            "encoder": encoder,
            "decoder": decoder,
            "cer_enabled": s.CER.ENABLED,
            "cer_top_k": s.CER.TOP_K,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "input_format": cfg.INPUT.FORMAT,
            "train_vocabulary": train_vocabulary,
            "test_vocabulary": test_vocabulary,
            "vocabulary_error": error,
        }

    # ------------------------------------------------------------------ parameters
    def lr_group(self, param_name: str) -> str:
        """Optimizer group: ``"clip"`` for the encoder (``SOLVER.CLIP_MULTIPLIER``), else ``"default"``."""
        return "clip" if param_name.startswith("encoder.") else "default"

    @property
    def device(self):
        return self.decoder.output_head.weight.device

    # ------------------------------------------------------------------ speed yardstick (tools/benchmark.py)
    @property
    def yardstick_input_size(self):
        """``(H, W)`` at which ``run_yardstick`` runs: the encoder's input size."""
        return self.input_size

    def run_yardstick(self, images: torch.Tensor):
        """The CLIP image encoder alone, as SED runs it (dense embeddings and stages)."""
        return self.encoder.encode_image(images)

    def encode_vocabulary(self, vocabulary) -> torch.Tensor:
        """``Nc x P x C`` text features of ``vocabulary`` computed afresh (no cache; for timing)."""
        e = self.encoder
        return encode_class_template_texts(e.clip, e.tokenizer, validate_vocabulary(vocabulary), e.templates, e.text_chunk_size)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        """Model contract of docs/architecture.md; inference returns per-class sigmoid scores."""
        default = self.train_vocabulary if self.training else self.test_vocabulary
        vocabulary = batch_vocabulary(batched_inputs, default, self.vocabulary_error)
        text = self.encoder.encode_text(vocabulary)  # Nc x P x C
        images = torch.stack([
            resize_image(
                normalise_image(x["image"], self.device, self.input_format, self.encoder.pixel_mean, self.encoder.pixel_std),
                self.input_size,
            )
            for x in batched_inputs
        ])
        cost, stages = self.cost_map(images, text)
        if self.training:
            logits, rejection_logits = self.decoder(cost, stages)
            targets = self._one_hot_targets([x["sem_seg"] for x in batched_inputs], len(vocabulary))
            losses = {"loss_sem_seg": self._loss(logits, targets)}
            for i, aux in enumerate(rejection_logits):
                losses[f"loss_rejection_{i}"] = self._loss(aux, targets)
            return losses
        if self.cer_enabled:
            scores = [
                self.decoder.forward_rejecting(cost[i : i + 1], [s[i : i + 1] for s in stages], self.cer_top_k)[0]
                for i in range(len(batched_inputs))
            ]
        else:
            logits, _ = self.decoder(cost, stages, with_rejection_logits=False)
            scores = logits.float().sigmoid()
        return [
            {"sem_seg": F.interpolate(score[None], size=output_size(x), mode="bilinear", align_corners=False)[0]}
            for score, x in zip(scores, batched_inputs)
        ]

    def cost_map(self, images: torch.Tensor, text: torch.Tensor):
        """``B x 3 x S x S`` normalised images, ``Nc x P x C`` text -> (cost ``B x Nc x P x h x w``,
        detached stages [res2..res5])."""
        dense, stages = self.encoder.encode_image(images)
        dense = F.normalize(dense, dim=1)
        text = F.normalize(text.to(dense.dtype), dim=-1)
        cost = torch.einsum("bchw,npc->bnphw", dense, text)
        return cost, [s.detach() for s in stages]

    def _one_hot_targets(self, targets, num_classes):
        """``H x W`` label maps -> ``Nc x H x W`` float one-hot maps; ignored pixels are all zeros."""
        one_hots = []
        for target in targets:
            target = target.to(self.device)
            check_labels(target, num_classes, self.ignore_value)
            labelled = target != self.ignore_value
            one_hot = F.one_hot(torch.where(labelled, target, 0), num_classes).permute(2, 0, 1)
            one_hots.append((one_hot * labelled.unsqueeze(0)).float())
        return one_hots

    def _loss(self, logits, targets):
        """Mean binary cross-entropy of ``B x Nc x h x w`` logits against one-hot ``Nc x H x W`` targets
        (logits bilinearly resized to each target's size), as the official loss: ignored pixels are
        negatives for every class."""
        total, count = logits.new_zeros((), dtype=torch.float32), 0
        for logit, target in zip(logits, targets):
            if tuple(logit.shape[-2:]) != tuple(target.shape[-2:]):
                logit = F.interpolate(logit[None], size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)[0]
            total = total + F.binary_cross_entropy_with_logits(logit.float(), target, reduction="sum")
            count += target.numel()
        return total / max(count, 1)
