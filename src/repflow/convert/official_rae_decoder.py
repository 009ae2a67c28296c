"""Official RAE / RAEv2 stage-1 decoders (their ``GeneralDecoder``, an MAE-style ViT) <-> repflow ``rae_decoder`` runs.

Their files: a flat decoder state dict (RAE's ``model.pt``, RAEv2's ``decoder.pt`` from ``extract_decoder.py``), or
a stage-1 training checkpoint whose ``model`` / ``ema`` hold the whole autoencoder (``encoder.*``, ``decoder.*``).
repflow's decoder is diffusers' ``RAEDecoder``: the same layers, with diffusers' attention names
(``attention.to_q`` for ``attention.attention.query``, ...). Their training unfreezes the sin-cos position table,
so it is imported as a learned table (``method.positions: learned``). RAE's decoders predict the encoder's
normalised input space, RAEv2's pixels in [0, 1] (``method.output``).
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..models.rae_decoder import DECODER_SIZES

EMA_DECAY = 0.9978  # both stage-1 configs
PRESETS = {"official-rae": "rae-decoder-dinov2b-in256", "official-raev2": "raev2-decoder-dinov3l-in256"}
_LAYER = re.compile(r"^decoder_layers\.(\d+)\.(.+)$")
_ATTENTION = {
    "attention.attention.query": "attention.to_q",
    "attention.attention.key": "attention.to_k",
    "attention.attention.value": "attention.to_v",
    "attention.output.dense": "attention.to_out.0",
}
_LAYER_KEYS = ("intermediate.dense", "output.dense", "layernorm_before", "layernorm_after")
_TOP = ("decoder_embed.weight", "decoder_embed.bias", "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias",
        "decoder_pred.weight", "decoder_pred.bias", "trainable_cls_token")  # fmt: skip


def strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The decoder's own tensors: a whole-autoencoder state dict keeps only ``decoder.*``, without the prefix."""
    if "decoder_embed.weight" in sd:
        return dict(sd)
    return {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}


def is_decoder(sd: dict[str, Tensor]) -> bool:
    return "decoder_embed.weight" in strip(sd)


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    sd = strip(sd)
    width, latent_dim = sd["decoder_embed.weight"].shape
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _LAYER.match(k))), default=-1)
    size = next((n for n, (w, d, _, _) in DECODER_SIZES.items() if (w, d) == (width, depth)), "")
    if not size:
        known = ", ".join(f"{n} ({w} x {d})" for n, (w, d, _, _) in DECODER_SIZES.items())
        raise CheckpointError(f"a {width}-wide, {depth}-layer decoder is none of repflow's decoder sizes: {known}")
    if "decoder_pos_embed" not in sd:
        raise CheckpointError("the official decoder file has no decoder_pos_embed: is it a GeneralDecoder?")
    grid = math.isqrt(sd["decoder_pos_embed"].shape[1] - 1)
    patch = math.isqrt(sd["decoder_pred.weight"].shape[0] // 3)
    items = [f"method.size={size}", f"method.latent_dim={latent_dim}", f"method.grid={grid}",
             "method.positions=learned", f"method.output={'pixels' if kind == 'official-raev2' else 'normalised'}",
             f"codec.decoder_patch={patch}", f"data.resolution={grid * patch}",
             f"train.ema_decays=[{EMA_DECAY}]"]  # fmt: skip
    return load_config(PRESETS[kind], [*items, *(overrides or [])])


def from_official(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official decoder keys -> the ``decoder`` network's (``RAEImageDecoder``: ``decoder.<diffusers key>``)."""
    out = {}
    for key, value in strip(sd).items():
        m = _LAYER.match(key)
        if key in _TOP:
            out[f"decoder.{key}"] = value
        elif m and (part := m.group(2).rsplit(".", 1))[0] in (*_ATTENTION, *_LAYER_KEYS):
            out[f"decoder.decoder_layers.{m.group(1)}.{_ATTENTION.get(part[0], part[0])}.{part[1]}"] = value
        else:
            raise CheckpointError(f"official decoder key {key!r} has no place in repflow's RAE decoder")
    return out


def to_official(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    back = {v: k for k, v in _ATTENTION.items()}
    out = {}
    for key, value in weights.items():
        key = key.removeprefix("decoder.")
        m = _LAYER.match(key)
        if m:
            part = m.group(2).rsplit(".", 1)
            key = f"decoder_layers.{m.group(1)}.{back.get(part[0], part[0])}.{part[1]}"
        out[key] = value
    return out
