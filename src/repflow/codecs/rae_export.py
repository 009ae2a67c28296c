"""A ``rae_decoder`` run as a diffusers ``AutoencoderRAE`` directory (encoder + decoder + latent statistics).

diffusers builds its encoder from a transformers config (DINOv2 with registers, SigLIP2, MAE) with the final
LayerNorm's affine removed, as repflow's RAE codec reads the tokens; the run's encoder must therefore be such
a transformers model, with 64-wide heads (diffusers derives the head count as width / 64), and a one-block
latent (``codec.layer_indices`` the last block, no ``token_mean``). diffusers normalises by
``(z - mean) / (std + 1e-5)``; the stored ``std`` is ``sqrt(var + eps) - 1e-5`` so that its codec and repflow's
give the same latents.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._compat import require
from ..errors import ConfigError
from ..runtime.lookup import load_checkpoint
from . import build_codec
from .rae import load_stats


def export_autoencoder_rae(run: str | Path, out: Path, stats: str = "") -> Path:
    from ..models.rae_decoder import DECODER_SIZES, load_decoder

    ckpt = load_checkpoint(run)
    cfg = ckpt.config
    if cfg.method.kind != "rae_decoder":
        raise ConfigError(f"{ckpt.path} was trained with method {cfg.method.kind}: export a rae_decoder run")
    m = cfg.method
    if m.output != "normalised" or m.positions != "fixed":
        raise ConfigError(
            f"diffusers' AutoencoderRAE decodes to the encoder's normalised space with fixed sin-cos "
            f"positions; this decoder has method.output={m.output}, method.positions={m.positions}"
        )
    codec = build_codec(cfg.codec.__class__(**{**cfg.codec.__dict__, "stats": "", "decoder": ""}))
    encoder = codec.encoder(cfg.data.resolution)
    if encoder.block_indices(cfg.codec.layer_indices) != [encoder.depth - 1] or cfg.codec.token_mean:
        raise ConfigError("diffusers' AutoencoderRAE reads the last encoder block alone: this run uses "
                          f"codec.layer_indices={list(cfg.codec.layer_indices)}, codec.token_mean="
                          f"{str(cfg.codec.token_mean).lower()}")  # fmt: skip
    network = encoder.network
    kinds = {"Dinov2WithRegistersModel": "dinov2", "SiglipVisionModel": "siglip2", "ViTMAEModel": "mae"}
    kind = kinds.get(type(network).__name__)
    ecfg = getattr(network, "config", None)
    if kind is None or ecfg is None:
        raise ConfigError(f"the run's encoder {cfg.codec.encoder} ({encoder.source}) is not a transformers DINOv2 "
                          "with registers / SigLIP / MAE model: diffusers' AutoencoderRAE cannot hold it")  # fmt: skip
    if ecfg.num_attention_heads != ecfg.hidden_size // 64:
        raise ConfigError(f"diffusers' AutoencoderRAE assumes 64-wide encoder heads; {cfg.codec.encoder} has "
                          f"{ecfg.num_attention_heads} heads of {ecfg.hidden_size}")  # fmt: skip
    m = cfg.method
    width, depth, heads, mlp = DECODER_SIZES[m.size]
    kwargs = {}
    if stats:
        mean, var, _ = load_stats(stats)
        kwargs = {"latents_mean": mean, "latents_std": (var.double() + cfg.codec.stats_eps).sqrt().float() - 1e-5}
    diffusers = require("diffusers")
    rae = diffusers.AutoencoderRAE(
        encoder_type=kind, encoder_hidden_size=ecfg.hidden_size, encoder_patch_size=ecfg.patch_size,
        encoder_num_hidden_layers=ecfg.num_hidden_layers, decoder_hidden_size=width,
        decoder_num_hidden_layers=depth, decoder_num_attention_heads=heads, decoder_intermediate_size=mlp,
        patch_size=codec.factor, encoder_input_size=encoder.resolution, num_channels=3,
        encoder_norm_mean=encoder.mean.flatten().tolist(), encoder_norm_std=encoder.std.flatten().tolist(), **kwargs,
    )  # fmt: skip
    own = {k: v for k, v in network.state_dict().items() if not k.startswith(("layernorm.", "post_layernorm."))}
    missing, unexpected = rae.encoder.load_state_dict(own, strict=False)
    if [k for k in missing if "layernorm" not in k] or unexpected:
        raise ConfigError(f"the encoder's weights do not fit diffusers' {kind} encoder "
                          f"({missing[:2]} {unexpected[:2]})")  # fmt: skip
    rae.decoder.load_state_dict(load_decoder(str(ckpt.path)).decoder.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        rae.save_pretrained(str(out))
    return out
