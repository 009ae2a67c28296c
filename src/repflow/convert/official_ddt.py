"""Official DDT checkpoints (MCG-NJU/DDT) <-> repflow runs.

Their Lightning checkpoint holds ``{"state_dict": {"denoiser.*", "ema_denoiser.*", "diffusion_trainer.proj.*"},
"global_step", ...}``; the release's sampler reads ``ema_denoiser.``. Mapping:

- the patch embeddings are Linears on ``unfold``ed patches (channel, row, column order), repflow's Conv2d
  weights reshaped; the output Linear writes patches in that order for ``fold``, repflow's in (row, column,
  channel) order: its rows are permuted;
- their SwiGLU is ``w2(silu(w1 x) * w3 x)``: ``w1``, ``w3`` become repflow's fused ``w12`` (gate first), ``w2``
  its ``w3``; their adaLN Linears are ``adaLN_modulation.0`` (no SiLU: the condition arrives activated);
- their time runs from noise (t = 0) to data (t = 1): time flipped at the edge (``model.time_offset: 1``,
  ``model.time_scale: -1``), the velocity's sign folded into ``out_x``;
- the REPA projector ``diffusion_trainer.proj.0.{0,2,4}`` becomes the REPA objective's.

Not in the weights, so taken from the authors' setup (override when yours differs): SD-VAE latents (4
channels, which fixes the patch size), 256 px (``model.input_size=64`` for their 512 px model), the
encoder/decoder split of the size (22 + 6 for XL; ``model.encoder_depth``), REPA after encoder block 8. The
run inherits ``ddt-xl2-in256``: their sampler's guidance rule (strict interval, their (0.3, 1.0) is (0, 0.7)
here; the [null, cond] batch order of theirs changes nothing in the result).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..models.ddt import DDT_SIZES
from .official_sit import official_projectors

KIND = "official-ddt"
KINDS = (KIND,)
EMA_DECAY = 0.9999  # their SimpleEMA
CHANNELS = 4  # SD-VAE latents, as every DDT release
_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1\.weight|norm2\.weight|attn\.qkv\.weight|attn\.q_norm\.weight|"
                    r"attn\.k_norm\.weight|attn\.proj\.(weight|bias))$")  # fmt: skip
_MOD = re.compile(r"^(blocks\.\d+|final_layer)\.adaLN_modulation\.0\.(weight|bias)$")
_PROJ = re.compile(r"^proj\.0\.([024])\.(weight|bias)$")
_RENAME = {
    "y_embedder.embedding_table.weight": "y_embedder.table.weight",
    **{f"t_embedder.mlp.{i}.{w}": f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_BACK = {v: k for k, v in _RENAME.items()}


def split_checkpoint(obj: dict) -> tuple[dict[float, dict[str, Tensor]], dict[str, Tensor] | None, int]:
    """({EMA decay: EMA weights}, raw weights with the REPA projector as ``proj.*``, step) of their file."""
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not any(k.startswith("ema_denoiser.") for k in sd):
        raise CheckpointError("not an official DDT checkpoint: no state_dict with ema_denoiser.* weights")
    part = lambda prefix: {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}  # noqa: E731
    raw = part("denoiser.")
    raw.update({f"proj.{k[len('diffusion_trainer.proj.') :]}": v for k, v in sd.items()
                if k.startswith("diffusion_trainer.proj.")})  # fmt: skip
    return {EMA_DECAY: part("ema_denoiser.")}, (raw or None), int(obj.get("global_step", 0) or 0)


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    """The resolved repflow config of an official DDT state dict (architecture from the shapes)."""
    if "s_embedder.proj.weight" not in sd or "blocks.0.attn.q_norm.weight" not in sd:
        raise CheckpointError(f"not an official DDT state dict ({sorted(sd)[:4]} ...)")
    hidden, values = sd["s_embedder.proj.weight"].shape
    patch = math.isqrt(values // CHANNELS)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    heads = hidden // sd["blocks.0.attn.q_norm.weight"].shape[0]
    size = next((n for n, (d, h, _, _) in DDT_SIZES.items() if (d, h) == (depth, hidden)), "")
    encoder = DDT_SIZES[size][3] if size else depth - depth // 4
    items = [
        f"model.arch=DDT-{size or 'XL'}/{patch}", f"model.depth={depth}", f"model.hidden_size={hidden}",
        f"model.num_heads={heads}", f"model.patch_size={patch}", f"model.in_channels={CHANNELS}",
        f"model.encoder_depth={encoder}", f"model.num_classes={sd['y_embedder.embedding_table.weight'].shape[0] - 1}",
        "model.input_size=32", "model.time_offset=1.0", "model.time_scale=-1.0",  # 256 px in SD-VAE latents
    ]  # fmt: skip
    if "proj.0.4.weight" in sd:
        items += [f"repa.projector_dim={sd['proj.0.0.weight'].shape[0]}", "repa.depth=8"]
    else:
        items += ["repa.enabled=false", "encoders=[]"]
    return load_config("ddt-xl2-in256", items + list(overrides or []))


def _head_order(cfg: Config) -> Tensor:
    """repflow's output row r = (i p + j) C + c reads their row c p^2 + i p + j."""
    p, c = cfg.model.patch_size, cfg.model.in_channels
    return torch.arange(c * p * p).reshape(c, p, p).permute(1, 2, 0).reshape(-1)


def from_official(kind: str, sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict]:
    """(model tensors, objective tensors, official-only tensors (none)) in repflow's names."""
    model, objective = {}, {}
    p, c = cfg.model.patch_size, cfg.model.in_channels
    order = _head_order(cfg)
    for key, value in sd.items():
        if key in ("x_embedder.proj.weight", "s_embedder.proj.weight"):
            model[key.split(".")[0] + ".weight"] = value.reshape(value.shape[0], c, p, p)
        elif key in ("x_embedder.proj.bias", "s_embedder.proj.bias"):
            model[key.split(".")[0] + ".bias"] = value
        elif key.startswith("final_layer.linear."):
            model["out_x." + key.rsplit(".", 1)[1]] = -value[order]  # their velocity points from noise to data
        elif m := _MOD.match(key):
            name = "final_norm" if m.group(1) == "final_layer" else m.group(1)
            model[f"{name}.adaLN_modulation.1.{m.group(2)}"] = value
        elif key.endswith(".mlp.w1.weight"):
            block = key[: -len(".mlp.w1.weight")]
            model[f"{block}.mlp.w12.weight"] = torch.cat([value, sd[f"{block}.mlp.w3.weight"]])
        elif key.endswith(".mlp.w2.weight"):
            model[key.replace(".mlp.w2.", ".mlp.w3.")] = value
        elif key.endswith(".mlp.w3.weight"):
            continue  # fused into w12 with w1
        elif m := _PROJ.match(key):
            objective[f"terms.repa.projectors.0.{m.group(1)}.{m.group(2)}"] = value
        elif _BLOCK.match(key):
            model[key] = value
        elif key in _RENAME:
            model[_RENAME[key]] = value
        else:
            raise CheckpointError(f"official DDT key {key!r} has no place in repflow: is this the right format?")
    return model, objective, {}


def to_official(kind: str, model: dict[str, Tensor], objective: dict[str, Tensor], extra: dict[str, Tensor],
                cfg: Config) -> dict[str, Tensor]:  # fmt: skip
    """The inverse of :func:`from_official`: the denoiser's state dict, with the projector as ``proj.*``."""
    sd = {}
    inverse = torch.argsort(_head_order(cfg))
    for key, value in model.items():
        if key in ("x_embedder.weight", "s_embedder.weight"):
            sd[key.replace(".weight", ".proj.weight")] = value.reshape(value.shape[0], -1)
        elif key in ("x_embedder.bias", "s_embedder.bias"):
            sd[key.replace(".bias", ".proj.bias")] = value
        elif key.startswith("out_x."):
            sd["final_layer.linear." + key.rsplit(".", 1)[1]] = -value[inverse]
        elif m := re.match(r"^(blocks\.\d+|final_norm)\.adaLN_modulation\.1\.(weight|bias)$", key):
            name = "final_layer" if m.group(1) == "final_norm" else m.group(1)
            sd[f"{name}.adaLN_modulation.0.{m.group(2)}"] = value
        elif key.endswith(".mlp.w12.weight"):
            block = key[: -len(".mlp.w12.weight")]
            sd[f"{block}.mlp.w1.weight"], sd[f"{block}.mlp.w3.weight"] = value.chunk(2)
        elif key.endswith(".mlp.w3.weight"):
            sd[key.replace(".mlp.w3.", ".mlp.w2.")] = value
        elif _BLOCK.match(key):
            sd[key] = value
        elif key in _BACK:
            sd[_BACK[key]] = value
        else:
            raise CheckpointError(f"repflow key {key!r} has no place in the official DDT format")
    sd.update(official_projectors(objective, kind, "proj.{}.{}.{}"))  # their one projector: proj.0
    return sd


def lightning_checkpoint(ema: dict[str, Tensor], raw: dict[str, Tensor], step: int = 0) -> dict:
    """Their Lightning layout from :func:`to_official` dicts: what their app.py and sampler load."""
    sd = {f"ema_denoiser.{k}": v for k, v in ema.items() if not k.startswith("proj.")}
    sd.update({f"denoiser.{k}": v for k, v in raw.items() if not k.startswith("proj.")})
    sd.update({f"diffusion_trainer.{k}": v for k, v in raw.items() if k.startswith("proj.")})
    return {"state_dict": sd, "global_step": step}
