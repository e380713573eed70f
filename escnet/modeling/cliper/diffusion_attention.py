"""Self-attention maps of Stable Diffusion's UNet for one image (official ``diffusion_model/``).

One UNet pass per image: the image (``uint8`` RGB) is resized to ``S x S`` (nearest, as diffusers'
image processor does for tensors) and mapped to [-1, 1]; the VAE's latent mean (times its scaling
factor) gets noise at timestep ``timesteps[timestep_index]`` of the scheduler set to
``num_inference_steps`` steps; the UNet runs on it with the null prompt's text embedding.

The named self-attention modules get a per-instance :class:`SelfAttentionRecorder` processor
(diffusers' ``set_processor``) that computes the attention explicitly and keeps its probabilities
until read. ``forward`` returns ``M x G² x G²`` maps: every head of every named layer, in order.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.errors import EscnetError

UINT8_MAX = 255.0


class SelfAttentionRecorder:
    """diffusers attention processor (as ``AttnProcessor``) that keeps the attention probabilities."""

    def __init__(self):
        self.probabilities: Optional[torch.Tensor] = None  # B x heads x Q x K of the last call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probabilities = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        total, queries, keys = probabilities.shape
        self.probabilities = probabilities.view(total // attn.heads, attn.heads, queries, keys)
        return hidden_states

    def take(self) -> torch.Tensor:
        """The recorded probabilities (then forgotten); an error if the layer did not run."""
        if self.probabilities is None:
            raise RuntimeError("the UNet pass did not run a recorded attention layer")
        probabilities, self.probabilities = self.probabilities, None
        return probabilities


class DiffusionSelfAttention(nn.Module):
    """Stable Diffusion UNet self-attention of an image (see the module docstring)."""

    def __init__(self, *, vae: nn.Module, unet: nn.Module, scheduler, null_embedding: torch.Tensor,
                 layers: Sequence[str], input_size: int, num_inference_steps: int, timestep_index: int,
                 noise_seed: int):
        """
        Args:
            vae, unet: diffusers ``AutoencoderKL`` and ``UNet2DConditionModel``.
            scheduler: a diffusers scheduler (``set_timesteps``, ``timesteps``, ``add_noise``).
            null_embedding: ``1 x T x D`` text-encoder output of the empty prompt.
            layers: UNet self-attention module names (``up_blocks.3.attentions.1.transformer_blocks.0.attn1``).
            input_size: side ``S`` of the square VAE input.
            num_inference_steps, timestep_index: the noise level (``timesteps[index]`` after ``set_timesteps``).
            noise_seed: seed of the latent noise (the same noise for every image).
        """
        super().__init__()
        if not layers:
            raise EscnetError("MODEL.CLIPER.SD_ATTENTION_LAYERS is empty: name at least one UNet self-attention")
        if input_size < 1:
            raise EscnetError(f"MODEL.CLIPER.SD_INPUT_SIZE must be positive, got {input_size}")
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        for param in self.parameters():
            param.requires_grad = False
        self.recorders = []
        for name in layers:
            try:
                module = unet.get_submodule(name)
            except AttributeError:
                raise EscnetError(f"the UNet has no module {name!r} (MODEL.CLIPER.SD_ATTENTION_LAYERS)") from None
            if not hasattr(module, "set_processor") or getattr(module, "is_cross_attention", True):
                raise EscnetError(f"UNet module {name!r} is not a self-attention (MODEL.CLIPER.SD_ATTENTION_LAYERS)")
            recorder = SelfAttentionRecorder()
            module.set_processor(recorder)
            self.recorders.append(recorder)
        self.layers = tuple(layers)
        scheduler.set_timesteps(num_inference_steps)
        if not 0 <= timestep_index < len(scheduler.timesteps):
            raise EscnetError(
                f"MODEL.CLIPER.SD_TIMESTEP_INDEX {timestep_index} is outside the {len(scheduler.timesteps)} "
                f"timesteps of {num_inference_steps} inference steps"
            )
        self.timestep = int(scheduler.timesteps[timestep_index])
        self.input_size = int(input_size)
        self.noise_seed = int(noise_seed)
        self.register_buffer("null_embedding", null_embedding.detach().clone(), persistent=False)

    def latent(self, image: torch.Tensor) -> torch.Tensor:
        """``1 x c x s x s`` VAE latent (mean, scaled) of a ``3 x H x W`` uint8 RGB image."""
        x = image.to(self.null_embedding.device).float()[None] / UINT8_MAX
        x = F.interpolate(x, size=(self.input_size, self.input_size)) * 2 - 1  # nearest, as diffusers
        x = x.to(next(self.vae.parameters()).dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``M x G² x G²`` self-attention maps of a ``3 x H x W`` uint8 RGB image."""
        latent = self.latent(image)
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent)
        timestep = torch.tensor(self.timestep, device=latent.device)
        noisy = self.scheduler.add_noise(latent, noise, timestep)
        context = self.null_embedding.to(latent.dtype).expand(latent.shape[0], -1, -1)
        self.unet(noisy, timestep, encoder_hidden_states=context, return_dict=False)
        maps = [recorder.take()[0] for recorder in self.recorders]  # heads x Q x K each
        sizes = {int(m.shape[-1]) for m in maps}
        side = math.isqrt(next(iter(sizes)))
        if len(sizes) != 1 or side * side != next(iter(sizes)):
            raise EscnetError(
                f"MODEL.CLIPER.SD_ATTENTION_LAYERS {list(self.layers)} must share one square attention grid; "
                f"their key counts are {sorted(sizes)}"
            )
        return torch.cat(maps, dim=0)


def null_prompt_embedding(text_encoder, tokenizer) -> torch.Tensor:
    """``1 x T x D`` text embedding of the empty prompt (as diffusers' ``encode_prompt``, no clip skip)."""
    tokens = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return text_encoder(tokens.input_ids, attention_mask=mask)[0]
