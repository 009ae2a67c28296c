"""LDM / taming ``AutoencoderKL`` checkpoints (VA-VAE, REPA-E's VAEs, the original SD VAE) <-> diffusers' AutoencoderKL.

VA-VAE (hustvl/LightningDiT ``tokenizer/autoencoder.py``) and REPA-E's VAEs (``models/autoencoder.py``: SD-VAE,
IN-VAE, VA-VAE and their end-to-end tuned E2E-VAEs) are the latent-diffusion ``Encoder`` / ``Decoder``: levels of
ResNet blocks, attention at the levels whose side is in ``attn_resolutions`` (16 px of a 256 px image: the last
level of f16d32), a middle block, ``quant_conv`` / ``post_quant_conv``. diffusers' AutoencoderKL holds the same
layers as ``Attn{Down,Up}*Block2D`` where a level has attention; its own LDM converter
(``convert_ldm_vae_checkpoint``) maps only the middle attention, so f16d32 VAEs need this one.

The architecture is read from the tensors (width, channel multipliers, blocks per level, attention levels, latent
width), so any size converts. One table of name pairs drives both directions (``to_diffusers`` / ``to_ldm``), and
attention's 1x1 convolutions become linear layers (the same numbers).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_LINEAR = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")  # 1x1 convolutions in LDM
# what LDM training checkpoints keep beside the autoencoder: the loss (LPIPS, discriminator), VA-VAE's alignment
# projection
_NOT_AUTOENCODER = ("loss.", "linear_proj.", "foundation_model.")


def autoencoder_tensors(obj: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(LDM autoencoder state dict, REPA-E's batch-norm statistics or {}) of a file's dict: a bare state dict,
    LDM's ``{"state_dict"}``, VA-VAE's ``{"model"}``, or a REPA-E training checkpoint (``{"vae", "ema"}``, whose
    SiT EMA holds the latents' ``bn.running_mean`` / ``bn.running_var``)."""
    stats: dict[str, Tensor] = {}
    if isinstance(obj.get("vae"), dict):
        ema = obj.get("ema") if isinstance(obj.get("ema"), dict) else {}
        stats = {k: ema[f"bn.{k}"] for k in ("running_mean", "running_var") if f"bn.{k}" in ema}
        obj = obj["vae"]
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict) and "encoder.conv_in.weight" not in obj:
            obj = obj[key]
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor) and not k.startswith(_NOT_AUTOENCODER)}
    for prefix in ("first_stage_model.", "vae."):  # a whole LDM / wrapper state dict
        if f"{prefix}encoder.conv_in.weight" in sd:
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if "encoder.conv_in.weight" not in sd or "decoder.conv_out.weight" not in sd:
        raise CheckpointError("the file holds no LDM AutoencoderKL (no encoder.conv_in / decoder.conv_out): expected "
                              "a VA-VAE, REPA-E or latent-diffusion VAE checkpoint")  # fmt: skip
    return sd, stats


def architecture(sd: dict[str, Tensor]) -> dict:
    """The diffusers ``AutoencoderKL`` config of an LDM state dict, read from its tensors."""
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    widths = [int(sd[f"encoder.down.{i}.block.{blocks - 1}.conv2.weight"].shape[0]) for i in range(levels)]
    down_attn = [f"encoder.down.{i}.attn.0.q.weight" in sd for i in range(levels)]
    up_attn = [f"decoder.up.{levels - 1 - i}.attn.0.q.weight" in sd for i in range(levels)]
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in down_attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in up_attn],
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "latent_channels": int(sd["post_quant_conv.weight"].shape[0]),
        "norm_num_groups": 32,  # LDM's Normalize: GroupNorm(32, ...) everywhere
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": True,
    }


def name_pairs(config: dict) -> list[tuple[str, str]]:
    """(LDM name, diffusers name) of every parameter prefix of the architecture ``config``."""
    pairs = [("encoder.conv_in", "encoder.conv_in"), ("encoder.norm_out", "encoder.conv_norm_out"),
             ("encoder.conv_out", "encoder.conv_out"), ("decoder.conv_in", "decoder.conv_in"),
             ("decoder.norm_out", "decoder.conv_norm_out"), ("decoder.conv_out", "decoder.conv_out"),
             ("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]  # fmt: skip
    levels, blocks = len(config["block_out_channels"]), config["layers_per_block"]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid.block_{j + 1}.{a}", f"{side}.mid_block.resnets.{j}.{b}") for j in range(2)
                  for a, b in _RESNET.items()]  # fmt: skip
        pairs += [(f"{side}.mid.attn_1.{a}", f"{side}.mid_block.attentions.0.{b}") for a, b in _ATTENTION.items()]
    for i in range(levels):
        down, up = f"encoder.down.{i}", f"decoder.up.{levels - 1 - i}"
        for j in range(blocks):
            pairs += [(f"{down}.block.{j}.{a}", f"encoder.down_blocks.{i}.resnets.{j}.{b}") for a, b in _RESNET.items()]
            pairs += [(f"{down}.attn.{j}.{a}", f"encoder.down_blocks.{i}.attentions.{j}.{b}")
                      for a, b in _ATTENTION.items()]  # fmt: skip
        for j in range(blocks + 1):
            pairs += [(f"{up}.block.{j}.{a}", f"decoder.up_blocks.{i}.resnets.{j}.{b}") for a, b in _RESNET.items()]
            pairs += [
                (f"{up}.attn.{j}.{a}", f"decoder.up_blocks.{i}.attentions.{j}.{b}") for a, b in _ATTENTION.items()
            ]
        pairs += [(f"{down}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"),
                  (f"{up}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")]  # fmt: skip
    return pairs


def _rename(sd: dict[str, Tensor], pairs: list[tuple[str, str]], to_diffusers: bool) -> dict[str, Tensor]:
    table = {(a if to_diffusers else b): (b if to_diffusers else a) for a, b in pairs}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in table:
            layout = "diffusers" if to_diffusers else "LDM"
            layout = "diffusers" if to_diffusers else "LDM"
            raise CheckpointError(f"the VAE tensor {key} has no counterpart in the {layout} layout: is it an "
                                  "AutoencoderKL checkpoint?")  # fmt: skip
        new = f"{table[prefix]}.{leaf}"
        attention = new if to_diffusers else key
        if attention.endswith(_LINEAR) and ".attention" in attention:  # 1x1 convolution <-> linear
            value = value.reshape(value.shape[0], value.shape[1]) if to_diffusers else value[:, :, None, None]
        out[new] = value
    return out


def to_diffusers(sd: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """An LDM autoencoder state dict in diffusers' names and shapes; a tensor the architecture ``config`` needs
    and the dict lacks stops with its LDM name."""
    from .._compat import require

    out = _rename(sd, name_pairs(config), to_diffusers=True)
    with torch.device("meta"):
        init = {k: v for k, v in config.items() if not k.startswith("_")}
        expected = require("diffusers").AutoencoderKL.from_config(init).state_dict()
    missing = sorted(set(expected) - set(out))
    if missing:
        ldm = to_ldm({missing[0]: expected[missing[0]]}, config)
        raise CheckpointError(f"the LDM VAE state dict lacks {next(iter(ldm))} (and {len(missing) - 1} more) that an "
                              f"AutoencoderKL of {list(config['block_out_channels'])} channels needs: another "
                              "architecture?")  # fmt: skip
    return out


def to_ldm(sd: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict in LDM's names and shapes (the inverse of :func:`to_diffusers`)."""
    return _rename(sd, name_pairs(config), to_diffusers=False)


def import_vae(path: str | Path, out: str | Path, stats: str | Path | None = None) -> dict:
    """Write the LDM VAE of the file ``path`` as a diffusers AutoencoderKL directory ``out``; returns its config.

    The latent statistics (``stats``: any file ``codec.stats`` reads, e.g. LightningDiT's ``latents_stats.pt``;
    else the batch-norm statistics a REPA-E training checkpoint holds) go into the config as per-channel
    ``latents_mean`` / ``latents_std`` with ``scaling_factor`` 1, so the codec normalises ``(z - mean) / std``
    as their training did. Without statistics the config has no scaling at all and the codec asks for them
    rather than using diffusers' SD default."""
    from .._compat import require
    from ..data.latent_stats import load_stats
    from ..runtime.checkpoint import first_nonfinite
    from ..runtime.safe_load import load_plain

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint '{path}' does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out '{out}' exists and is not an empty directory: choose a new one")
    obj = load_plain(path, "VAE checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    sd, bn = autoencoder_tensors(obj)
    bad = first_nonfinite(sd)
    if bad:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or infinite values: the file is damaged")
    config = architecture(sd)
    mean = var = None
    if stats:
        mean, var, _ = load_stats(stats)
    elif bn:
        mean, var = bn["running_mean"].view(-1, 1, 1), bn["running_var"].view(-1, 1, 1).double()
    if mean is not None:
        if tuple(mean.shape) != (config["latent_channels"], 1, 1):
            raise ConfigError(f"the statistics hold {tuple(mean.shape)} values; this VAE's latent has "
                              f"{config['latent_channels']} channels (one mean and variance each)")  # fmt: skip
        config.update(scaling_factor=1.0, shift_factor=None, latents_mean=mean.flatten().tolist(),
                      latents_std=var.double().sqrt().flatten().tolist())  # fmt: skip
    diffusers = require("diffusers")
    init = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = diffusers.AutoencoderKL(**init)
    try:
        vae.load_state_dict(to_diffusers(sd, config), strict=True)
    except RuntimeError as err:  # a tensor of another shape than the read architecture: a damaged file
        raise CheckpointError(f"{path}: {str(err).splitlines()[1].strip()}") from err
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    written = json.loads((tmp / "config.json").read_text())
    if mean is None:  # no SD default: the codec refuses a VAE without scaling until it has statistics
        written.pop("scaling_factor", None)
        (tmp / "config.json").write_text(json.dumps(written, indent=2))
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return written


__all__ = ["architecture", "autoencoder_tensors", "import_vae", "name_pairs", "to_diffusers", "to_ldm"]
