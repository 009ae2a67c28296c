"""The LDM layout of an AutoencoderKL (CompVis latent-diffusion / taming, REPA-E's ``models/autoencoder.py``) <->
diffusers' ``AutoencoderKL``, one name map for both directions, built from the diffusers config.

LDM names its levels ``encoder.down.<i>.block.<j>`` / ``decoder.up.<i>`` (the decoder's levels counted from the
smallest resolution's end, so diffusers' ``up_blocks.<k>`` is LDM's ``up.<n-1-k>``), its attention ``q / k / v /
proj_out`` as 1x1 convolutions (diffusers: ``to_q / to_k / to_v / to_out.0`` linears, the same numbers without
the two trailing unit dimensions), ``nin_shortcut`` for ``conv_shortcut``, ``norm_out`` for ``conv_norm_out``.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import CheckpointError

_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_name(name: str, levels: int) -> str:
    """The LDM name of a diffusers AutoencoderKL parameter (``levels``: len(block_out_channels))."""
    name = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    up = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.(.*)$", name)
    if up:
        part = {"resnets": "block.", "attentions": "attn.", "upsamplers.0": "upsample."}[up.group(2)]
        name = f"decoder.up.{levels - 1 - int(up.group(1))}.{part}{up.group(3)}"
    name = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", name)
    name = name.replace(".mid_block.attentions.0.", ".mid.attn_1.").replace(".conv_shortcut.", ".nin_shortcut.")
    if ".attn" in name:
        for new, old in _ATTN.items():
            name = name.replace(f".{new}.", f".{old}.")
    return name


def is_attention_matrix(ldm: str, tensor: Tensor) -> bool:
    return bool(re.search(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", ldm)) and tensor.dim() in (2, 4)


def name_map(config: dict) -> dict[str, str]:
    """diffusers name -> LDM name for every tensor of the AutoencoderKL ``config`` describes."""
    from .._compat import require

    with torch.device("meta"):
        vae = require("diffusers").AutoencoderKL.from_config(config)
    levels = len(config["block_out_channels"])
    return {k: ldm_name(k, levels) for k in vae.state_dict()}


def to_ldm(state: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM layout (attention linears as 1x1 convolutions)."""
    out = {}
    for key, ldm in name_map(config).items():
        value = state[key]
        out[ldm] = value[:, :, None, None] if is_attention_matrix(ldm, value) and value.dim() == 2 else value
    return out


def from_ldm(state: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """The inverse of :func:`to_ldm`; a key missing or left over stops with its name."""
    names = name_map(config)
    missing = sorted(set(names.values()) - set(state))
    extra = sorted(set(state) - set(names.values()))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which"
        raise CheckpointError(f"the LDM VAE state dict {what} does not fit an AutoencoderKL of "
                              f"{config['block_out_channels']} channels: another architecture?")  # fmt: skip
    out = {}
    for key, ldm in names.items():
        value = state[ldm]
        out[key] = value[:, :, 0, 0] if is_attention_matrix(ldm, value) and value.dim() == 4 else value
    return out


__all__ = ["from_ldm", "ldm_name", "name_map", "to_ldm"]
