"""The trainable state of a run (method, EMA copies, one optimiser per phase, the shared generator) and one
training step over a global batch. Shared by the training loop and the throughput benchmark, so both measure
the same step.

Parallelism under torchrun: DDP (default) or FSDP2 (``train.parallel=fsdp``: every block, then the whole
method, fully sharded; EMA copies are sharded alike). Checkpoints hold full (unsharded) tensors and optimiser
states keyed by parameter name, so a run saved with any number of processes and either parallelism resumes
with any other. Learning rates are a pure function of the step and the *current* config, so a changed
``train.lr`` or schedule applies from the step a run resumes at.
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

from ..config import Config, ConfigError
from ..methods.base import Method, Phase, TrainBatch
from ..runtime.checkpoint import ema_file
from ..runtime.distributed import DistInfo
from ..runtime.precision import autocast_for
from .ema import EMA
from .optim import build_optimizer, lr_factor, muon_parameters, parts

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
    def __init__(self, cfg: Config, dist: DistInfo, method: Method):
        t = cfg.train
        if t.batch_size % (dist.world * t.grad_accum):
            raise ConfigError(
                f"train.batch_size={t.batch_size} must be divisible by processes x grad_accum "
                f"= {dist.world} x {t.grad_accum}"
            )
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.method = method
        self.phases: list[Phase] = method.phases()
        self.fsdp = t.parallel == "fsdp" and dist.enabled
        if self.fsdp:  # before the optimisers and the EMA: both must see the sharded parameters
            if len(self.phases) > 1:
                raise ConfigError(f"train.parallel=fsdp trains one-phase methods; {cfg.method.kind} has "
                                  f"{len(self.phases)} phases: use train.parallel=ddp")  # fmt: skip
            shard = _fully_shard()
            for net in method.networks().values():
                for block in getattr(net, "blocks", []):
                    shard(block)
            shard(method)
        nets = method.networks()
        self.ema = {n: EMA(nets[n], t.ema_decays, warmup=t.ema_warmup) for n in method.ema_networks}
        self.optimizers = {p.name: self._build_optimizer(p) for p in self.phases}
        # each group's base lr (Muon's and AdamW's may differ: train.adamw_lr), multiplied by the schedule
        self.base_lrs = {n: [g["lr"] for g in opt.param_groups] for n, opt in self.optimizers.items()}
        self.lr_factors = {p.name: lr_factor(p.optim) for p in self.phases}
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)  # same on every rank (see Draw)
        self.micro = t.batch_size // (dist.world * t.grad_accum)  # per-process micro-batch
        self.step = 0
        self.images_seen = 0  # the data position: resumes continue here whatever the batch size
        self.ddp: nn.Module = method
        self.forward: Callable = method
        # called with a stage's name when it ends ("data", "forward", "backward", "optimiser", "ema"): the
        # benchmark's time split records device events there; training leaves it a no-op
        self.stage_done: Callable[[str], None] = lambda stage: None

    @property
    def model(self) -> nn.Module:
        return self.method.networks()["model"]

    def phase_parameters(self, phase: Phase) -> list[nn.Parameter]:
        nets = self.method.networks()
        unknown = [n for n in phase.networks if n not in nets]
        if unknown:
            raise ValueError(f"phase {phase.name!r} names unknown networks {unknown}; the method has {list(nets)}")
        return [p for n in phase.networks for p in nets[n].parameters() if p.requires_grad]

    def _build_optimizer(self, phase: Phase):
        nets = self.method.networks()
        tables = [m.weight for n in phase.networks for m in nets[n].modules() if isinstance(m, nn.Embedding)]
        return build_optimizer(self.phase_parameters(phase), phase.optim, self.device, tables)

    def _parameter_names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.method.named_parameters()}  # the names DCP keys optimiser states by

    def _load_optimizer(self, optimizer, saved: dict, was_muon: set[str], rename: Callable[[str], str]) -> None:
        """Restore a phase's optimiser from its saved name-keyed state, laid out as ``optimizer`` is: the groups keep
        this config's hyperparameters (and this torch's keys: Muon's differ between versions); a parameter gets its
        saved state if the same kind of optimiser (Muon or AdamW) wrote it. One without (its phase had not started:
        a late GAN critic) or of another kind (a changed train.optimizer or train.muon_embeddings) starts afresh."""
        names = self._parameter_names()
        state = {rename(k): v for k, v in saved["state"].items()}
        muon_now = {id(p) for p in muon_parameters(optimizer)}
        groups, kept, fresh = [], {}, []
        for group in optimizer.param_groups:
            fqns = [names[id(p)] for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": fqns})
            for p, fqn in zip(group["params"], fqns, strict=True):
                if fqn in state and (fqn in was_muon) == (id(p) in muon_now):
                    kept[fqn] = state[fqn]
                else:
                    fresh.append(p)
        if kept:
            set_optimizer_state_dict(self.method, parts(optimizer), {"state": kept, "param_groups": groups},
                                     options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip
        for part in parts(optimizer):  # DCP gave the left-out ones a zero step's state (AdamW: step 1), not a fresh one
            for p in fresh:
                part.state.pop(p, None)

    def lr(self, phase: Phase, step: int | None = None) -> float:
        return phase.optim.lr * self.lr_factors[phase.name](self.step if step is None else step)

    def distribute(self) -> None:
        """Wrap for DDP (after any checkpoint is loaded: DDP broadcasts rank 0's weights) and compile."""
        if self.dist.enabled and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # several phases: each step's loss leaves the other phases' networks unused
            self.ddp = DDP(self.method, device_ids=ids, find_unused_parameters=len(self.phases) > 1)
        self.forward = torch.compile(self.ddp) if self.cfg.train.compile else self.ddp

    def _no_sync(self, sync: bool):
        """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) on all but the last micro-step."""
        if sync:
            return contextlib.nullcontext()
        if self.fsdp:
            self.method.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def run_step(self, next_batch: Callable[[int], TrainBatch]) -> dict[str, Tensor]:
        """One step: every active phase takes one optimiser step over ``grad_accum`` micro-batches
        (``next_batch(micro_step)`` gives each, fetched once and shared by the phases); returns device scalars
        (no host sync)."""
        t = self.cfg.train
        active = [p for p in self.phases if self.step >= p.start_step]
        batches: list[TrainBatch] = []
        logged: dict[str, Tensor] = {}
        draw = None
        for i, phase in enumerate(active):
            self.method.zero_grad(set_to_none=True)
            tag = "" if phase.name == self.phases[0].name else f"_{phase.name}"
            for a in range(t.grad_accum):
                if i == 0:
                    batches.append(next_batch(a))
                    self.stage_done("data")
                batch = batches[a]
                if draw is None:  # randomness for the whole global batch, sliced per rank and micro-step
                    draw = self.method.draw(batch, t.batch_size, self.generator)
                chunk = draw.chunk(a * self.dist.world + self.dist.rank, self.micro)
                sync = a == t.grad_accum - 1 or not self.dist.enabled
                if self.fsdp and sync:
                    self.method.set_requires_gradient_sync(True)
                with self._no_sync(sync):
                    with autocast_for(self.device, t.precision):
                        out = self.forward(batch, chunk, phase.name, self.step)
                    self.stage_done("forward")
                    (out.total / t.grad_accum).backward()
                    self.stage_done("backward")
                for k, v in {"loss": out.total, **out.terms}.items():
                    key = f"{k}{tag}" if k == "loss" or tag else k
                    logged[key] = logged.get(key, 0.0) + v.detach().float() / t.grad_accum
            params = self.phase_parameters(phase)
            clip = phase.optim.grad_clip
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            logged[f"grad_norm{tag}"] = full_tensor(norm)
            optimizer = self.optimizers[phase.name]
            factor = self.lr_factors[phase.name](self.step)
            for group, base in zip(optimizer.param_groups, self.base_lrs[phase.name], strict=True):
                group["lr"] = base * factor
            optimizer.step()
            self.stage_done("optimiser")
        nets = self.method.networks()
        for name, ema in self.ema.items():
            ema.update(nets[name], updates_done=self.step)
        self.step += 1
        self.images_seen += t.batch_size
        self.method.after_step(self.step)
        self.stage_done("ema")  # with the method's after_step (EMA target encoders)
        return logged

    # -- checkpoints: full tensors, whatever the parallelism ---------------------------------------------------
    def ema_weights(self, network: str, decay: float) -> dict[str, Tensor]:
        """Full EMA weights (every rank must call this under FSDP)."""
        return {k: full_tensor(v).cpu() for k, v in self.ema[network].state_dict(decay).items()}

    def preview_weights(self) -> dict[str, dict[str, Tensor]]:
        """Every network's full weights, EMA (first decay) where it has one (collective under FSDP)."""
        full = self._full_state()
        weights = {n: self._network_part(full, n) for n in self.method.network_names}
        for n, ema in self.ema.items():
            if ema.decays:
                weights[n] = self.ema_weights(n, ema.decays[0])
        return weights

    def _full_state(self) -> dict[str, Tensor]:
        return get_model_state_dict(self.method, options=FULL) if self.fsdp else self.method.state_dict()

    @staticmethod
    def _network_part(full: dict[str, Tensor], name: str) -> dict[str, Tensor]:
        return {k[len(name) + 1 :]: v for k, v in full.items() if k.startswith(f"{name}.")}

    def payload(self) -> tuple[dict[str, dict[str, Tensor]], dict]:
        """(weights by file name, training state); collective under FSDP, meaningful on rank 0."""
        full = self._full_state()
        weights = {n: self._network_part(full, n) for n in self.method.network_names}
        for n, ema in self.ema.items():
            weights.update({ema_file(n, d): self.ema_weights(n, d) for d in ema.decays})
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        names = self._parameter_names()
        optimizers = {  # name-keyed: Muon's and AdamW's states in one dict, found again by parameter name
            name: get_optimizer_state_dict(self.method, parts(opt), options=FULL)
            for name, opt in self.optimizers.items()
        }
        state = {
            "step": self.step,
            "images_seen": self.images_seen,
            "optimizer": optimizers,
            "muon_parameters": {n: [names[id(p)] for p in muon_parameters(o)] for n, o in self.optimizers.items()},
            "rng": rng,
            "world_size": self.dist.world,
            "parallel": "fsdp" if self.fsdp else "ddp",
        }
        return {k: v for k, v in weights.items() if v}, state

    def load(self, weights: Callable[[str], dict[str, Tensor]], names: list[str], state: dict,
             rename: Callable[[str], str] = lambda k: k) -> None:  # fmt: skip
        """Restore everything ``payload`` saved (every rank reads the full tensors and keeps its shard).
        ``rename`` maps parameter names written by an older repflow to today's."""
        full: dict[str, Tensor] = {}
        for n in self.method.network_names:
            if n in names:
                full.update({rename(f"{n}.{k}"): v for k, v in weights(n).items()})
        if self.fsdp:
            set_model_state_dict(self.method, full, options=StateDictOptions(full_state_dict=True))
        else:
            self.method.load_state_dict(full)
        for n, ema in self.ema.items():  # a new EMA decay starts from the raw weights
            for d in ema.decays:
                file = ema_file(n, d) if ema_file(n, d) in names else n
                ema.load_state_dict(d, {rename(f"{n}.{k}")[len(n) + 1 :]: v for k, v in weights(file).items()})
        saved = state["optimizer"]
        if "param_groups" in saved:  # repflow <= 0.1: one optimiser
            saved = {self.phases[0].name: saved}
        was_muon = state.get("muon_parameters", {})  # absent before train.optimizer existed: all AdamW
        for name, optimizer in self.optimizers.items():
            if name in saved:
                self._load_optimizer(optimizer, saved[name], {rename(n) for n in was_muon.get(name, [])}, rename)
        rng = state.get("rng", {})  # empty in a checkpoint imported from another codebase: fresh generators
        if "generator" in rng:
            self.generator.set_state(rng["generator"].to(self.generator.get_state().device))
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.images_seen = int(state.get("images_seen", self.step * self.cfg.train.batch_size))
