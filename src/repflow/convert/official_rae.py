"""Official RAE and RAEv2 stage-2 checkpoints (DiT^DH) <-> repflow runs.

- ``official-rae`` (bytetriper/RAE, ``stage2/models/DDT.py`` ``DiTwDDTHead``): the ``lightning`` backbone of
  ``model.family: dit_dh``. Blocks ``0 .. depth-1`` are the backbone's, the rest the head's; names match
  repflow's blocks (``norm1``, ``attn.qkv``, ``mlp.w12``, ``adaLN_modulation.1``, ...).
- ``official-raev2`` (nanovisionx/RAEv2, ``DiTwDDTHeadIG``): the ``in_context`` backbone with the internal
  output (``base_final_layer``). Their attention has separate q / k / v and their SwiGLU separate w1 / w2:
  repflow's fused ``qkv`` and ``w12`` hold them stacked in that order (a concatenation, exact both ways). A
  REPA projector (``repa_projector``, a linear map) becomes the objective's linear REPA projector.

Both save ``{"step", "epoch", "model", "ema", "optimizer", "scheduler"}`` (their sampling scripts read the
EMA) or a bare state dict. The RoPE tables they store as buffers are recomputed by repflow: they are checked
against the recomputed ones on import and kept in ``official.safetensors`` for an exact export. Time runs as
in repflow (t = 0 is data) and the Fourier time frequencies, positions and learned tokens are weights.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..flow.timesteps import dimension_shift
from ..models.dit_dh import DH_ARCHS
from ..models.layers import rope_2d, swiglu_hidden

KINDS = ("official-rae", "official-raev2")
EMA_DECAY = 0.9995  # both papers' EMA
PRESETS = {"official-rae": "rae-ditdh-xl-in256", "official-raev2": "raev2-in256"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_COMMON = {  # official -> repflow, both formats
    "s_embedder.proj.weight": "backbone.x_embedder.weight",
    "s_embedder.proj.bias": "backbone.x_embedder.bias",
    "x_embedder.proj.weight": "x_embedder.weight",
    "x_embedder.proj.bias": "x_embedder.bias",
    "s_projector.weight": "s_projector.weight",
    "s_projector.bias": "s_projector.bias",
    "t_embedder.W": "backbone.t_embedder.W",
    **{f"t_embedder.mlp.{i}.{w}": f"backbone.t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_FINALS = {"official-rae": (("final_layer", "final"),),
           "official-raev2": (("final_layer", "final"), ("base_final_layer", "internal"))}  # fmt: skip
_RENAME = {
    "official-rae": {
        **_COMMON,
        "pos_embed": "backbone.pos_embed",
        "y_embedder.embedding_table.weight": "backbone.y_embedder.table.weight",
        "final_layer.norm_final.weight": "final.norm.weight",
        **{f"final_layer.{a}.{w}": f"final.{b}.{w}" for a, b in (("adaLN_modulation.1", "modulation"),
           ("linear", "linear")) for w in ("weight", "bias")},
    },
    "official-raev2": {
        **_COMMON,
        "t_embedder.learnable_tokens": "backbone.time_tokens",
        "ctx_embedder.embedding_table.weight": "backbone.y_embedder.table.weight",
        "ctx_embedder.learnable_tokens": "backbone.class_tokens",
        **{f"{o}.norm.weight": f"{r}.norm.weight" for o, r in _FINALS["official-raev2"]},
        **{f"{o}.{a}.{w}": f"{r}.{b}.{w}" for o, r in _FINALS["official-raev2"]
           for a, b in (("adaln_modulation.1", "modulation"), ("linear", "linear")) for w in ("weight", "bias")},
    },
}  # fmt: skip
_SHARED_BLOCK_KEYS = ("norm1.weight", "norm2.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
                      "attn.proj.bias", "mlp.w3.weight", "mlp.w3.bias")  # fmt: skip
_BLOCK_KEYS = {  # a block's own keys, official -> repflow (v2's separate q/k/v and w1/w2 are handled by _fuse)
    "official-rae": {k: k for k in (*_SHARED_BLOCK_KEYS, "attn.qkv.weight", "attn.qkv.bias", "mlp.w12.weight",
                                    "mlp.w12.bias", "adaLN_modulation.1.weight", "adaLN_modulation.1.bias")},
    "official-raev2": {**{k: k for k in _SHARED_BLOCK_KEYS}, "adaln_modulation.1.weight": "adaLN_modulation.1.weight",
                       "adaln_modulation.1.bias": "adaLN_modulation.1.bias"},
}  # fmt: skip
_FUSED = {"attn.qkv": ("attn.q", "attn.k", "attn.v"), "mlp.w12": ("mlp.w1", "mlp.w2")}  # RAEv2's separate parts
_ROPE = {"official-rae": ("enc_feat_rope", "dec_feat_rope"), "official-raev2": ("enc_rope", "dec_rope")}


def _shape(sd: dict[str, Tensor], key: str, kind: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"not an official {kind} state dict: it has no {key} (keys: {sorted(sd)[:4]} ...)")
    return sd[key].shape


def _blocks(sd: dict[str, Tensor]) -> int:
    return 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    """The resolved repflow config of an official state dict (architecture read from the shapes)."""
    enc, channels, patch, _ = _shape(sd, "s_embedder.proj.weight", kind)
    dec = _shape(sd, "x_embedder.proj.weight", kind)[0]
    total = _blocks(sd)
    width = [sd[f"blocks.{i}.norm1.weight"].shape[0] for i in range(total)]
    depth = sum(w == enc for w in width) if enc != dec else total - 2  # equal widths: the official 2-block head
    enc_rope, dec_rope = (sd.get(f"{name}.freqs_cos") for name in _ROPE[kind])
    conditions = 0
    if kind == "official-raev2":
        time_tokens = _shape(sd, "t_embedder.learnable_tokens", kind)[0]
        class_tokens = _shape(sd, "ctx_embedder.learnable_tokens", kind)[0]
        rows = _shape(sd, "ctx_embedder.embedding_table.weight", kind)[0]
        conditions = time_tokens + class_tokens
    else:
        rows = _shape(sd, "y_embedder.embedding_table.weight", kind)[0]
    tokens = (enc_rope.shape[0] - conditions) if enc_rope is not None else sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    size = next((n[6:].split("/")[0] for n, d in DH_ARCHS.items() if (d["depth"], d["hidden_size"]) == (depth, enc)),
                "XL")  # fmt: skip
    heads = enc // enc_rope.shape[1] if enc_rope is not None else DH_ARCHS[f"DiTDH-{size}/1"]["num_heads"]
    head_heads = dec // dec_rope.shape[1] if dec_rope is not None else 16
    hidden = sd["blocks.0.mlp.w3.weight"].shape[1]
    if hidden != swiglu_hidden(enc, 4.0):
        raise CheckpointError(f"blocks.0 has a {hidden}-wide SwiGLU; repflow's DiT^DH uses mlp_ratio 4 "
                              f"({swiglu_hidden(enc, 4.0)} for width {enc})")  # fmt: skip
    qk = "rmsnorm" if "blocks.0.attn.q_norm.weight" in sd else "none"
    items = [
        "model.family=dit_dh", f"model.arch=DiTDH-{size}/{patch}", f"model.depth={depth}", f"model.hidden_size={enc}",
        f"model.num_heads={heads}", f"model.patch_size={patch}", f"model.head_depth={total - depth}",
        f"model.head_width={dec}", f"model.head_heads={head_heads}", f"model.qk_norm={qk}",
        f"model.head_qk_norm={f'blocks.{depth}.attn.q_norm.weight' in sd}", f"model.input_size={grid * patch}",
        f"model.in_channels={channels}", f"model.num_classes={rows - 1}", f"data.resolution={grid * patch * 16}",
    ]  # fmt: skip
    if kind == "official-raev2":
        internal = any(k.startswith("base_final_layer.") for k in sd)
        items += [
            "model.backbone=in_context",
            f"model.time_tokens={time_tokens}",
            f"model.class_tokens={class_tokens}",
            f"model.internal_depth={min(8, depth) if internal else 0}",
        ]  # not stored: their configs' 8
        if "repa_projector.weight" in sd:
            items += ["repa.enabled=true", "repa.projector=linear", "repa.loss=mse", "repa.depth=8"]
    else:
        items += ["model.backbone=lightning", f"model.pos_embed={'pos_embed' in sd}"]
    cfg = load_config(PRESETS[kind], [*items, *(overrides or [])])
    time = cfg.flow.time
    if time.shift_base_dim > 0:  # the dimension shift a run resolves when training starts, for sampling now
        shift = dimension_shift(channels * (grid * patch) ** 2, time.shift_base_dim)
        cfg = cfg.replace(**{"flow.time.shift": shift})
    return cfg


def _fuse(kind: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """RAEv2's separate q / k / v and w1 / w2 stacked into repflow's fused layers (rows in that order)."""
    if kind != "official-raev2":
        return dict(sd)
    out = dict(sd)
    for i in range(_blocks(sd)):
        for fused, parts in _FUSED.items():
            for w in ("weight", "bias"):
                keys = [f"blocks.{i}.{p}.{w}" for p in parts]
                if all(k in out for k in keys):
                    out[f"blocks.{i}.{fused}.{w}"] = torch.cat([out.pop(k) for k in keys])
    return out


def from_official(kind: str, sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict]:
    """(model tensors, objective tensors, official-only tensors) in repflow's names."""
    model, objective, extra = {}, {}, {}
    depth, rename, block_keys = cfg.model.depth, _RENAME[kind], _BLOCK_KEYS[kind]
    fused_keys = {f"{f}.{w}" for f in _FUSED for w in ("weight", "bias")} if kind == "official-raev2" else set()
    for key, value in _fuse(kind, sd).items():
        m = _BLOCK.match(key)
        if m and (m.group(2) in block_keys or m.group(2) in fused_keys):
            i, rest = int(m.group(1)), block_keys.get(m.group(2), m.group(2))
            model[f"backbone.blocks.{i}.{rest}" if i < depth else f"head.{i - depth}.{rest}"] = value
        elif key in rename:
            model[rename[key]] = value
        elif key.split(".")[0] in _ROPE[kind]:
            extra[key] = value
        elif key in ("repa_projector.weight", "repa_projector.bias"):
            objective[f"terms.repa.projectors.0.{key.rsplit('.', 1)[1]}"] = value
        else:
            raise CheckpointError(f"official {kind} key {key!r} has no place in repflow: is this the right format?")
    _check_rope(kind, extra, cfg)
    return model, objective, extra


def _rope_tables(kind: str, cfg: Config) -> dict[str, Tensor]:
    m = cfg.model
    grid = m.input_size // m.patch_size
    conditions = m.time_tokens + m.class_tokens if kind == "official-raev2" else 0
    enc, dec = _ROPE[kind]
    tables = {}
    for name, cos_sin in ((enc, rope_2d(m.hidden_size // m.num_heads, grid, back=conditions)),
                          (dec, rope_2d(m.head_width // m.head_heads, grid))):  # fmt: skip
        tables[f"{name}.freqs_cos"], tables[f"{name}.freqs_sin"] = cos_sin
    return tables


def _check_rope(kind: str, stored: dict[str, Tensor], cfg: Config) -> None:
    """Their RoPE buffers must be the tables repflow computes (else the grid or heads were misread)."""
    for key, table in _rope_tables(kind, cfg).items():
        if key in stored and (stored[key].shape != table.shape or not torch.allclose(stored[key].float(), table,
                                                                                     atol=1e-5)):  # fmt: skip
            raise CheckpointError(f"official {key} {tuple(stored[key].shape)} is not the RoPE table of a "
                                  f"{cfg.model.input_size}x{cfg.model.input_size} grid with these heads")  # fmt: skip


def to_official(kind: str, model: dict[str, Tensor], objective: dict[str, Tensor], extra: dict[str, Tensor],
                cfg: Config) -> dict[str, Tensor]:  # fmt: skip
    """The inverse of :func:`from_official` (RoPE tables recomputed when the run has none)."""
    depth = cfg.model.depth
    back = {v: k for k, v in _RENAME[kind].items()}
    block_back = {v: k for k, v in _BLOCK_KEYS[kind].items()}
    sd = {**_rope_tables(kind, cfg), **extra}
    for key, value in model.items():
        m = re.match(r"^(backbone\.blocks|head)\.(\d+)\.(.+)$", key)
        if m:
            i = int(m.group(2)) + (0 if m.group(1) == "backbone.blocks" else depth)
            part = m.group(3).rsplit(".", 1)
            if kind == "official-raev2" and part[0] in _FUSED:
                names = _FUSED[part[0]]
                for name, piece in zip(names, value.chunk(len(names)), strict=True):
                    sd[f"blocks.{i}.{name}.{part[1]}"] = piece.clone()
            else:
                sd[f"blocks.{i}.{block_back.get(m.group(3), m.group(3))}"] = value
        elif key in back:
            sd[back[key]] = value
        else:
            raise CheckpointError(f"repflow key {key!r} has no place in the {kind} format")
    for key, value in objective.items():
        if not re.fullmatch(r"terms\.repa\.projectors\.0\.(weight|bias)", key):
            raise CheckpointError(f"objective key {key!r} has no place in the {kind} format")
        sd[f"repa_projector.{key.rsplit('.', 1)[1]}"] = value
    return sd
