"""Transformer building blocks shared by every backbone (DiT/SiT, JiT variants, heads)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: an affine on normalised tokens, per sample (shift/scale (B, D)) or per token ((B, N, D), DiT^DH's
    head). x (B, N, D)."""
    if shift.dim() == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


def run_block(block: nn.Module, checkpointing: bool, *args: Tensor | None) -> Tensor:
    """``block(*args)``, recomputing its activations in the backward pass when ``checkpointing``."""
    return checkpoint(block, *args, use_reentrant=False) if checkpointing else block(*args)


def unpatchify(tokens: Tensor, grid_h: int, grid_w: int, patch: int, channels: int) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W): the patches put back in place, DiT's (h, w, p, q, c) token layout."""
    x = tokens.reshape(tokens.shape[0], grid_h, grid_w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], channels, grid_h * patch, grid_w * patch)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE/DiT layout), returned as (grid_h * grid_w, dim)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")

    def axis(n_dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(n_dim // 2, dtype=np.float64) / (n_dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    # DiT/MAE order: first half embeds the column index, second half the row index.
    emb = np.concatenate([axis(dim // 2, gw), axis(dim // 2, gh)], axis=1)
    return torch.from_numpy(emb).float()


def vector_stream_layers(streams: dict[str, int], dim: int) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """REG-style vector streams of a token network: (in, out) per stream, Linear + LayerNorm in (eps 1e-6 as the
    official ``wg_norm``), a Linear out (zero it in the family's initialisation). One token each, no position."""
    into = nn.ModuleDict({k: nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim, eps=1e-6)) for k, d in streams.items()})
    return into, nn.ModuleDict({k: nn.Linear(dim, d) for k, d in streams.items()})


class LabelEmbedder(nn.Module):
    """Class label -> vector. Row ``num_classes`` is the null label used for classifier-free guidance.

    Label dropout is done by the training objective (with its own generator) so that the network itself is
    deterministic and resume is exact.
    """

    def __init__(self, num_classes: int, hidden: int, null_class: bool):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + int(null_class), hidden)

    def forward(self, y: Tensor) -> Tensor:
        return self.table(y)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU). On CPU in bf16 the math
    backend is ~2x faster than the CPU flash kernel (measured: 11 vs 26 ms fwd+bwd at 64 x 3 heads x 65
    tokens), so it is chosen there."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def qk_norm_layer(kind: str | bool, head_dim: int) -> nn.Module:
    """QK-norm (stabilises large models and bf16 training): ``layernorm`` as timm's Attention(qk_norm=True) in
    the official REPA/REG code (eps 1e-5, with bias), ``rmsnorm`` as JiT (eps 1e-6, weight only), or none."""
    kind = {True: "rmsnorm", False: "none"}.get(kind, kind)
    if kind == "layernorm":
        return nn.LayerNorm(head_dim, eps=1e-5)
    if kind == "rmsnorm":
        return nn.RMSNorm(head_dim, eps=1e-6)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown qk_norm {kind!r}; choose from none, layernorm, rmsnorm")


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, qk_norm: str | bool = "none"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm, self.k_norm = qk_norm_layer(qk_norm, self.head_dim), qk_norm_layer(qk_norm, self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, as in ViT/DiT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning (shift/scale/gate for attn and MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: str | bool = "none"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalNorm(nn.Module):
    """The last adaLN: normalise (LayerNorm, or RMSNorm as LightningDiT) and modulate tokens; per-stream linear
    heads read its output. ``activated``: the condition arrives through SiLU already (DDT), no second one."""

    def __init__(self, dim: int, rms: bool = False, activated: bool = False):
        super().__init__()
        self.norm = RMSNorm(dim) if rms else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.Identity() if activated else nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)


class ViTBlock(nn.Module):
    """Plain pre-norm transformer block (no conditioning), for encoders."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# -- JiT / DiT^DH layers: RMSNorm, SwiGLU, 2-D RoPE (LightningDiT / EVA layouts, as the official code) --------


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    return int(int(dim * mlp_ratio) * 2 / 3)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (JiT, and the official LLaMA form); eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()  # float32 even for float64 inputs, as the official RMSNorm
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y).to(x.dtype)


def rope_2d(head_dim: int, grid: int, theta: float = 10000.0, front: int = 0, back: int = 0,
            layout: str = "eva") -> tuple[Tensor, Tensor]:  # fmt: skip
    """cos / sin tables (front + grid^2 + back, head_dim) of the official 2-D RoPE (EVA's
    ``VisionRotaryEmbeddingFast``, as JiT, RAE's DiT^DH and RAEv2 use it): the first half of the head's dims
    turn with the row, the second half with the column, each as interleaved pairs (2i, 2i+1) with frequencies
    theta^(-k / (head_dim / 4)); ``front`` / ``back`` unrotated rows (cos 1, sin 0) for tokens without a
    position (JiT's in-context tokens before the image, RAEv2's condition tokens after it). Computed in float32
    in the official order, so the tables equal theirs bit for bit, and always on the CPU (also under a
    ``torch.device`` context such as the meta device a parameter count uses): the module moves them with itself.

    ``layout="ddt"``: DDT's ``precompute_freqs_cis_2d``: the same frequencies, the pairs alternating column, row,
    column, ... and positions ``linspace(0, 16, grid)`` instead of 0, 1, ..., grid - 1."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    if layout not in ("eva", "ddt"):
        raise ValueError(f"unknown RoPE layout {layout!r}; choose from eva, ddt")
    half = head_dim // 2
    if layout == "ddt":
        freqs = 1.0 / theta ** (
            torch.arange(0, head_dim, 4, device="cpu")[: head_dim // 4].float() / head_dim
        )  # (hd/4,)
        pos = torch.linspace(0, 16.0, grid, device="cpu")
        row, col = (p.reshape(-1) for p in torch.meshgrid(pos, pos, indexing="ij"))
        pairs = torch.stack([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)  # (N, hd/4, 2)
        full = pairs.reshape(grid * grid, half).repeat_interleave(2, dim=1)  # (N, hd)
    else:
        freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32, device="cpu") / half)  # (hd/4,)
        angles = torch.outer(torch.arange(grid, dtype=torch.float32, device="cpu"), freqs).repeat_interleave(2, dim=1)
        rows = angles[:, None, :].expand(grid, grid, -1)  # token (h, w) -> the row's angle; (grid, grid, hd/2)
        cols = angles[None, :, :].expand(grid, grid, -1)
        full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    full = torch.cat([torch.zeros(front, head_dim, device="cpu"), full, torch.zeros(back, head_dim, device="cpu")])
    return full.cos(), full.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin). x (B, H, N, Dh), computed in at
    least float32 (bf16 inputs are rotated in float32, as the official code does under autocast)."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    pairs = y.unflatten(-1, (-1, 2))  # (B, H, N, Dh/2, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (y * cos + rotated * sin).to(x.dtype)


class RoPEAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, qk_norm: bool = True,
                 qkv_bias: bool = True):  # fmt: skip
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        norm = (lambda: RMSNorm(self.head_dim)) if qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)  # (B, H, N, Dh)
        if self.training and self.attn_drop > 0:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop)
        else:
            out = attention(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class SwiGLU(nn.Module):
    """w3(silu(gate) * value) with [gate | value] = w12(x): the first half is the gate (official layout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, bias: bool = True):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(gate) * value))


class RoPEBlock(nn.Module):
    """RMSNorm, RoPE attention, SwiGLU, with adaLN-Zero conditioning (JiT, the DiT^DH backbone and head): the
    condition is per sample (B, D) or per token (B, N, D). ``modulated=False``: a plain pre-norm block whose
    condition enters through in-context tokens instead (RAEv2's backbone). DDT's block: ``bias=False`` (no bias
    in qkv and SwiGLU) and ``activated=True`` (its condition arrives through SiLU already)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 qk_norm: bool = True, modulated: bool = True, bias: bool = True, activated: bool = False):  # fmt: skip
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = RoPEAttention(dim, heads, attn_drop, proj_drop, qk_norm, qkv_bias=bias)
        self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio), proj_drop, bias=bias)
        act = nn.Identity() if activated else nn.SiLU()
        self.adaLN_modulation = nn.Sequential(act, nn.Linear(dim, 6 * dim)) if modulated else None

    def forward(self, x: Tensor, c: Tensor | None, cos: Tensor, sin: Tensor) -> Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attn(self.norm1(x), cos, sin)
            return x + self.mlp(self.norm2(x))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        if c.dim() == 2:
            gate_a, gate_m = gate_a.unsqueeze(1), gate_m.unsqueeze(1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), cos, sin)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class AdaLNFinal(nn.Module):
    """The official DiT^DH output layer: RMSNorm, a shift/scale from ``silu(c)`` (per sample or per token), a
    linear to the patch values. ``c`` is the head's per-token condition, or the tokens themselves (RAEv2's
    internal-guidance output)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
