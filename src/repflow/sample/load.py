"""Rebuild a trained network from a checkpoint alone (its stored config), with chosen weights."""

from __future__ import annotations

import torch

from ..build import build_network, codec_for
from ..config import Config
from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.ema import ema_name


def load_model(run_or_ckpt: str, ema: float = -1.0, device: str | torch.device = "cpu", vae: str = ""):
    """(config, model in eval mode, codec, checkpoint). ``ema``: -1 the first EMA, 0 the raw weights, else that
    decay. The codec is the one training used (from the stored config) unless ``vae`` names another VAE."""
    ckpt = load_checkpoint(run_or_ckpt)
    cfg: Config = ckpt.config
    model = build_network(cfg)
    if ema == 0:
        name = "model"
    elif ema < 0:
        name = ema_name(cfg.train.ema_decays[0]) if cfg.train.ema_decays else "model"
    else:
        name = ema_name(ema)
    weights = ckpt.weights(name)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{ckpt.path}/{name}.safetensors does not fit the stored config ({what})")
    return cfg, model.to(device).eval(), codec_for(cfg, device, vae=vae), ckpt
