"""The trainable state of a run (network, objective, EMA, optimiser, schedule, generator) and one optimiser step
over a global batch. Shared by the training loop and the throughput benchmark, so both measure the same step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..objectives import ModelWithObjective, Objective, TrainBatch
from ..sample.generate import autocast_for
from .distributed import DistInfo
from .ema import EMA
from .optim import build_optimizer, build_scheduler


class TrainState:
    def __init__(self, cfg: Config, dist: DistInfo, model: nn.Module, objective: Objective):
        t = cfg.train
        if t.batch_size % (dist.world * t.grad_accum):
            raise ValueError(
                f"train.batch_size={t.batch_size} must be divisible by processes x grad_accum "
                f"= {dist.world} x {t.grad_accum}"
            )
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.model, self.objective = model, objective
        self.module = ModelWithObjective(model, objective)
        self.ema = EMA(model, t.ema_decays, warmup=t.ema_warmup)
        self.optimizer = build_optimizer(self.module, t, self.device)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)  # same on every rank (see FlowDraw)
        self.micro = t.batch_size // (dist.world * t.grad_accum)  # per-process micro-batch
        self.step = 0
        self.ddp: nn.Module = self.module
        self.forward: Callable = self.module

    def distribute(self) -> None:
        """Wrap for DDP (after any checkpoint is loaded: DDP broadcasts rank 0's weights) and compile."""
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.module, device_ids=ids)
        self.forward = torch.compile(self.ddp) if self.cfg.train.compile else self.ddp

    def run_step(self, next_batch: Callable[[int], TrainBatch]) -> dict[str, Tensor]:
        """One optimiser step over ``grad_accum`` micro-batches, ``next_batch(micro_step)`` giving each one;
        returns device scalars (no host sync)."""
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, Tensor] = {}
        for a in range(t.grad_accum):
            batch = next_batch(a)
            if a == 0:  # randomness for the whole global batch, sliced per rank and micro-step
                draw = self.objective.draw(batch, t.batch_size, self.generator)
            chunk = draw.chunk(a * self.dist.world + self.dist.rank, self.micro)
            sync = a == t.grad_accum - 1 or not self.dist.enabled
            # DDP all-reduces gradients only on the last micro-step
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast_for(self.device, t.precision):
                    out = self.forward(batch, chunk)
                (out.total / t.grad_accum).backward()
            for k, v in {"loss": out.total, **out.terms}.items():
                logged[k] = logged.get(k, 0.0) + v.detach().float() / t.grad_accum
        params = [p for p in self.module.parameters() if p.requires_grad]
        logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, updates_done=self.step)
        self.step += 1
        return logged
