"""The training loop: the only one in repflow. Methods plug in through the objective, never here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..build import (
    attach_caches,
    build_encoders,
    build_network,
    build_objective,
    codec_for,
    needs_encoders,
    resolve_config,
    resolve_encoder_dims,
)
from ..config import Config, to_dict, to_yaml
from ..data import ResumableBatchSampler, build_dataset, build_loader
from ..objectives import TrainBatch
from ..sample.export import make_grid, save_grid
from .batching import BatchPreparer
from .checkpoint import (
    CheckpointError,
    clean_stale_temporaries,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import DistInfo, all_reduce_max, all_reduce_mean, barrier, cleanup, setup_distributed
from .logging import RunLogger, plot_loss
from .preview import ema_preview
from .state import TrainState


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_checkpoint: Path | None
    final_loss: float
    seconds: float
    preview: Path | None = None  # the EMA sample grid written at the end


def _architecture_key(cfg: Config) -> dict:
    """The parts of a config a checkpoint's weights depend on (everything else may change on resume): the
    architecture, its method heads and the latent space it learned (the VAE path may change: a local copy)."""
    key = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    key.update({f"codec.{k}": getattr(cfg.codec, k) for k in ("kind", "scale", "shift")})
    key.update({f"reg.{k}": getattr(cfg.reg, k) for k in ("enabled", "source", "dim")})
    key.update({f"repa.{k}": getattr(cfg.repa, k) for k in ("enabled", "depth", "projector_dim")})
    key["encoders"] = [e.name for e in cfg.encoders] if needs_encoders(cfg) else []
    return key


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, dist: DistInfo | None = None, resume: bool = True):
        self.dist = dist or setup_distributed()
        self.run_dir = Path(run_dir)
        self.device = self.dist.device
        if self.device.type == "cuda":  # TF32 matmuls for whatever runs in fp32 (bf16 autocast covers the rest)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)  # model initialisation; identical on every rank
        self.dataset = build_dataset(cfg.data, num_classes_hint=max(cfg.model.num_classes, 1))
        self.codec = codec_for(cfg, self.device)
        cfg = resolve_config(cfg, self.dataset, self.codec)
        self.encoders = build_encoders(cfg, self.device) if needs_encoders(cfg) else []
        encoder_dims = [e.embed_dim for e in self.encoders]
        cfg = resolve_encoder_dims(cfg, encoder_dims)
        t = cfg.train
        self.cfg = cfg
        self.dataset = attach_caches(cfg, self.dataset, self.codec, self.encoders)  # refuses foreign caches
        self.preparer = BatchPreparer(cfg, self.codec, self.device, self.encoders)
        model = build_network(cfg).to(self.device)
        model.grad_checkpointing = t.grad_checkpointing
        self.state = TrainState(cfg, self.dist, model, build_objective(cfg, model, encoder_dims).to(self.device))
        s = self.state
        self.model, self.objective, self.module, self.ema = s.model, s.objective, s.module, s.ema
        self.optimizer, self.scheduler, self.generator = s.optimizer, s.scheduler, s.generator
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.run_dir)
        barrier(self.dist)
        if resume and list_checkpoints(self.run_dir):
            self._resume(list_checkpoints(self.run_dir)[-1])
        elif self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        sampler = ResumableBatchSampler(
            len(self.dataset), t.batch_size, cfg.seed, cfg.data.hflip,
            rank=self.dist.rank, world=self.dist.world, accum=t.grad_accum, start_step=self.step,
        )  # fmt: skip
        self.loader = iter(build_loader(self.dataset, sampler, cfg.data.workers))
        self.state.distribute()
        self.bad_files: list[str] = []
        self.bad_files_seen: set[str] = set()  # each unreadable file is reported once, not once per epoch
        self.last_checkpoint: Path | None = None
        self.last_preview: Path | None = None

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _resume(self, ckpt_dir: Path) -> None:
        ckpt = load_checkpoint(ckpt_dir)
        if _architecture_key(ckpt.config) != _architecture_key(self.cfg):
            diff = [k for k, v in _architecture_key(self.cfg).items() if _architecture_key(ckpt.config).get(k) != v]
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: the config differs in {', '.join(diff)}; "
                "use a new --out directory or the checkpoint's config"
            )
        self.state.load(ckpt.weights, ckpt.weight_names(), ckpt.state())
        self.last_checkpoint = ckpt.path

    def save(self) -> Path | None:
        weights, state = self.state.payload()  # every rank: gathers shards under FSDP
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, weights, state, self.cfg, keep=self.cfg.train.keep_ckpts)
            self.last_checkpoint = path
        barrier(self.dist)
        return path

    # -- one step -------------------------------------------------------------------------------------------
    def prepare(self, raw, chunk: int) -> TrainBatch:
        if raw.bad_files:
            self.bad_files.extend(raw.bad_files)
        return self.preparer(raw, chunk)

    def train_step(self) -> dict[str, torch.Tensor]:
        return self.state.run_step(self.next_batch)

    def next_batch(self, micro_step: int) -> TrainBatch:
        if micro_step == 0:  # the codec's posterior noise for the whole global batch, before the flow's draw
            self.preparer.begin_step(self.generator, self.cfg.train.batch_size)
        return self.prepare(next(self.loader), micro_step * self.dist.world + self.dist.rank)

    @property
    def step(self) -> int:
        return self.state.step

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> TrainResult:
        t = self.cfg.train
        end = min(t.steps, stop_at) if stop_at is not None else t.steps
        logger = RunLogger(self.run_dir, t.steps, self.step, enabled=self.dist.is_main)
        sums: dict[str, torch.Tensor] = {}
        count, bad_step = 0, torch.full((), -1, dtype=torch.long, device=self.device)
        last_loss, start_step = float("nan"), self.step
        t0 = time.perf_counter()
        try:
            while self.step < end:
                logged = self.train_step()
                finite = torch.isfinite(logged["loss"]) & torch.isfinite(logged["grad_norm"])
                # remember the first bad step without a host sync (checked at log/checkpoint time)
                bad_step = torch.where((bad_step < 0) & ~finite, self.step, bad_step)
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                logger.step()
                due_ckpt = self.step % t.ckpt_every == 0 or self.step == end
                if self.step % t.log_every == 0 or due_ckpt or self.step == end:
                    self._check_finite(bad_step)
                    means = {k: all_reduce_mean(v / count, self.dist).item() for k, v in sums.items()}
                    means["lr"] = self.scheduler.get_last_lr()[0]
                    last_loss = means["loss"]
                    logger.log(self.step, means, t.batch_size)
                    sums, count = {}, 0
                    self._report_bad_files(logger)
                if due_ckpt:
                    self.save()
                if t.sample_every and self.step % t.sample_every == 0 and self.step != end:
                    self.preview(logger)
            if self.step == t.steps:
                self.preview(logger)
            if self.step == t.steps and self.dist.is_main:
                plot = plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
                if plot:
                    logger.write(f"loss curve: {plot}")
            barrier(self.dist)  # no rank leaves (and tears down its process group) while rank 0 still samples
        finally:
            logger.close()
        seconds = time.perf_counter() - t0
        return TrainResult(
            self.run_dir, self.step - start_step, self.last_checkpoint, last_loss, seconds, self.last_preview
        )

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        first = int(all_reduce_max(bad_step, self.dist).item())
        if first >= 0:
            last = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise NonFiniteLossError(
                f"loss or gradient became NaN/inf at step {first}; stopped without saving. Last good checkpoint: "
                f"{last}. Try a lower train.lr, train.grad_clip=1.0 or train.precision=fp32."
            )

    def _report_bad_files(self, logger: RunLogger) -> None:
        new = [f for f in dict.fromkeys(self.bad_files) if f not in self.bad_files_seen]
        self.bad_files.clear()
        if new:
            self.bad_files_seen.update(new)
            shown = ", ".join(new[:3])
            logger.write(
                f"warning: skipped {len(new)} unreadable image(s) ({len(self.bad_files_seen)} so far), first: {shown}"
            )

    def preview(self, logger: RunLogger) -> Path | None:
        """EMA sample grid; every rank takes part in gathering the EMA weights, rank 0 samples."""
        decays = self.ema.decays
        weights = self.state.ema_weights(decays[0]) if decays else self.state.payload()[0]["model"]
        if not self.dist.is_main:
            return None
        images, nrow = ema_preview(self.cfg, self.codec, weights, self.device)
        path = save_grid(images, self.run_dir / "samples" / f"step-{self.step:08d}.png", nrow=nrow)
        logger.image("samples/ema", make_grid(images, nrow), self.step)
        logger.write(f"samples: {path}")
        self.last_preview = path
        return path


def train(cfg: Config, run_dir: str | Path, resume: bool = True, stop_at: int | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (resuming from its newest checkpoint if there is one)."""
    trainer = Trainer(cfg, run_dir, resume=resume)
    try:
        return trainer.fit(stop_at=stop_at)
    finally:
        cleanup(trainer.dist)


__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]
