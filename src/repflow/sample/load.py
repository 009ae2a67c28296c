"""Rebuild what a trained run generates with from its checkpoint alone (the stored config): the method's
inference networks with the chosen weights, the codec, and the denoiser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..build import check_weights_record, method_class
from ..config import Config
from ..errors import CheckpointError
from ..runtime.checkpoint import CKPT_RE, Checkpoint, select_weights
from ..runtime.lookup import load_checkpoint


@dataclass
class LoadedRun:
    cfg: Config
    ckpt: Checkpoint
    networks: dict[str, nn.Module]  # in eval mode, on the device
    codec: object
    denoiser: object  # a repflow.flow.denoiser.Denoiser, or None for a method that does not generate
    ema: float | str  # the EMA decay used ("raw": the raw weights)
    reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None  # an autoencoder's images -> images

    @property
    def model(self) -> nn.Module:
        return self.networks["model"]

    def ema_warning(self) -> str:
        """A warning when the EMA weights in use still mostly hold the initialisation (a short run)."""
        if not isinstance(self.ema, float):
            return ""
        match = CKPT_RE.match(self.ckpt.path.name)
        steps = int(match.group(1)) if match else 0
        share = initial_share(self.ema, steps, self.cfg.train.ema_warmup)
        if share < 0.2:
            return ""
        return (f"the EMA {self.ema:g} after {steps} steps still holds {share:.0%} of the initial weights; "
                "pass --ema 0 (the raw weights), or train longer / with train.ema_warmup=true")  # fmt: skip


def initial_share(decay: float, steps: int, warmup: bool = False) -> float:
    """Weight of the initialisation in an EMA after ``steps`` updates (the product of the decays used)."""
    share = 1.0
    for n in range(steps):
        share *= min(decay, (1 + n) / (10 + n)) if warmup else decay
        if share < 1e-6:
            break
    return share


def load_run(
    run_or_ckpt: str | Path, ema: float = -1.0, device: str | torch.device = "cpu", vae: str = ""
) -> LoadedRun:
    """Load a run (its newest checkpoint) or a checkpoint for generation. The codec is the one training used
    (from the stored config) unless ``vae`` names other weights."""
    ckpt = load_checkpoint(run_or_ckpt)
    check_weights_record(ckpt)
    cfg = ckpt.config
    kind = method_class(cfg)
    networks = kind.inference_networks(cfg)
    available = ckpt.weight_names()
    used: float | str = "raw"
    for n, (name, net) in enumerate(networks.items()):
        file, decay = select_weights(cfg.train.ema_decays, name, ema, available, required=n == 0)
        used = decay if n == 0 else used
        weights = {kind.legacy_name(cfg, f"{name}.{k}")[len(name) + 1 :]: v for k, v in ckpt.weights(file).items()}
        try:
            missing, unexpected = net.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # shapes that differ: torch lists every tensor, over many lines
            first = " ".join(str(err).split())[:240]
            where = f"{ckpt.path}/{file}.safetensors"
            raise CheckpointError(f"{where} does not fit the stored config ({first}...)") from err
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise CheckpointError(f"{ckpt.path}/{file}.safetensors does not fit the stored config ({what})")
        net.to(device).eval()
    codec = kind.run_codec(cfg, networks, device, vae=vae)
    denoiser = kind.denoiser(cfg, networks, torch.device(device), codec) if networks else None
    return LoadedRun(cfg, ckpt, networks, codec, denoiser, used, kind.reconstructor(cfg, networks, codec))


def load_model(run_or_ckpt: str | Path, ema: float = -1.0, device: str | torch.device = "cpu", vae: str = ""):
    """(config, sampled network in eval mode, codec, checkpoint)."""
    run = load_run(run_or_ckpt, ema, device, vae)
    return run.cfg, run.model, run.codec, run.ckpt
