"""Optimisers of a phase (AdamW, or Muon for matrices + AdamW for the rest) and learning-rate schedules
(warmup from zero, a constant hold, then linear / cosine decay to ``lr_final``, kept after ``decay_end``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterator

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..runtime.precision import cpu_bf16_is_fast

Optimizer = torch.optim.Optimizer


class MuonAdamW:
    """``train.optimizer=muon``: ``torch.optim.Muon`` on the 2-D weight matrices and AdamW on everything else,
    stepped as one optimiser. Not a torch ``Optimizer`` itself: checkpoints save its ``parts`` together, keyed
    by parameter name, so each part's state goes back to the part that owns the parameter."""

    def __init__(self, *parts: Optimizer):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]  # the parts' own dicts: setting lr works

    def step(self) -> None:
        slow_bf16 = any(p.device.type == "cpu" for g in self.param_groups for p in g["params"])
        with _newton_schulz_in_fp32() if slow_bf16 and not cpu_bf16_is_fast() else contextlib.nullcontext():
            for part in self.parts:
                part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


@contextlib.contextmanager
def _newton_schulz_in_fp32() -> Iterator[None]:
    """torch's Muon runs its Newton-Schulz iteration in bf16, which on a CPU without AVX-512/AMX is ~400x slower
    than fp32 (a DiT^DH-T step took 12 s instead of 1 s here): there the same iteration runs in fp32 (closer to
    exact orthogonalisation, not further), through torch's own function (its only global, patched for the step)."""
    import torch.optim._muon as muon

    def fp32_version(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
        a, b, c = ns_coefficients  # torch's iteration line for line, in fp32 (fp64 stays fp64)
        x = grad if grad.dtype == torch.float64 else grad.float()
        wide = x.T if grad.size(0) > grad.size(1) else x
        wide = wide / wide.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = wide @ wide.T
            wide = torch.addmm(wide, torch.addmm(gram, gram, gram, beta=b, alpha=c), wide, beta=a)
        return wide.T if grad.size(0) > grad.size(1) else wide

    with _patched(muon, "_zeropower_via_newtonschulz", fp32_version):
        yield


@contextlib.contextmanager
def _patched(module, name: str, value) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def parts(optimizer: Optimizer | MuonAdamW) -> tuple[Optimizer, ...]:
    """The torch optimisers behind a phase's optimiser."""
    return optimizer.parts if isinstance(optimizer, MuonAdamW) else (optimizer,)


def muon_parameters(optimizer: Optimizer | MuonAdamW) -> list[nn.Parameter]:
    """The parameters Muon steps (none under AdamW)."""
    muon = [part for part in parts(optimizer) if not isinstance(part, torch.optim.AdamW)]  # parts: Muon or AdamW
    return [p for part in muon for g in part.param_groups for p in g["params"]]


def _adamw_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    # weight decay on matrices (and conv kernels) only, not on biases and norms
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def muon_split(
    params: list[nn.Parameter], tables: Collection[nn.Parameter], cfg: TrainConfig
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's parameters, AdamW's): every 2-D tensor goes to Muon, as RAEv2 splits (``p.ndim == 2``). That rule
    also gives Muon the ``nn.Embedding`` tables (``tables``: the label table); ``train.muon_embeddings=false``
    leaves them to AdamW, as Muon's authors and torch's documentation advise."""
    table_ids = {id(t) for t in tables}

    def to_muon(p: nn.Parameter) -> bool:
        return p.ndim == 2 and (cfg.muon_embeddings or id(p) not in table_ids)

    return [p for p in params if to_muon(p)], [p for p in params if not to_muon(p)]


def fused_adamw(device: torch.device) -> bool | None:
    """AdamW's fused kernel (one launch for all parameters, no per-step host read of the step count) on every
    device torch has it for (CUDA; the CPU since torch 2.4); elsewhere torch's default (foreach)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: CUDA has had the kernel since 2.0
        return device.type == "cuda" or None
    return device.type in _get_fused_kernels_supported_devices() or None


def build_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, device: torch.device, tables: Collection[nn.Parameter] = ()
) -> Optimizer | MuonAdamW:
    """A phase's optimiser. Every group's ``lr`` is its base learning rate (the schedule multiplies it)."""
    fused = fused_adamw(torch.device(device))
    if cfg.optimizer == "adamw":
        groups = _adamw_groups(params, cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, fused=fused)
    muon_class = getattr(torch.optim, "Muon", None)
    if muon_class is None:
        raise ConfigError(f"train.optimizer=muon needs torch.optim.Muon (torch >= 2.9); this is torch "
                          f"{torch.__version__}: upgrade torch or use train.optimizer=adamw")  # fmt: skip
    matrices, rest = muon_split(params, tables, cfg)
    found = []
    if matrices:
        # only arguments every torch.optim.Muon since 2.9 takes; torch's "match_rms_adamw" is RAEv2's "rms_norm"
        found.append(muon_class(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                                nesterov=cfg.muon_nesterov, ns_coefficients=cfg.muon_ns_coefficients,
                                ns_steps=cfg.muon_ns_steps, adjust_lr_fn=cfg.muon_adjust_lr))  # fmt: skip
    groups = [g for g in _adamw_groups(rest, cfg.weight_decay) if g["params"]]  # DCP allows one empty group
    if groups:
        lr = cfg.lr if cfg.adamw_lr < 0 else cfg.adamw_lr
        found.append(torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.adam_eps, fused=fused))
    return MuonAdamW(*found)


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of a group's base lr at a step (0-based: the step about to be taken, as the official LambdaLR
    is evaluated at its count of steps taken): linear warmup from zero over ``warmup_steps``, 1 for
    ``hold_steps``, then constant, or a linear / cosine decay to ``lr_final`` at ``decay_end`` (0: the last step),
    ``lr_final`` after it. The defaults (no hold, decay to the last step) give repflow 0.2's schedule."""
    final = cfg.lr_final / cfg.lr if cfg.lr > 0 else 0.0
    warmup = cfg.warmup_steps
    start = warmup + cfg.hold_steps  # the decay starts here
    end = cfg.decay_end or cfg.steps
    decay_steps = max(end - start, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant" or step < start:
            return 1.0
        if step >= end:  # exactly lr_final, as the official schedule (1 + (final - 1) * 1 may miss it by an ulp)
            return final
        progress = (step - start) / decay_steps
        if cfg.schedule == "linear":
            return 1.0 + (final - 1.0) * progress
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
