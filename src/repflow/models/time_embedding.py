"""Time embedders: the time t, MeanFlow's interval h = t - r and iMF's guidance conditions, each a vector summed
into the network's condition."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TimeEmbedding(nn.Module):
    """Base of the time embedders: ``mlp(features(t))``, plus, in a network with a second time input (MeanFlow:
    the interval ``h = t - r``, ``model.interval_input``), ``interval(h)``: an embedder of the same kind, summed
    with the first as the official MeanFlow DiT does (``c = t_emb + h_emb + y_emb``). Without ``h`` the interval
    is 0: the network's instantaneous velocity. A network conditioned on its guidance (iMF,
    ``model.guidance_input``) adds ``guidance(w, t_lo, t_hi)`` (:class:`GuidanceEmbedder`) the same way."""

    mlp: nn.Sequential
    interval: nn.Module | None
    guidance: GuidanceEmbedder | None

    def features(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, t: Tensor, h: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        emb = self.mlp(self.features(t).to(self.mlp[0].weight.dtype))
        if self.interval is not None:
            emb = emb + self.interval(torch.zeros_like(t) if h is None else h)
        elif h is not None:
            raise ValueError("this network has no second time input (built without model.interval_input)")
        if self.guidance is not None:
            return emb + self.guidance(GuidanceEmbedder.unguided(t) if guidance is None else guidance)
        if guidance is not None:
            raise ValueError("this network takes no guidance input (built without model.guidance_input)")
        return emb

    def initialize(self, std: float = 0.02) -> None:
        """N(0, std) MLP weights (DiT), the interval embedder's too; the guidance embedder's own scheme."""
        for module in (self, self.interval) if self.interval is not None else (self,):
            nn.init.normal_(module.mlp[0].weight, std=std)
            nn.init.normal_(module.mlp[2].weight, std=std)
        if self.guidance is not None:
            self.guidance.initialize(std)


class TimestepEmbedder(TimeEmbedding):
    """Scalar t -> 256-d sinusoid -> MLP (DiT). ``max_period``: DiT's 10000; DDT's 10 (its t lies in [0, 1])."""

    def __init__(self, hidden: int, freq_dim: int = 256, time_scale: float = 1.0, time_offset: float = 0.0,
                 max_period: float = 10000.0, interval: bool = False, guidance: bool = False):  # fmt: skip
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.time_scale, self.time_offset = time_scale, time_offset
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # the interval is a duration: no flip of the time convention applies to it
        self.interval = TimestepEmbedder(hidden, freq_dim) if interval else None
        self.guidance = GuidanceEmbedder(hidden) if guidance else None

    @staticmethod
    def sinusoid(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        dtype = torch.promote_types(t.dtype, torch.float32)  # float32 at least; float64 times stay float64 (checks)
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
        args = t.to(dtype)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def features(self, t: Tensor) -> Tensor:
        t = t * self.time_scale if self.time_offset == 0 else self.time_offset + self.time_scale * t
        return self.sinusoid(t, self.freq_dim, self.max_period)


class GuidanceEmbedder(nn.Module):
    """iMF's guidance conditions (Lyy-iiis/imeanflow ``imfDiT._build_sequence``): the scale w (embedded as
    ``1 - 1/w``, which lies in [0, 1) and is 0 without guidance) and the interval ``[t_lo, t_hi]`` where it
    applies, each by its own sinusoid + MLP embedder, summed. ``guidance`` is (B, 3): ``(w, t_lo, t_hi)``.

    iMF prepends these as in-context tokens; here they join the condition vector as the interval does, so
    every family takes them. The output layers start at zero (``initialize``; iMF's tokens start random), so a
    network built with them computes at initialisation what it computes without them: ``--init-from`` a
    MeanFlow run starts from that run's function."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.scale, self.start, self.end = (TimestepEmbedder(hidden, freq_dim) for _ in range(3))
        self.initialize()  # a family that initialises its time embedder calls this again after its own scheme

    @staticmethod
    def unguided(t: Tensor) -> Tensor:
        """``(1, 0, 1)`` per sample: w = 1 (no guidance) on the whole interval, iMF's velocity-call defaults."""
        return torch.stack([torch.ones_like(t), torch.zeros_like(t), torch.ones_like(t)], dim=-1)

    def forward(self, guidance: Tensor) -> Tensor:
        w, lo, hi = guidance.unbind(-1)  # (B,) each
        return self.scale(1 - 1 / w) + self.start(lo) + self.end(hi)  # (B, D)

    def initialize(self, std: float = 0.02) -> None:
        for embedder in (self.scale, self.start, self.end):
            nn.init.normal_(embedder.mlp[0].weight, std=std)
            nn.init.zeros_(embedder.mlp[2].weight)  # zero output: no change to the network at initialisation
            nn.init.zeros_(embedder.mlp[2].bias)


class FourierTimeEmbedder(TimeEmbedding):
    """RAE's Gaussian-Fourier time embedding: t -> [sin 2 pi t W, cos 2 pi t W] (``frequencies`` W ~ N(0, 1)) ->
    Linear -> SiLU -> Linear. W is a parameter: the official training unfreezes it (its
    ``model.requires_grad_(True)``), so released checkpoints carry trained frequencies."""

    def __init__(self, hidden: int, frequencies: int = 256, time_scale: float = 1.0, time_offset: float = 0.0,
                 interval: bool = False, guidance: bool = False):  # fmt: skip
        super().__init__()
        self.time_scale, self.time_offset = time_scale, time_offset
        self.W = nn.Parameter(torch.randn(frequencies))
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.interval = FourierTimeEmbedder(hidden, frequencies) if interval else None
        self.guidance = GuidanceEmbedder(hidden) if guidance else None

    def features(self, t: Tensor) -> Tensor:
        t = t if (self.time_scale, self.time_offset) == (1.0, 0.0) else self.time_offset + self.time_scale * t
        args = t[:, None] * self.W[None, :] * 2 * math.pi  # the official order of products (bitwise in fp32)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
