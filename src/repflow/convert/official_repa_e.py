"""Official REPA-E checkpoints (End2End-Diffusion/REPA-E ``train_repae.py``) <-> repflow ``repa_e`` runs.

The file is ``{"model", "ema", "vae", "discriminator", "opt", "opt_vae", "opt_disc", "args", "steps"}``: the SiT
(REPA's layout, :mod:`.official_sit`, plus its ``bn.*`` latent batch norm), its EMA, the VAE in the LDM layout
(``models/autoencoder.py``, ``f8d4`` or ``f16d32``: ``codecs/ldm_vae``) and taming's PatchGAN (the same names as
repflow's). The run gets the networks ``model`` (+ EMA), ``objective`` (the projectors), ``latent_norm`` (the
BN's running statistics, + the EMA model's), ``vae``, ``disc``; the VAE is also written as a diffusers
``AutoencoderKL`` in ``RUN/vae`` (the run's ``codec.path``, its EMA statistics as ``latents_mean`` / ``std``).
The optimiser states are not imported (a fine-tune starts them afresh). Back: the same layout, every tensor
(``pos_embed`` and the BN's ``num_batches_tracked`` kept in ``official.safetensors``) exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..codecs.ldm_vae import architecture, to_diffusers, to_ldm
from ..config import Config
from ..errors import CheckpointError
from .official_sit import from_official as sit_from_official
from .official_sit import infer_config as sit_config
from .official_sit import to_official as sit_to_official

KINDS = ("official-repa-e",)
EMA_DECAY = 0.9999  # train_repae.py's update_ema
_BN = ("bn.running_mean", "bn.running_var")


def ldm_config(vae: dict[str, Tensor]) -> dict:
    """The diffusers AutoencoderKL config of an LDM ``AutoencoderKL`` state dict, read from its names and shapes:
    width, levels, res blocks per level, latent channels, and the levels with attention (f16d32's last, at 16 px
    of 256; f8d4 has none). GroupNorm of 32 groups, as ``models/autoencoder.py`` always has."""
    if "quant_conv.weight" not in vae or "encoder.conv_in.weight" not in vae:
        raise CheckpointError("the checkpoint's 'vae' is not an LDM AutoencoderKL (no quant_conv / encoder.conv_in)")
    return {**architecture(vae), "scaling_factor": 1.0}


def check_file(obj: dict, path) -> None:
    for key in ("model", "ema", "vae", "discriminator"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path} is not an official REPA-E training checkpoint: it has no '{key}' "
                                  "(train_repae.py saves model, ema, vae, discriminator, ...)")  # fmt: skip


def infer_config(obj: dict, out: Path, overrides: list[str] | None = None) -> Config:
    """The repa_e run's config: the SiT's from its shapes (REPA's rules), the official loss settings."""
    sit = {k: v for k, v in obj["ema"].items() if not k.startswith("bn.")}
    factor = 2 ** (len(ldm_config(obj["vae"])["block_out_channels"]) - 1)
    grid = sit_config("official-repa", sit).model.input_size
    critic = obj["discriminator"]
    convs = [k for k in critic if re.match(r"^main\.\d+\.weight$", k) and critic[k].dim() == 4]
    args = obj.get("args")
    arg = lambda name, default: getattr(args, name, default) if args is not None else default  # noqa: E731
    items = [
        "method.kind=repa_e", "codec.kind=vae", f"codec.path={out / 'vae'}", f"data.resolution={grid * factor}",
        "data.channels=3", "data.hflip=false", f"repa.depth={arg('encoder_depth', 8)}",
        f"repa.weight={arg('proj_coeff', 0.5)}", f"method.align_weight={arg('vae_align_proj_coeff', 1.5)}",
        f"method.bn_momentum={arg('bn_momentum', 0.1)}", f"method.disc_layers={len(convs) - 2}",
        f"method.disc_width={critic['main.0.weight'].shape[0]}", "method.disc_start=0",
        f"train.ema_decays=[{EMA_DECAY}]", *(overrides or []),
    ]  # fmt: skip
    return sit_config("official-repa", sit, items)


def _sit(sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict, dict]:
    """(model, objective, latent_norm, official-only) tensors of one official SiT state dict."""
    missing = [k for k in _BN if k not in sd]
    if missing:
        raise CheckpointError(f"the REPA-E SiT state dict has no {missing[0]}: not a REPA-E checkpoint")
    model, objective, extra = sit_from_official(
        "official-repa", {k: v for k, v in sd.items() if not k.startswith("bn.")}, cfg
    )
    norm = {k.split(".", 1)[1]: sd[k] for k in _BN}
    if "bn.num_batches_tracked" in sd:
        extra["bn.num_batches_tracked"] = sd["bn.num_batches_tracked"]
    return model, objective, norm, extra


def from_official(obj: dict, cfg: Config) -> dict[str, dict[str, Tensor]]:
    """Every weights file of the run (``model``, ``ema-0.9999``, ``objective``, ``latent_norm`` and its EMA,
    ``vae``, ``disc``, ``official``)."""
    from ..runtime.checkpoint import ema_file, ema_name

    model, objective, norm, extra = _sit(obj["model"], cfg)
    ema, ema_objective, ema_norm, ema_extra = _sit(obj["ema"], cfg)
    official = {f"model.{k}": v for k, v in extra.items()}
    official.update({f"{ema_name(EMA_DECAY)}.{k}": v for k, v in ema_extra.items()})
    official.update({f"{ema_name(EMA_DECAY)}.objective.{k}": v for k, v in ema_objective.items()})
    vae = to_diffusers(obj["vae"], ldm_config(obj["vae"]))
    return {"model": model, ema_name(EMA_DECAY): ema, "objective": objective, "latent_norm": norm,
            ema_file("latent_norm", EMA_DECAY): ema_norm, "vae": vae, "disc": dict(obj["discriminator"]),
            "official": {k: v.clone() for k, v in official.items()}}  # fmt: skip


def to_official(weights, names: list[str], cfg: Config, step: int) -> dict:
    """A repa_e run's checkpoint (``weights(file)``, its files ``names``) in train_repae.py's layout."""
    from ..runtime.checkpoint import ema_file, ema_name

    extra = weights("official") if "official" in names else {}
    decay = next((d for d in cfg.train.ema_decays if ema_name(d) in names), None)

    def sit(file: str, norm_file: str) -> dict[str, Tensor]:
        own = {k[len(file) + 1 :]: v for k, v in extra.items() if k.startswith(f"{file}.")}
        projectors = {k[len("objective.") :]: v for k, v in own.items() if k.startswith("objective.")}
        own = {k: v for k, v in own.items() if not k.startswith("objective.")}
        tracked = own.pop("bn.num_batches_tracked", torch.tensor(0, dtype=torch.long))
        sd = sit_to_official("official-repa", weights(file), projectors or weights("objective"), own, cfg)
        norm = weights(norm_file)
        return {**sd, "bn.running_mean": norm["running_mean"], "bn.running_var": norm["running_var"],
                "bn.num_batches_tracked": tracked}  # fmt: skip

    ema = (ema_name(decay), ema_file("latent_norm", decay)) if decay is not None else ("model", "latent_norm")
    from ..codecs.vae import locate_vae

    config = locate_vae(cfg.codec.path)[2]
    return {"model": sit("model", "latent_norm"), "ema": sit(*ema), "vae": to_ldm(weights("vae"), config),
            "discriminator": weights("disc") if "disc" in names else {}, "steps": step}  # fmt: skip


def write_codec(weights: dict[str, dict[str, Tensor]], config: dict, bn_eps: float, out: Path) -> None:
    """``RUN/vae``: the VAE as a diffusers AutoencoderKL with the EMA BN statistics, as ``repflow export --vae``."""
    from .._compat import require
    from ..methods.latent_norm import LatentBatchNorm
    from ..runtime.checkpoint import ema_file

    vae = require("diffusers").AutoencoderKL.from_config(config)
    vae.load_state_dict(weights["vae"])
    norm = LatentBatchNorm(config["latent_channels"], bn_eps)
    norm.load_state_dict(weights[ema_file("latent_norm", EMA_DECAY)])
    mean, std = norm.mean_std()
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    vae.save_pretrained(str(out), safe_serialization=True)


__all__ = ["KINDS", "check_file", "from_official", "infer_config", "ldm_config", "to_official", "write_codec"]
