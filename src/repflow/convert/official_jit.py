"""Official JiT checkpoints (LTH14/JiT) <-> repflow runs.

The official training saves ``{"model", "model_ema1", "model_ema2", ...}`` (the release: the three weights
only), every key prefixed ``net.``; they become repflow's raw weights and the EMA copies 0.9999 and 0.9996.
JiT's time runs the other way (t = 1 is clean): the network's time input is flipped at the edge
(``model.time_offset: 1``, ``model.time_scale: -1``); it predicts x, whose meaning does not depend on the
direction of time. Its guidance interval is decided as the official sampler decides it (``sample.cfg_rule:
evaluation_strict``, from the ``jit-b16-in256`` recipe the converted run inherits). The frozen sin-cos
``pos_embed`` (a parameter there) is kept in ``official.safetensors`` for an exact export.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..models.jit import JIT_SIZES

KIND = "official-jit"
KINDS = (KIND,)
EMAS = {"model_ema1": 0.9999, "model_ema2": 0.9996}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1\.weight|norm2\.weight|attn\.qkv\.(weight|bias)|attn\.q_norm\.weight|"
                    r"attn\.k_norm\.weight|attn\.proj\.(weight|bias)|mlp\.w12\.(weight|bias)|mlp\.w3\.(weight|bias)|"
                    r"adaLN_modulation\.1\.(weight|bias))$")  # fmt: skip
_RENAME = {
    "in_context_posemb": "in_context_posemb",
    "y_embedder.embedding_table.weight": "y_embedder.table.weight",
    "x_embedder.proj1.weight": "x_embedder.proj1.weight",
    "x_embedder.proj2.weight": "x_embedder.proj2.weight",
    "x_embedder.proj2.bias": "x_embedder.proj2.bias",
    "final_layer.norm_final.weight": "norm_final.weight",
    "final_layer.adaLN_modulation.1.weight": "final_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias": "final_modulation.1.bias",
    "final_layer.linear.weight": "out_x.weight",
    "final_layer.linear.bias": "out_x.bias",
    **{f"t_embedder.mlp.{i}.{w}": f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_BACK = {v: k for k, v in _RENAME.items()}


def strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the ``net.`` of the official ``Denoiser`` wrapper."""
    return {k[4:] if k.startswith("net.") else k: v for k, v in sd.items()}


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    sd = strip(sd)
    if "x_embedder.proj1.weight" not in sd:
        raise CheckpointError(f"not an official JiT state dict: no net.x_embedder.proj1.weight ({sorted(sd)[:3]} ...)")
    bottleneck, channels, patch, _ = sd["x_embedder.proj1.weight"].shape
    hidden = sd["x_embedder.proj2.weight"].shape[0]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    size = next((n for n, s in JIT_SIZES.items() if (s[0], s[1]) == (depth, hidden)), "")
    heads = JIT_SIZES[size][2] if size else max(1, hidden // 64)
    start = JIT_SIZES[size][4] if size else depth // 3
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5)) if "pos_embed" in sd else 16
    tokens = sd["in_context_posemb"].shape[1] if "in_context_posemb" in sd else 0
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    items = [
        "model.family=jit", f"model.arch=JiT-{size or 'B'}/{patch}", f"model.depth={depth}",
        f"model.hidden_size={hidden}", f"model.num_heads={heads}", f"model.patch_size={patch}",
        f"model.bottleneck={bottleneck}", f"model.context_tokens={tokens}", f"model.context_start={start}",
        f"model.input_size={grid * patch}", f"model.in_channels={channels}", f"model.num_classes={rows - 1}",
        "model.time_offset=1.0", "model.time_scale=-1.0", f"data.resolution={grid * patch}",
    ]  # fmt: skip
    # the official recipe around it, JiT's guidance rule included (sample.cfg_rule=evaluation_strict)
    return load_config("jit-b16-in256", items + list(overrides or []))


def from_official(kind: str, sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict]:
    """(model tensors, objective tensors (none), official-only tensors) in repflow's names."""
    model, extra = {}, {}
    for key, value in strip(sd).items():
        if key == "pos_embed":
            extra["pos_embed"] = value
        elif _BLOCK.match(key):
            model[key] = value
        elif key in _RENAME:
            model[_RENAME[key]] = value
        else:
            raise CheckpointError(f"official JiT key 'net.{key}' has no place in repflow: is this the right format?")
    return model, {}, extra


def to_official(kind: str, model: dict[str, Tensor], objective: dict[str, Tensor], extra: dict[str, Tensor],
                cfg: Config) -> dict[str, Tensor]:  # fmt: skip
    from ..models.layers import sincos_pos_embed_2d

    grid = cfg.model.input_size // cfg.model.patch_size
    sd = {"net.pos_embed": extra.get("pos_embed", sincos_pos_embed_2d(cfg.model.hidden_size, grid, grid)[None])}
    for key, value in model.items():
        if _BLOCK.match(key):
            sd[f"net.{key}"] = value
        elif key in _BACK:
            sd[f"net.{_BACK[key]}"] = value
        else:
            raise CheckpointError(f"repflow key {key!r} has no place in the official JiT format")
    return sd
