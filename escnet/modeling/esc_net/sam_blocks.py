"""SAM parts of ESC-Net: prompt encoder, class-wise two-way attention blocks, checkpoint loading.

* :class:`SamPromptEncoder` is ``segment_anything``'s ``PromptEncoder`` (same parameter names as
  in SAM checkpoints) on the CLIP grid, plus :meth:`~SamPromptEncoder.embed_pseudo_prompts`
  which turns :class:`~escnet.modeling.esc_net.prompt_generator.PseudoPrompts` into SAM tokens.
* :class:`SamClassBlock` is one ESC block's SAM step: the image features attend with each
  class's prompt tokens (plus a projected text token) through one ``TwoWayAttentionBlock`` of
  SAM's mask decoder, batched over classes; the Nc refined maps are fused into one map with a
  class-count- and order-agnostic weighted mean.
* :func:`load_sam_checkpoint` copies ``prompt_encoder.*`` and ``mask_decoder.transformer.*``
  tensors of an official SAM checkpoint into those modules (strict key and shape check).
"""
import logging
import os
import urllib.error
import urllib.parse
import urllib.request

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.prompt_encoder import PromptEncoder
from segment_anything.modeling.transformer import TwoWayAttentionBlock

from ...utils.errors import EscnetError
from ...utils.io import atomic_path
from ...utils.locking import file_lock

logger = logging.getLogger(__name__)

PROMPT_TYPES = ("point", "box", "mask")
SAM_MASK_UPSCALE = 4  # SAM's mask path downsamples its input by 4 (two stride-2 convs)
DOWNLOAD_TIMEOUT_S = 20


@dataclass
class FactoredDense:
    """Dense prompt embeddings ``low @ weight^T + bias`` (``N x hw x E``) kept factored.

    ``low``: ``N x hw x r`` (the mask path before its last 1x1 conv, ``r`` = mask_in_chans),
    ``weight``: ``E x r``, ``bias``: ``E``. Linear maps of the dense embedding then cost ``r``
    instead of ``E`` multiply-adds per output channel.
    """

    low: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def materialise(self):
        return F.linear(self.low, self.weight, self.bias)


class SamPromptEncoder(PromptEncoder):
    """SAM's prompt encoder with the image embedding size set to the CLIP grid ``(h, w)``.

    Points and boxes are given in grid pixels; masks at ``4h x 4w`` (SAM's mask path
    downsamples 4x).
    """

    def __init__(self, embed_dim: int, grid_size, mask_in_chans: int):
        grid_size = tuple(int(s) for s in grid_size)
        super().__init__(
            embed_dim=embed_dim,
            image_embedding_size=grid_size,
            input_image_size=grid_size,
            mask_in_chans=mask_in_chans,
        )

    def freeze_unused(self, prompt_types):
        """Stop training the embeddings ``prompt_types`` never use (so every trained parameter
        gets a gradient, as DDP expects): the negative-point embedding always; the positive-point one
        without points; ``not_a_point`` unless there are points and no boxes (then SAM's padding
        token always uses it; otherwise it only marks empty regions, which a batch may lack,
        and keeps its initial value); box corners without boxes; the mask path
        without masks; ``no_mask`` with masks (a foreground is never empty: the PPG's peak
        pixel is always foreground)."""
        unused = [self.point_embeddings[0]]
        if "point" not in prompt_types:
            unused.append(self.point_embeddings[1])
        if "point" not in prompt_types or "box" in prompt_types:
            unused.append(self.not_a_point_embed)
        if "box" not in prompt_types:
            unused += [self.point_embeddings[2], self.point_embeddings[3]]
        if "mask" in prompt_types:
            unused.append(self.no_mask_embed)
        else:
            unused.append(self.mask_downscaling)
        for module in unused:
            module.requires_grad_(False)

    def embed_pseudo_prompts(self, prompts, prompt_types):
        """Pseudo prompts -> SAM embeddings (dense in SAM's ``N x E x h x w`` layout).

        Same as :meth:`embed_pseudo_prompt_tokens` with ``dense`` as ``N x E x h x w``.
        """
        sparse, dense = self.embed_pseudo_prompt_tokens(prompts, prompt_types)
        h, w = self.image_embedding_size
        return sparse, dense.transpose(1, 2).reshape(dense.shape[0], -1, h, w)

    def embed_pseudo_prompt_tokens(self, prompts, prompt_types, factored=False):
        """Pseudo prompts -> SAM embeddings, the dense one token-major.

        Args:
            prompts: :class:`PseudoPrompts` of ``N`` maps with ``R`` regions on the grid.
            prompt_types: subset of ``("point", "box", "mask")``.
        Returns:
            sparse: ``N x T x E`` tokens: R point tokens (+1 padding token when there are no
                boxes, as SAM does), then 2R box-corner tokens; invalid (empty) regions give
                SAM's ``not_a_point`` token. ``T`` may be 0.
            dense: ``N x hw x E`` (grid row-major): the foreground mask through SAM's mask
                path, or SAM's ``no_mask`` embedding (no mask prompt, or an empty foreground).
                The mask path's last layer (a 1x1 conv) runs as a linear map on the
                token-major low-channel features, so no ``E``-channel map is transposed.
                With ``factored`` and every map masked, a :class:`FactoredDense` instead.
        """
        weight = self.not_a_point_embed.weight  # 1 x E
        n, num_regions = prompts.valid.shape
        tokens = [weight.new_zeros(n, 0, self.embed_dim)]
        valid = prompts.valid.unsqueeze(-1)
        if "point" in prompt_types:
            points = prompts.points.to(self.pe_layer.positional_encoding_gaussian_matrix.dtype)
            encoded = self.pe_layer.forward_with_coords(points + 0.5, self.input_image_size)
            encoded = encoded.to(weight.dtype) + self.point_embeddings[1].weight
            tokens.append(torch.where(valid, encoded, weight.expand_as(encoded)))
            if "box" not in prompt_types:
                tokens.append(weight.expand(n, 1, -1))
        if "box" in prompt_types:
            boxes = prompts.boxes.to(self.pe_layer.positional_encoding_gaussian_matrix.dtype)
            corners = (boxes + 0.5).reshape(n * num_regions, 2, 2)
            encoded = self.pe_layer.forward_with_coords(corners, self.input_image_size).to(weight.dtype)
            encoded = encoded + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
            encoded = encoded.reshape(n, num_regions * 2, self.embed_dim)
            corner_valid = valid.repeat_interleave(2, dim=1)
            tokens.append(torch.where(corner_valid, encoded, weight.expand_as(encoded)))
        sparse = torch.cat(tokens, dim=1)

        h, w = self.image_embedding_size
        no_mask = self.no_mask_embed.weight.view(1, 1, -1).expand(n, h * w, -1)
        if "mask" not in prompt_types:
            return sparse, no_mask
        foreground = prompts.foreground.to(weight.dtype).unsqueeze(1)  # N x 1 x h x w
        masks = F.interpolate(foreground, size=self.mask_input_size, mode="nearest")
        *layers, last = self.mask_downscaling
        low = masks
        for layer in layers:
            low = layer(low)  # ends N x c x h x w, c = mask_in_chans
        low = low.flatten(2).transpose(1, 2)  # N x hw x c
        has_mask = prompts.valid.any(dim=1).view(n, 1, 1)
        if bool(has_mask.all()):  # the usual case (the PPG's peak pixel is foreground)
            if factored:
                return sparse, FactoredDense(low, last.weight.flatten(1), last.bias)
            return sparse, F.linear(low, last.weight.flatten(1), last.bias)
        dense = F.linear(low, last.weight.flatten(1), last.bias)  # N x hw x E
        # Under autocast ``dense`` is low precision: keep it so (no full-size fp32 copy).
        return sparse, torch.where(has_mask, dense, no_mask.to(dense.dtype))


class SamClassBlock(nn.Module):
    """One ESC block's SAM step: class-wise refinement of the image features, then fusion.

    For class ``n`` the tokens are ``[text token, prompt tokens]`` where the text token is the
    class's text feature projected to SAM's width (our reading of ``BCA(SA(F_l^n), F_v)``);
    the image tokens are the projected image features plus the dense (mask) prompt embedding,
    as in SAM's mask decoder. One ``TwoWayAttentionBlock`` (token self-attention, token->image
    cross-attention, MLP, image->token cross-attention) runs on all ``B * Nc`` pairs at once.
    The refined maps ``(F_v^n)'`` are fused by a shared 1x1 conv and a per-pixel weighted mean
    over classes (weights: ``class_weights``, summing to 1 over classes), which works for any
    number and order of classes.
    """

    def __init__(
        self,
        in_dim: int,
        text_dim: int,
        out_dim: int,
        sam_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ):
        super().__init__()
        self.image_proj = nn.Conv2d(in_dim, sam_dim, kernel_size=1)
        self.text_proj = nn.Linear(text_dim, sam_dim)
        self.block = TwoWayAttentionBlock(
            embedding_dim=sam_dim,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            activation=nn.ReLU,
            attention_downsample_rate=attention_downsample_rate,
            skip_first_layer_pe=skip_first_layer_pe,
        )
        self.fuse = nn.Linear(sam_dim, out_dim)  # the shared per-class 1x1 conv

    def forward(self, image, text, sparse, dense, dense_pe, class_weights):
        """All classes at once (see :meth:`weighted_keys` for the chunked form).

        Args:
            image: ``B x Din x h x w`` image features.
            text: ``Nc x Ct`` class text features.
            sparse: ``(B*Nc) x T x E`` prompt tokens (image-major: index ``b * Nc + n``).
            dense: ``(B*Nc) x E x h x w`` dense prompt embeddings.
            dense_pe: ``1 x E x h x w`` SAM positional encoding of the grid.
            class_weights: ``B x Nc x h x w``, summing to 1 over classes.
        Returns:
            ``B x Dout x h x w`` fused refined image features.
        """
        b, _, h, w = image.shape
        dense_tokens = dense.flatten(2).transpose(1, 2)
        summed = self.weighted_keys(
            self.image_tokens(image), text, sparse, dense_tokens, self.key_pe(dense_pe), class_weights.flatten(2)
        )
        return self.fuse_keys(summed, (h, w))

    def image_tokens(self, image):
        """``B x Din x h x w`` -> ``B x hw x E`` projected image tokens (once per image)."""
        return self.image_proj(image).flatten(2).transpose(1, 2)

    @staticmethod
    def key_pe(dense_pe):
        """``1 x E x h x w`` SAM grid positional encoding -> ``1 x hw x E``."""
        return dense_pe.flatten(2).transpose(1, 2)

    def weighted_keys(self, image_tokens, text, sparse, dense_tokens, key_pe, class_weights):
        """Refined image tokens of a chunk of ``c`` classes, summed over them with their weights.

        Args:
            image_tokens: ``B x hw x E`` from :meth:`image_tokens`.
            text: ``c x Ct`` text features of the chunk's classes.
            sparse: ``(B*c) x T x E`` prompt tokens (image-major).
            dense_tokens: ``(B*c) x hw x E`` dense prompt embeddings.
            key_pe: ``1 x hw x E`` from :meth:`key_pe`.
            class_weights: ``B x c x hw``, the chunk's share of weights summing to 1 over all classes.
        Returns:
            ``B x hw x E``: ``sum_n w_n (F_v^n)'`` over the chunk (sums over chunks add up).
        """
        b, hw, dim = image_tokens.shape
        nc = text.shape[0]
        text_token = self.text_proj(text).unsqueeze(1).repeat(b, 1, 1)  # (B*c) x 1 x E
        queries = torch.cat([text_token, sparse.to(text_token.dtype)], dim=1)
        key_pe = key_pe.to(image_tokens.dtype)
        if isinstance(dense_tokens, FactoredDense):
            keys = self._two_way_factored(queries, image_tokens, dense_tokens, key_pe)
        else:
            keys = (image_tokens.unsqueeze(1) + dense_tokens.view(b, nc, hw, dim)).view(b * nc, hw, dim)
            _, keys = self.block(queries=queries, keys=keys, query_pe=queries, key_pe=key_pe)
        weights = class_weights.unsqueeze(-1).to(keys.dtype)  # B x c x hw x 1
        return (keys.view(b, nc, hw, dim) * weights).sum(dim=1)

    def _two_way_factored(self, queries, image_tokens, dense, key_pe):
        """``TwoWayAttentionBlock(queries, image_tokens + dense)``'s refined keys, computed with
        the dense embedding factored (same function as segment_anything's forward).

        The image keys of class ``n`` are ``I + W z_n + b`` (``I`` shared by the classes of an
        image, ``z_n`` the ``r``-channel mask features): their projections are the shared
        projection of ``I`` plus ``(W_proj W) z_n``, and the final residual
        ``I + W z_n + b + out_proj(a_n)`` is one product of ``[z_n, a_n]``.
        """
        block = self.block
        b, hw, dim = image_tokens.shape
        n = queries.shape[0]
        nc = n // b
        query_pe = queries
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)

        def per_class(linear, shared_input):
            """``linear(shared_input + W z_n + b)`` for every class: ``(B*c) x hw x D``."""
            shared = linear(shared_input) + F.linear(dense.bias, linear.weight)  # B x hw x D
            own = F.linear(dense.low, linear.weight @ dense.weight)  # (B*c) x hw x D
            return (own.view(b, nc, hw, -1) + shared.unsqueeze(1)).view(n, hw, -1)

        # tokens attend to the image
        attention = block.cross_attn_token_to_image
        image_with_pe = image_tokens + key_pe
        q = attention.q_proj(queries + query_pe)
        k = per_class(attention.k_proj, image_with_pe)
        v = per_class(attention.v_proj, image_tokens)
        queries = block.norm2(queries + attention.out_proj(_attend(q, k, v, attention.num_heads)))
        queries = block.norm3(queries + block.mlp(queries))

        # the image attends to the tokens
        attention = block.cross_attn_image_to_token
        q = per_class(attention.q_proj, image_with_pe)
        tokens_with_pe = queries + query_pe
        attended = _attend(q, attention.k_proj(tokens_with_pe), attention.v_proj(queries), attention.num_heads)
        out = attention.out_proj
        weight = torch.cat([dense.weight, out.weight], dim=1)  # E x (r + D)
        shared = image_tokens + (dense.bias + out.bias)  # B x hw x E
        keys = F.linear(torch.cat([dense.low, attended], dim=-1), weight)
        keys = (keys.view(b, nc, hw, dim) + shared.unsqueeze(1)).view(n, hw, dim)
        return block.norm4(keys)

    def fuse_keys(self, summed, grid_size):
        """``B x hw x E`` weighted sum over all classes -> ``B x Dout x h x w``.

        The shared linear map after the weighted mean equals the weighted mean of the mapped
        maps (the weights sum to 1).
        """
        fused = self.fuse(summed)  # B x hw x Dout
        return fused.transpose(1, 2).reshape(fused.shape[0], -1, *grid_size)


def _attend(q, k, v, num_heads):
    """segment_anything's ``Attention`` after its input projections: ``N x Lq x D`` queries,
    ``N x Lk x D`` keys and values -> ``N x Lq x D`` (before ``out_proj``)."""
    n, lq, dim = q.shape
    heads = [x.view(n, x.shape[1], num_heads, dim // num_heads).transpose(1, 2) for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*heads)  # softmax(q k^T / sqrt(d)) v
    return out.transpose(1, 2).reshape(n, lq, dim)


# ---------------------------------------------------------------------- checkpoint loading
def resolve_sam_checkpoint(path_or_url: str) -> str:
    """Local file for a SAM checkpoint path or URL (URLs are cached in torch hub's checkpoints dir).

    A URL not in the cache is downloaded with a timeout; no network or a missing file raises a
    one-line ``EscnetError`` saying which file to put where.
    """
    if urllib.parse.urlparse(path_or_url).scheme not in ("http", "https"):
        if not os.path.isfile(path_or_url):
            raise EscnetError(
                f"SAM checkpoint not found: {path_or_url!r} (set MODEL.ESCNET.SAM_CHECKPOINT to "
                "sam_vit_b_01ec64.pth, or to \"\" with MODEL.ESCNET.SAM_INIT random)"
            )
        return path_or_url
    filename = os.path.basename(urllib.parse.urlparse(path_or_url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(cache_dir, filename)
    if os.path.isfile(cached):
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    # One process downloads (other ranks or runs wait for the lock, then find the file).
    with file_lock(cached):
        if os.path.isfile(cached):
            return cached
        logger.info("Downloading SAM checkpoint %s to %s", path_or_url, cached)
        try:
            with urllib.request.urlopen(path_or_url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                _copy_with_progress(response, cached, filename)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise EscnetError(
                f"cannot download the SAM checkpoint {path_or_url} ({err}); put {filename} into "
                f"{cache_dir} or set MODEL.ESCNET.SAM_CHECKPOINT to its local path"
            ) from None
    return cached


def _copy_with_progress(response, destination, name):
    from tqdm import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    with atomic_path(destination) as tmp, open(tmp, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=name
    ) as bar:
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            bar.update(len(chunk))


def load_sam_checkpoint(path_or_url: str, targets) -> int:
    """Copy SAM checkpoint tensors into modules; return the number of tensors copied.

    Args:
        path_or_url: a SAM checkpoint (``sam_vit_b_01ec64.pth``) path or URL.
        targets: ``[(checkpoint_prefix, module)]``, e.g. ``[("prompt_encoder.", encoder),
            ("mask_decoder.transformer.layers.1.", block)]`` (a prefix may repeat); every parameter and persistent
            buffer of each module must be in the checkpoint under ``prefix + name`` with the
            same shape (else ``EscnetError`` naming the key).
    """
    path = resolve_sam_checkpoint(path_or_url)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise EscnetError(f"cannot read the SAM checkpoint {path!r}: {type(err).__name__}: {first_line}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise EscnetError(f"SAM checkpoint {path!r} does not hold a state dict")
    copied = 0
    with torch.no_grad():
        for prefix, module in targets:
            for name, tensor in module.state_dict().items():
                key = prefix + name
                if key not in state:
                    raise EscnetError(f"SAM checkpoint {path!r} lacks {key!r} (is it a SAM checkpoint?)")
                source = state[key]
                if tuple(source.shape) != tuple(tensor.shape):
                    raise EscnetError(
                        f"SAM checkpoint {path!r}: {key!r} has shape {tuple(source.shape)}, the model "
                        f"needs {tuple(tensor.shape)} (check MODEL.ESCNET.SAM_* sizes)"
                    )
                tensor.copy_(source)
                copied += 1
    logger.info("Loaded %d SAM tensors from %s", copied, path)
    return copied
