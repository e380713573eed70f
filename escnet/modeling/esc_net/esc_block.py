"""One ESC block: pseudo prompts (PPG) -> SAM block per class -> Vision-Language Fusion.

Inputs and outputs of block k (``B`` images, ``Nc`` classes, grid ``h x w``):
  * image features ``B x Din x h x w`` (block 1: CLIP's dense features) -> ``F_v'``,
    ``B x E x h x w``;
  * class features ``B x Nc x E x h x w`` (block 1: the embedded correlation) -> refined;
  * class maps ``B x Nc x h x w`` (block 1: the correlation) -> the next block's maps.
With no SAM block (``SAM_INIT: none``) ``F_v'`` is a 1x1 projection of the image features.
"""
import torch
from torch import nn


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

    def forward(self, image, text, class_features, class_maps, prompt_encoder):
        """See the module docstring; ``prompt_encoder`` is the shared :class:`SamPromptEncoder`."""
        refined_image = self.image_skip(image)
        if self.sam is not None:
            b, nc, h, w = class_maps.shape
            prompts = self.prompt_generator(class_maps.reshape(b * nc, h, w))
            sparse, dense = prompt_encoder.embed_pseudo_prompts(prompts, self.prompt_types)
            weights = torch.softmax(class_maps / self.class_weight_temperature, dim=1)
            refined_image = refined_image + self.sam(
                image, text, sparse, dense, prompt_encoder.get_dense_pe(), weights
            )
        return (refined_image,) + self.fusion(class_features, refined_image, text, class_maps)
