"""Official LightningDiT checkpoints (hustvl/LightningDiT) <-> repflow runs.

Their ``train.py`` saves ``{"model", "ema", "opt", "config"}``; the release holds the same keys. The network
is the recipe's (``use_swiglu``, ``use_rope``, ``use_rmsnorm``; ``use_qknorm`` read from the weights); the
ablation switches ``wo_shift`` and the GELU / LayerNorm blocks are refused with one line. Their time runs
from noise (t = 0) to data (t = 1): the network's time input is flipped at the edge (``model.time_offset: 1``,
``model.time_scale: -1``) and its velocity's sign is folded into ``out_x`` (exact). The frozen ``pos_embed``
and the RoPE tables ``feat_rope.freqs_cos / freqs_sin`` (persistent buffers there) are recomputed by repflow
and kept in ``official.safetensors`` for an exact export.

Their sampler, as the converted run's ``sample`` section: Euler, 250 steps, the time shift 0.3 of their time
(``t <- s t / (1 + (s - 1) t)``, t = 1 data) which is ``shift = 1 / 0.3`` here, guidance only where their
``t >= cfg_interval_start`` (0.125: ``sample.cfg_interval=[0, 0.875]``, decided per step) and only in the latent
channels 0-2 (``sample.cfg_channels=3``, the DiT leftover their ``forward_with_cfg`` keeps). The released
models use VA-VAE latents (32 channels, per-channel normalised), which repflow has no codec for: convert with
``codec.path`` set to a diffusers copy of a VAE whose latents the model was trained on.
"""

from __future__ import annotations

from torch import Tensor

from ..config import Config, load_config
from ..errors import CheckpointError
from ..models.layers import rope_2d, sincos_pos_embed_2d
from ..models.lightningdit import LIGHTNING_SIZES
from .official_jit import ROPE_BLOCK

KIND = "official-lightningdit"
KINDS = (KIND,)
_RENAME = {  # official -> repflow (model network)
    "x_embedder.proj.weight": "x_embedder.weight",
    "x_embedder.proj.bias": "x_embedder.bias",
    "y_embedder.embedding_table.weight": "y_embedder.table.weight",
    "final_layer.norm_final.weight": "final_norm.norm.weight",
    "final_layer.adaLN_modulation.1.weight": "final_norm.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias": "final_norm.adaLN_modulation.1.bias",
    **{f"t_embedder.mlp.{i}.{w}": f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_BACK = {v: k for k, v in _RENAME.items()}
_HEAD = ("final_layer.linear.weight", "final_layer.linear.bias")  # the velocity head: its sign flips
_TABLES = ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin")  # recomputed by repflow


def infer_config(kind: str, sd: dict[str, Tensor], overrides: list[str] | None = None) -> Config:
    """The resolved repflow config of an official state dict (architecture from the shapes)."""
    if "x_embedder.proj.weight" not in sd or "blocks.0.adaLN_modulation.1.weight" not in sd:
        raise CheckpointError(f"not an official LightningDiT state dict ({sorted(sd)[:4]} ...)")
    hidden, channels, patch, _ = sd["x_embedder.proj.weight"].shape
    if "blocks.0.mlp.w12.weight" not in sd or "blocks.0.norm1.weight" not in sd or "feat_rope.freqs_cos" not in sd:
        raise CheckpointError("this LightningDiT was trained without use_swiglu / use_rmsnorm / use_rope; repflow "
                              "has the recipe's block only")  # fmt: skip
    if sd["blocks.0.adaLN_modulation.1.weight"].shape[0] != 6 * hidden:
        raise CheckpointError("this LightningDiT was trained with wo_shift (no adaLN shift); repflow has the "
                              "recipe's block (wo_shift: false) only")  # fmt: skip
    depth = 1 + max(int(m.group(1)) for k in sd if (m := ROPE_BLOCK.match(k)))
    heads = hidden // sd["feat_rope.freqs_cos"].shape[1]  # the tables are (tokens, head_dim)
    grid = round(sd["pos_embed"].shape[1] ** 0.5)
    size = next((n for n, (d, h, _) in LIGHTNING_SIZES.items() if (d, h) == (depth, hidden)), "XL")
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    items = [
        f"model.arch=LightningDiT-{size}/{patch}", f"model.depth={depth}", f"model.hidden_size={hidden}",
        f"model.num_heads={heads}", f"model.patch_size={patch}", f"model.input_size={grid * patch}",
        f"model.in_channels={channels}", f"model.num_classes={rows - 1}", "model.class_dropout=0.1",
        f"model.qk_norm={'rmsnorm' if 'blocks.0.attn.q_norm.weight' in sd else 'none'}",
        "model.time_offset=1.0", "model.time_scale=-1.0",
    ]  # fmt: skip
    # the authors' recipe around it (their sampler and guidance rule included): their releases live in VA-VAE's 32
    # channels (codec.path: the directory `repflow codec import` made), an SD-VAE model in 4
    preset = "lightningdit-xl1-vavae-in256" if channels == 32 else "lightningdit-b2-in256"
    return load_config(preset, items + list(overrides or []))


def from_official(kind: str, sd: dict[str, Tensor], cfg: Config) -> tuple[dict, dict, dict]:
    """(model tensors, objective tensors (none), official-only tensors) in repflow's names."""
    model, extra = {}, {}
    c, p = cfg.model.in_channels, cfg.model.patch_size
    for key, value in sd.items():
        if key in _TABLES:
            extra[key] = value
        elif key in _HEAD:
            if value.shape[0] != p * p * c:
                raise CheckpointError(f"{key} predicts {value.shape[0]} values per token, not {p * p * c}: "
                                      "learn_sigma checkpoints are not supported")  # fmt: skip
            model["out_x." + key.rsplit(".", 1)[1]] = -value  # their velocity points from noise to data
        elif ROPE_BLOCK.match(key):
            model[key] = value
        elif key in _RENAME:
            model[_RENAME[key]] = value
        else:
            raise CheckpointError(f"official LightningDiT key {key!r} has no place in repflow: is this the right "
                                  "format?")  # fmt: skip
    return model, {}, extra


def to_official(kind: str, model: dict[str, Tensor], objective: dict[str, Tensor], extra: dict[str, Tensor],
                cfg: Config) -> dict[str, Tensor]:  # fmt: skip
    """The inverse of :func:`from_official` (the tables recomputed when the run has none)."""
    m = cfg.model
    grid = m.input_size // m.patch_size
    cos, sin = rope_2d(m.hidden_size // m.num_heads, grid)
    computed = {"pos_embed": sincos_pos_embed_2d(m.hidden_size, grid, grid)[None], "feat_rope.freqs_cos": cos,
                "feat_rope.freqs_sin": sin}  # fmt: skip
    sd = {k: extra.get(k, computed[k]) for k in _TABLES}
    for key, value in model.items():
        if key.startswith("out_x."):
            sd["final_layer.linear." + key.rsplit(".", 1)[1]] = -value
        elif ROPE_BLOCK.match(key):
            sd[key] = value
        elif key in _BACK:
            sd[_BACK[key]] = value
        else:
            raise CheckpointError(f"repflow key {key!r} has no place in the official LightningDiT format")
    return sd
