"""One ESC block: pseudo prompts (PPG) -> SAM block per class -> Vision-Language Fusion.

Inputs and outputs of block k (``B`` images, ``Nc`` classes, grid ``h x w``):
  * image features ``B x Din x h x w`` (block 1: CLIP's dense features) -> ``F_v'``,
    ``B x E x h x w``;
  * class features ``B x Nc x hw x E`` (token-major; block 1: the embedded correlation) ->
    refined;
  * class maps ``B x Nc x h x w`` (block 1: the correlation) -> the next block's maps.
With no SAM block (``SAM_INIT: none``) ``F_v'`` is a 1x1 projection of the image features.

Classes run in chunks through every per-class stage (PPG, SAM step, VLF): the class features
are a list of chunks ``B x c_i x hw x E`` (:func:`class_chunks` of the vocabulary). The only
sums over classes (the SAM outputs' weighted mean, the class attention's sums over the text
features) are accumulated over chunks or computed once, so the result is the same for any
chunking and the memory of the per-class stages is bounded by the chunk. Each chunk's refined
features replace its input in the list as soon as they exist (no chunk reads another's), so a
block never holds two copies of the vocabulary's class features, and a consumer (the decoder)
can free them chunk by chunk. At inference the refined features are written into the input
chunk's own storage, and the maps and SAM sums into tensors that exist before the loop: on the
CPU a tensor that outlives its chunk, allocated among that chunk's transients, splits the
heap space they free, so the next chunk's transients extend the heap instead (hundreds of
MB of resident free heap at large vocabularies).
"""
import torch
from torch import nn


def class_chunks(num_classes: int, chunk_size: int):
    """``slice`` objects covering ``range(num_classes)`` in pieces of ``chunk_size`` (0: one piece)."""
    step = chunk_size if chunk_size > 0 else max(num_classes, 1)
    return [slice(start, min(start + step, num_classes)) for start in range(0, num_classes, step)]


def chunk_slices(chunks):
    """``slice`` of the classes each of ``chunks`` (``B x c_i x ...`` tensors, in order) holds."""
    slices, start = [], 0
    for chunk in chunks:
        size = int(chunk.shape[1])  # a Python int also while tracing (FLOP counting)
        slices.append(slice(start, start + size))
        start += size
    return slices


class ESCBlock(nn.Module):
    """PPG + (optional) :class:`SamClassBlock` + :class:`VisionLanguageFusion`."""

    def __init__(self, in_dim, dim, prompt_generator, sam_block, fusion, prompt_types, class_weight_temperature):
        """
        Args:
            in_dim, dim: channels of the incoming image features and of ``F_v'``.
            prompt_generator: :class:`PseudoPromptGenerator` (shared, no parameters).
            sam_block: :class:`SamClassBlock` or None (no SAM block).
            fusion: :class:`VisionLanguageFusion`.
            prompt_types: subset of ``("point", "box", "mask")``.
            class_weight_temperature: temperature of the softmax over classes of the maps that
                weights the classes when fusing the SAM outputs.
        """
        super().__init__()
        self.prompt_generator = prompt_generator
        self.image_skip = nn.Conv2d(in_dim, dim, kernel_size=1)
        self.sam = sam_block
        self.fusion = fusion
        self.prompt_types = tuple(prompt_types)
        self.class_weight_temperature = float(class_weight_temperature)

    def forward(self, image, text, class_features, class_maps, prompt_encoder, vocabulary_text=None):
        """See the module docstring.

        Args:
            text: ``Nc x Ct`` text features of the classes in ``class_features``.
            class_features: list of chunks ``B x c_i x hw x E`` covering the ``Nc`` classes in
                order; updated in place (each chunk replaced by its refined features).
            class_maps: ``B x Nc x h x w``.
            prompt_encoder: the shared :class:`SamPromptEncoder` (None without SAM).
            vocabulary_text: text features whose set the class attention attends to
                (default ``text``; with category early rejection: the whole vocabulary).
        Returns:
            ``(F_v' B x E x h x w, class_features (the same list), maps B x Nc x h x w)``.
        """
        refined_image = self.image_skip(image)
        chunks = chunk_slices(class_features)
        if self.sam is not None:
            refined_image = refined_image + self._sam_step(image, text, class_maps, prompt_encoder, chunks)
        guidance = self.fusion.image_guidance(refined_image)
        summary = self.fusion.class_attention.text_summary(text if vocabulary_text is None else vocabulary_text)
        maps = None  # B x Nc x h x w, filled chunk by chunk
        for index, chunk in enumerate(chunks):
            refined, m = self.fusion(class_features[index], guidance, summary, class_maps[:, chunk])
            class_features[index] = _replace_chunk(class_features[index], refined)
            if len(chunks) == 1:
                maps = m
            else:
                if maps is None:
                    maps = m.new_empty(m.shape[0], class_maps.shape[1], *m.shape[2:])
                maps[:, chunk] = m
            del refined, m
        return refined_image, class_features, maps

    def _sam_step(self, image, text, class_maps, prompt_encoder, chunks):
        """``B x Dout x h x w``: the SAM outputs of all classes, fused (accumulated over chunks)."""
        b, nc, h, w = class_maps.shape
        weights = torch.softmax(class_maps / self.class_weight_temperature, dim=1).flatten(2)  # B x Nc x hw
        image_tokens = self.sam.image_tokens(image)
        key_pe = self.sam.key_pe(prompt_encoder.get_dense_pe())
        summed = None
        for chunk in chunks:
            maps = class_maps[:, chunk]
            prompts = self.prompt_generator(maps.reshape(-1, h, w))
            sparse, dense = prompt_encoder.embed_pseudo_prompt_tokens(prompts, self.prompt_types, factored=True)
            part = self.sam.weighted_keys(image_tokens, text[chunk], sparse, dense, key_pe, weights[:, chunk])
            if summed is None:
                summed = part
            elif torch.is_grad_enabled():
                summed = summed + part
            else:  # in place: no fresh long-lived tensor per chunk (see the module docstring)
                summed += part
        return self.sam.fuse_keys(summed, (h, w))


def _replace_chunk(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new`` in place of ``old``: copied into ``old``'s storage at inference (same shape and
    dtype; see the module docstring), else ``new`` itself (autograd keeps ``old``)."""
    if torch.is_grad_enabled() or old.shape != new.shape or old.dtype != new.dtype:
        return new
    return old.copy_(new)
