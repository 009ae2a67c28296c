"""Official SiT / REPA / REG checkpoints <-> repflow runs.

Formats (what the authors' ``train.py`` saves, or what they released):

- ``official-sit`` (willisma/SiT): a bare state dict (the release) or ``{"model", "ema", "opt", "args"}``; its
  final linear predicts 2C channels (``learn_sigma``: repflow keeps the first C) and its time runs the other
  way (t = 1 is data), so the network's time input is flipped at the edge (``model.time_offset: 1``,
  ``model.time_scale: -1``) and its velocity's sign is folded into ``out_x`` (a sign flip is exact);
- ``official-repa`` (sihyun-yu/REPA): SiT + ``projectors.j`` (kept as REPA objective weights, so training can
  continue);
- ``official-reg`` (Martinser/REG): REPA + the class-token stream (``cls_projectors2`` + ``wg_norm`` in,
  ``final_layer.linear_cls`` out).

Tensors repflow computes instead of storing (the sin-cos ``pos_embed``; SiT's sigma rows) are kept in the
checkpoint's ``official.safetensors`` so that official -> repflow -> official reproduces every tensor
exactly. Every key is mapped: anything unexpected (or missing) stops the import with its name.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..models.layers import sincos_pos_embed_2d
from ..models.presets import SIZES

KINDS = ("official-sit", "official-repa", "official-reg")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|adaLN_modulation\.1|attn\.q_norm|"
                    r"attn\.k_norm)\.(weight|bias)$")  # fmt: skip
_PROJ = re.compile(r"^projectors\.(\d+)\.([024])\.(weight|bias)$")
_RENAME = {  # official -> repflow (model network), shared by the three formats
    "x_embedder.proj.weight": "x_embedder.weight",
    "x_embedder.proj.bias": "x_embedder.bias",
    "y_embedder.embedding_table.weight": "y_embedder.table.weight",
    "final_layer.adaLN_modulation.1.weight": "final_norm.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias": "final_norm.adaLN_modulation.1.bias",
    "cls_projectors2.weight": "stream_in.cls.0.weight",
    "cls_projectors2.bias": "stream_in.cls.0.bias",
    "wg_norm.weight": "stream_in.cls.1.weight",
    "wg_norm.bias": "stream_in.cls.1.bias",
    "final_layer.linear_cls.weight": "stream_out.cls.weight",
    "final_layer.linear_cls.bias": "stream_out.cls.bias",
    **{f"t_embedder.mlp.{i}.{w}": f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_BACK = {v: k for k, v in _RENAME.items()}
_NEEDS = {  # the tensors each format's config is read from
    "official-sit": ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight"),
    "official-repa": ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight",
                      "projectors.0.0.weight"),
    "official-reg": ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight",
                     "projectors.0.0.weight", "final_layer.linear_cls.weight"),
}  # fmt: skip


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    """The resolved repflow config of an official state dict (architecture read from the shapes)."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown format {kind!r}; choose from {', '.join(KINDS)}")
    for need in _NEEDS[kind]:  # noqa: B007 (named in the message)
        if need not in sd:
            other = next((k for k in reversed(KINDS) if all(n in sd for n in _NEEDS[k])), "")
            hint = f": it looks like {other}" if other else f" (keys: {sorted(sd)[:4]} ...)"
            raise CheckpointError(f"not an official {kind} state dict: it has no {need}{hint}")
    hidden, channels, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    tokens = sd["pos_embed"].shape[1] - (1 if kind == "official-reg" else 0) if "pos_embed" in sd else 256
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"official {kind} pos_embed holds {tokens} image tokens, not a square grid: the file "
                              "is damaged or of another format")  # fmt: skip
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    size = next((name for name, (d, h, _) in SIZES.items() if (d, h) == (depth, hidden)), "")
    heads = SIZES[size][2] if size else max(1, hidden // 64)
    z_dims = [sd[f"projectors.{j}.4.weight"].shape[0] for j in range(8) if f"projectors.{j}.4.weight" in sd]
    items = [
        "method.kind=flow", "model.family=sit", f"model.arch=SiT-{size or 'XL'}/{patch}", f"model.depth={depth}",
        f"model.hidden_size={hidden}", f"model.num_heads={heads}", f"model.patch_size={patch}",
        f"model.input_size={grid * patch}", f"model.in_channels={channels}", f"model.num_classes={rows - 1}",
        "model.class_dropout=0.1", "data.dataset=image_folder", "flow.path=linear", "flow.prediction=v",
        *_space(channels, grid * patch),
        f"model.qk_norm={'layernorm' if 'blocks.0.attn.q_norm.weight' in sd else 'none'}",
    ]  # fmt: skip
    if kind == "official-sit":
        items += ["model.time_offset=1.0", "model.time_scale=-1.0", "sample.sampler=sde", "sample.steps=250"]
    else:
        encoders = ", ".join("{name: dinov2-vitb14, resolution: 224}" for _ in z_dims)
        depth_repa = 8 if depth > 12 else 4  # official: encoder_depth 8 for L/XL, 4 for B (not in the weights)
        items += [f"encoders=[{encoders}]", "repa.enabled=true", f"repa.depth={depth_repa}",
                  f"repa.projector_dim={sd['projectors.0.0.weight'].shape[0]}", "sample.sampler=sde",
                  "sample.steps=250"]  # fmt: skip
    if kind == "official-reg":
        items += ["reg.enabled=true", f"reg.dim={sd['final_layer.linear_cls.weight'].shape[0]}",
                  "reg.cls_guidance=official", "sample.cfg=2.3", "sample.cfg_cls=2.3",
                  "sample.cfg_interval=[0.0, 0.85]"]  # fmt: skip
    elif kind == "official-repa":
        items += ["sample.cfg=1.8", "sample.cfg_interval=[0.0, 0.7]"]
    return load_config(None, [*items, *(overrides or [])])


def _space(channels: int, size: int) -> list[str]:
    """The official models run on SD-VAE latents (4 channels, 8x down); a repflow pixel-space run exported in
    this layout (1 or 3 channels) comes back in pixel space, not as a VAE run of the wrong size."""
    if channels == 4:
        return ["codec.kind=sd_vae", f"data.resolution={size * 8}"]
    return ["codec.kind=pixel", f"data.resolution={size}", f"data.channels={channels}"]


def _front(kind: str) -> int:
    return 1 if kind == "official-reg" else 0


def analytic_pos_embed(cfg: Config, kind: str) -> Tensor:
    """The official (1, front + N, D) table: sin-cos, a zero row for REG's class token."""
    grid = cfg.model.input_size // cfg.model.patch_size
    table = sincos_pos_embed_2d(cfg.model.hidden_size, grid, grid)
    return torch.cat([torch.zeros(_front(kind), table.shape[1]), table]).unsqueeze(0)


def from_official(kind: str, sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict]:
    """(model tensors, objective tensors, official-only tensors) in repflow's names."""
    model, objective, extra = {}, {}, {}
    c, p = cfg.model.in_channels, cfg.model.patch_size
    for key, value in sd.items():
        if key == "pos_embed":
            want = analytic_pos_embed(cfg, kind).shape
            if value.shape != want:
                raise CheckpointError(f"official {kind} pos_embed has shape {tuple(value.shape)}; the inferred "
                                      f"{cfg.model.arch} expects {tuple(want)}")  # fmt: skip
            extra["pos_embed"] = value
        elif key in ("final_layer.linear.weight", "final_layer.linear.bias"):
            name = "out_x." + key.rsplit(".", 1)[1]
            if kind == "official-sit":  # learn_sigma: 2C channels, channel fastest; keep the first C, flip the sign
                if value.shape[0] == p * p * 2 * c:
                    split = value.reshape(p, p, 2 * c, *value.shape[1:])
                    extra[f"sigma_{name}"] = split[:, :, c:].clone()
                    value = split[:, :, :c].reshape(p * p * c, *value.shape[1:])
                value = -value  # SiT's velocity points from noise to data
            model[name] = value
        elif m := _PROJ.match(key):
            objective[f"terms.repa.projectors.{m.group(1)}.{m.group(2)}.{m.group(3)}"] = value
        elif _BLOCK.match(key):
            model[key] = value
        elif key in _RENAME:
            model[_RENAME[key]] = value
        else:
            raise CheckpointError(f"official {kind} key {key!r} has no place in repflow: is this the right format?")
    return model, objective, extra


def to_official(kind: str, model: dict[str, Tensor], objective: dict[str, Tensor], extra: dict[str, Tensor],
                cfg: Config) -> dict[str, Tensor]:  # fmt: skip
    """The inverse of :func:`from_official` (official-only tensors recomputed when the run has none)."""
    c, p = cfg.model.in_channels, cfg.model.patch_size
    sd = {"pos_embed": extra.get("pos_embed", analytic_pos_embed(cfg, kind))}
    for key, value in model.items():
        if key.startswith("out_x."):
            if kind == "official-sit":
                value = -value
                sigma = extra.get(f"sigma_{key}")
                if sigma is None:  # trained in repflow: no sigma head; SiT's sampler ignores those channels
                    sigma = torch.zeros(p, p, c, *value.shape[1:], dtype=value.dtype)
                value = torch.cat([value.reshape(p, p, c, *value.shape[1:]), sigma], dim=2)
                value = value.reshape(p * p * 2 * c, *value.shape[3:])
            sd["final_layer.linear." + key.rsplit(".", 1)[1]] = value
        elif _BLOCK.match(key):
            sd[key] = value
        elif key in _BACK:
            sd[_BACK[key]] = value
        else:
            raise CheckpointError(f"repflow key {key!r} has no place in the {kind} format")
    sd.update(official_projectors(objective, kind, "projectors.{}.{}.{}"))
    return sd


def official_projectors(objective: dict[str, Tensor], kind: str, name: str) -> dict[str, Tensor]:
    """REPA's MLP projectors under their official names: ``name`` formatted with (projector, layer, tensor)."""
    out = {}
    for key, value in objective.items():
        m = re.match(r"^terms\.repa\.projectors\.(\d+)\.([024])\.(weight|bias)$", key)
        if m is None:
            raise CheckpointError(f"objective key {key!r} has no place in the {kind} format")
        out[name.format(*m.groups())] = value
    return out
