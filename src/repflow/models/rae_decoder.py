"""RAE's pixel decoder: diffusers' ``RAEDecoder`` (the official MAE-style ViT, key for key), with the image
convention of repflow around it.

The decoder maps latent tokens (B, N, C) to patches in the encoder's normalised input space, as the official
code and diffusers' ``AutoencoderRAE`` do; :meth:`RAEImageDecoder.images` undoes the encoder's mean / std and
returns images in [-1, 1]. Sizes: the paper's ViT-B / L / XL, and T for tests and demos.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

# width, depth, heads, MLP width
DECODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "T": (128, 4, 4, 512),
    "S": (384, 8, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "XL": (1152, 28, 16, 4096),
}


def diffusers_decoder(latent_dim: int, grid: int, patch: int, size: str):
    from .._compat import require

    module = require("diffusers.models.autoencoders.autoencoder_rae")
    if size not in DECODER_SIZES:
        raise ValueError(f"unknown decoder size {size!r}; choose from {', '.join(DECODER_SIZES)}")
    width, depth, heads, mlp = DECODER_SIZES[size]
    return module.RAEDecoder(
        hidden_size=latent_dim, decoder_hidden_size=width, decoder_num_hidden_layers=depth,
        decoder_num_attention_heads=heads, decoder_intermediate_size=mlp, num_patches=grid * grid,
        patch_size=patch, num_channels=3, image_size=grid * patch,
    )  # fmt: skip


class RAEImageDecoder(nn.Module):
    """Latent (B, C, h, w) -> patches -> images. ``output``: RAE's decoders predict the encoder's normalised
    input space (undone in :meth:`images`), RAEv2's predict pixels in [0, 1]. ``learned_positions``: the
    official stage-1 trainings also train the sin-cos position table (``rae.decoder.requires_grad_(True)``
    unfreezes it), so their decoders carry their own table; diffusers' ``RAEDecoder`` recomputes it as a buffer.
    With ``learned_positions`` it becomes a parameter saved with the decoder."""

    def __init__(self, decoder: nn.Module, output: str = "normalised", learned_positions: bool = False):
        super().__init__()
        if output not in ("normalised", "pixels"):
            raise ValueError(f"unknown decoder output {output!r}; choose from normalised, pixels")
        self.decoder, self.output = decoder, output
        if learned_positions:
            table = decoder._buffers.pop("decoder_pos_embed")
            decoder.decoder_pos_embed = nn.Parameter(table.clone())

    @property
    def learned_positions(self) -> bool:
        return isinstance(self.decoder.decoder_pos_embed, nn.Parameter)

    @property
    def last_layer(self) -> Tensor:
        """The weight the adaptive GAN weight measures gradients at (``decoder_pred``)."""
        return self.decoder.decoder_pred.weight

    def forward(self, z: Tensor) -> Tensor:
        """Normalised-space images (B, 3, H, W) of unnormalised latents (B, C, h, w)."""
        tokens = z.flatten(2).transpose(1, 2)  # (B, N, C)
        patches = self.decoder(tokens, return_dict=False)[0]
        return self.decoder.unpatchify(patches)

    def images(self, z: Tensor, encoder) -> Tensor:
        """Images in [-1, 1]: the decoder's output (with the encoder's normalisation undone, for RAE's)."""
        x01 = self(z).float()
        if self.output == "normalised":
            x01 = x01 * encoder.std.to(z.device) + encoder.mean.to(z.device)
        return 2 * x01 - 1


def decoder_for(cfg) -> RAEImageDecoder:
    """A fresh decoder for a ``rae_decoder`` run's config (``method.size``, ``latent_dim``, ``grid``)."""
    m = cfg.method
    decoder = diffusers_decoder(m.latent_dim, m.grid, cfg.codec.decoder_patch, m.size)
    return RAEImageDecoder(decoder, m.output, m.positions == "learned")


def check_decoder(source: str):
    """None for a diffusers ``AutoencoderRAE`` directory, else the ``rae_decoder`` checkpoint at ``source`` (its
    config only is read); anything else is refused in one line, so a run pointed at, say, a flow run stops at
    start-up rather than when it first decodes."""
    config = Path(source) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderRAE":
        return None
    from ..runtime.lookup import load_checkpoint

    ckpt = load_checkpoint(source)
    if ckpt.config.method.kind != "rae_decoder":
        raise CheckpointError(f"codec.decoder '{source}' is a {ckpt.config.method.kind} run, not a rae_decoder run "
                              "(nor a diffusers AutoencoderRAE directory)")  # fmt: skip
    return ckpt


def load_decoder(source: str, device: torch.device | str = "cpu", ema: float = -1.0) -> RAEImageDecoder:
    """A trained decoder: a diffusers ``AutoencoderRAE`` directory, or a repflow ``rae_decoder`` run /
    checkpoint (``ema`` -1: its first EMA weights; 0: the raw weights; else that decay)."""
    ckpt = check_decoder(source)
    if ckpt is None:
        from .._compat import require

        diffusers = require("diffusers")
        rae = diffusers.AutoencoderRAE.from_pretrained(str(source))
        return RAEImageDecoder(rae.decoder).to(device).eval()
    from ..runtime.checkpoint import select_weights

    cfg = ckpt.config
    dec = decoder_for(cfg)
    file, _ = select_weights(cfg.train.ema_decays, "decoder", ema, ckpt.weight_names())
    dec.load_state_dict(ckpt.weights(file))
    return dec.to(device).eval()
