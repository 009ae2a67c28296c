"""The trainable state of a run (network, objective, EMA, optimiser, schedule, generator) and one optimiser step
over a global batch. Shared by the training loop and the throughput benchmark, so both measure the same step.

Parallelism under torchrun: DDP (default) or FSDP2 (``train.parallel=fsdp``: every block, then the whole
network + objective, fully sharded; EMA copies are sharded alike). Checkpoints hold full (unsharded) tensors
and an optimiser state keyed by parameter name, so a run saved with any number of processes and either
parallelism resumes with any other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..objectives import ModelWithObjective, Objective, TrainBatch
from ..sample.generate import autocast_for
from .distributed import DistInfo
from .ema import EMA, ema_name
from .optim import build_optimizer, build_scheduler

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4 / 2.5
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def full_tensor(t: Tensor) -> Tensor:
    """A DTensor shard gathered into the whole tensor (collective under FSDP); other tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
        self.fsdp = t.parallel == "fsdp" and dist.enabled
        if self.fsdp:  # before the optimiser and the EMA: both must see the sharded parameters
            shard = _fully_shard()
            for block in model.blocks:
                shard(block)
            shard(self.module)
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
        if self.dist.enabled and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.module, device_ids=ids)
        self.forward = torch.compile(self.ddp) if self.cfg.train.compile else self.ddp

    def _no_sync(self, sync: bool):
        """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) on all but the last micro-step."""
        if sync:
            return contextlib.nullcontext()
        if self.fsdp:
            self.module.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.ddp.no_sync()

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
            if self.fsdp and sync:
                self.module.set_requires_gradient_sync(True)
            with self._no_sync(sync):
                with autocast_for(self.device, t.precision):
                    out = self.forward(batch, chunk)
                (out.total / t.grad_accum).backward()
            for k, v in {"loss": out.total, **out.terms}.items():
                logged[k] = logged.get(k, 0.0) + v.detach().float() / t.grad_accum
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf)
        logged["grad_norm"] = full_tensor(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, updates_done=self.step)
        self.step += 1
        return logged

    # -- checkpoints: full tensors, whatever the parallelism ---------------------------------------------------
    def ema_weights(self, decay: float) -> dict[str, Tensor]:
        """Full EMA weights (every rank must call this under FSDP)."""
        return {k: full_tensor(v).cpu() for k, v in self.ema.state_dict(decay).items()}

    def payload(self) -> tuple[dict[str, dict[str, Tensor]], dict]:
        """(weights by file name, training state); collective under FSDP, meaningful on rank 0."""
        full = get_model_state_dict(self.module, options=FULL) if self.fsdp else self.module.state_dict()
        weights = {
            "model": {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")},
            "objective": {k[len("objective.") :]: v for k, v in full.items() if k.startswith("objective.")},
        }
        weights.update({ema_name(d): self.ema_weights(d) for d in self.ema.decays})
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "step": self.step,
            "images_seen": self.step * self.cfg.train.batch_size,
            "optimizer": get_optimizer_state_dict(self.module, self.optimizer, options=FULL),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "world_size": self.dist.world,
            "parallel": "fsdp" if self.fsdp else "ddp",
        }
        return {k: v for k, v in weights.items() if v}, state

    def load(self, weights: Callable[[str], dict[str, Tensor]], names: list[str], state: dict) -> None:
        """Restore everything ``payload`` saved (every rank reads the full tensors and keeps its shard)."""
        full = {f"model.{k}": v for k, v in weights("model").items()}
        if "objective" in names:
            full.update({f"objective.{k}": v for k, v in weights("objective").items()})
        if self.fsdp:
            set_model_state_dict(self.module, full, options=StateDictOptions(full_state_dict=True))
        else:
            self.module.load_state_dict(full)
        for d in self.ema.decays:  # a new EMA decay starts from the raw weights
            self.ema.load_state_dict(d, weights(ema_name(d) if ema_name(d) in names else "model"))
        set_optimizer_state_dict(
            self.module, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["generator"].to(self.generator.get_state().device))
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
