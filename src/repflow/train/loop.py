"""The training loop: the only one in repflow. Every method (``repflow.methods``) trains through it; the loop
knows nothing about them beyond the :class:`~repflow.methods.base.Method` protocol."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..build import (
    WEIGHTS_KEY,
    attach_caches,
    build_encoders,
    build_method,
    check_guidance_has_classes,
    codec_for,
    method_class,
    needs_encoders,
    resolve_config,
    weights_record,
)
from ..config import Config, setting_changes, to_yaml
from ..data import ResumableBatchSampler, build_dataset, build_loader
from ..data.loader import loader_workers
from ..errors import CheckpointError, NonFiniteLossError
from ..methods.base import MethodEnv, TrainBatch
from ..runtime.checkpoint import clean_stale_temporaries, list_checkpoints, save_checkpoint
from ..runtime.cpus import compute_threads, cpus_per_process
from ..runtime.distributed import DistInfo, all_reduce_max, all_reduce_mean, barrier, cleanup, setup_distributed
from ..runtime.images import make_grid, save_grid
from ..runtime.lock import DirectoryLock
from ..runtime.lookup import load_checkpoint
from ..runtime.precision import autocast_for, use_bf16
from .batching import BatchPreparer
from .hooks import HookRun, StepHook, run_hooks
from .init_from import init_from
from .logging import RunLogger, plot_loss
from .optim import MuonAdamW
from .state import TrainState


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_checkpoint: Path | None
    final_loss: float
    seconds: float
    preview: Path | None = None  # the preview written at the end


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, dist: DistInfo | None = None, resume: bool = True,
                 hooks: Sequence[StepHook] = ()):  # fmt: skip
        self.dist = dist or setup_distributed()
        self.run_dir = Path(run_dir)
        self.lock: DirectoryLock | None = None
        self.hooks = list(hooks)  # run at the steps they choose, after that step's checkpoint (train/hooks.py)
        try:
            self._build(cfg, resume)
        except BaseException:
            self._release()
            raise

    def _acquire(self) -> None:
        if self.dist.is_main and self.lock is None:
            self.lock = DirectoryLock(self.run_dir, "run directory").acquire()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __del__(self) -> None:
        self._release()

    def _build(self, cfg: Config, resume: bool) -> None:
        self.device = self.dist.device
        if self.device.type == "cuda":  # TF32 matmuls for whatever runs in fp32 (bf16 autocast covers the rest)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)  # initialisation; identical on every rank
        self.dataset = build_dataset(cfg.data, num_classes_hint=max(cfg.model.num_classes, 1))
        self.codec = codec_for(cfg, self.device)
        cfg = resolve_config(cfg, self.dataset, self.codec)
        self.encoders = build_encoders(cfg, self.device) if needs_encoders(cfg) else []
        env = MethodEnv(encoder_dims=[e.embed_dim for e in self.encoders], encoders=list(self.encoders),
                        device=self.device, codec=self.codec)  # fmt: skip
        kind = method_class(cfg)
        cfg = kind.resolve(cfg, env)
        check_guidance_has_classes(cfg)
        self.cfg = cfg
        self.dataset = attach_caches(cfg, self.dataset, self.codec, self.encoders, images=kind.needs_images)
        self.preparer = BatchPreparer(cfg, self.codec, self.device, self.encoders, keep_images=kind.needs_images,
                                      pixels=kind.encodes_pixels)  # fmt: skip
        self.method = build_method(cfg, env).to(self.device)
        for net in self.method.networks().values():
            net.grad_checkpointing = cfg.train.grad_checkpointing
        fresh = not (resume and list_checkpoints(self.run_dir))
        # before the EMA copies are taken; the same weights on every rank
        init_note = init_from(self.method.networks(), cfg.train.init_from) if fresh and cfg.train.init_from else ""
        self.state = TrainState(cfg, self.dist, self.method)
        self.generator = self.state.generator
        self.notices: list[str] = []
        self._acquire()  # the run directory belongs to this process (rank 0 holds it for the job)
        if self.dist.is_main:
            clean_stale_temporaries(self.run_dir)  # safe: no other process may write here (the lock)
        barrier(self.dist)
        self.last_checkpoint: Path | None = None
        if resume and list_checkpoints(self.run_dir):
            self._resume(list_checkpoints(self.run_dir)[-1])
        elif self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        t = cfg.train
        sampler = ResumableBatchSampler(
            len(self.dataset), t.batch_size, cfg.seed, cfg.data.hflip,
            rank=self.dist.rank, world=self.dist.world, accum=t.grad_accum, start_image=self.state.images_seen,
            crops=cfg.data.crop == "random",
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws its workers' seed from the global RNG,
            # which a resumed run has just restored for what training draws from it (dropout)
            workers = loader_workers(self.dataset, cfg.data.workers, self.device.type)
            self.loader = iter(build_loader(self.dataset, sampler, workers))
        threads, why = compute_threads(cfg.train.threads, workers)
        torch.set_num_threads(threads)  # process-wide: the default (the host's cores) oversubscribes a shared CPU
        self.cpus = f"{threads} threads ({why}), {workers} loader workers, of {cpus_per_process()} CPUs available"
        self.state.distribute()
        lines = self.describe() + ([init_note] if init_note else [])
        generates = type(self.method).generates() and self.codec.can_decode
        for hook in self.hooks:  # every process: a hook may prepare shared work (a reference's statistics)
            lines += hook.start(HookRun(cfg, self.run_dir, self.dist, generates))
        if cfg.train.eval_every and not self.hooks:
            lines.append("train.eval_every is set but this Trainer has no evaluation hook: not evaluating "
                         "(repflow train and repflow.fit attach it)")  # fmt: skip
        if self.dist.is_main:
            for line in lines:
                print(f"repflow: {line}", flush=True)
        self.resumed_at = self.step if self.last_checkpoint is not None else None
        self.bad_files: list[str] = []
        self.bad_files_seen: set[str] = set()  # each unreadable file is reported once, not once per epoch
        self.last_preview: Path | None = None
        self.monitor_batch: TrainBatch | None = None
        self.monitor_warned = False

    def describe(self) -> list[str]:
        """What this run is, said once at start-up (rank 0): data, networks, codec, encoders, device, resume."""
        cfg, d = self.cfg, self.dataset
        flips = ", mirrored at random" if cfg.data.hflip else ""
        if cfg.data.crop == "random":
            flips += f", random crops after resizing to {getattr(d, 'crop_resize', 0)} px"
        where = f" at {cfg.data.root}" if cfg.data.root else ""
        data = (f"data: {cfg.data.dataset}{where} ({cfg.data.split}): {len(d)} images, {d.num_classes} classes, "
                f"{cfg.data.resolution} px, {cfg.data.channels} channel(s){flips}")  # fmt: skip
        lines = [data] if self.method.uses_data else []
        nets = self.method.networks()
        sizes = ", ".join(f"{n} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for n, m in nets.items())
        m = cfg.model
        arch = f"{m.arch.rsplit('/', 1)[0]}/{m.patch_size}" if "/" in m.arch and m.patch_size else m.arch
        model = (f"; model {arch} ({m.depth} blocks x {m.hidden_size}, {m.input_size}x{m.input_size}x"
                 f"{m.in_channels} input)" if self.method.uses_model_section else "")  # fmt: skip
        lines.append(f"method {self.method.describe()}{model}; parameters: {sizes}")
        for name, opt in self.state.optimizers.items():  # which tensors Muon takes is worth seeing once
            if isinstance(opt, MuonAdamW):
                split = ", ".join(f"{type(p).__name__} on {sum(len(g['params']) for g in p.param_groups)} tensors"
                                  for p in opt.parts)  # fmt: skip
                lines.append(f"optimizer of phase {name}: {split}")
        codec = f"codec {cfg.codec.kind}" + (f" ({cfg.codec.path})" if getattr(cfg.codec, "path", "") else "")
        encoders = "; ".join(f"{e.name} {e.embed_dim}-d from {'cache ' + c.cache if c.cache else e.source}"
                             for e, c in zip(self.encoders, cfg.encoders, strict=True))  # fmt: skip
        if not self.codec.can_decode and type(self.method).generates():
            codec += " without a decoder (codec.decoder unset): no sample previews"
        lines.append(codec + (f"; frozen encoders: {encoders}" if encoders else ""))
        dev = self.device
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        bf16 = "bf16 autocast" if use_bf16(dev, cfg.train.precision) else "fp32"
        par = f", {self.dist.world} processes ({cfg.train.parallel})" if self.dist.enabled else ""
        lines.append(f"device {dev} {name}, {bf16} (train.precision={cfg.train.precision}){par}; {self.cpus}")
        if self.last_checkpoint is not None:
            lines.append(f"resumed from {self.last_checkpoint} at step {self.step}, image {self.state.images_seen}")
        else:
            lines.append(f"new run in {self.run_dir} ({cfg.train.steps} steps of {cfg.train.batch_size} images)")
        return lines

    # -- what tests and tools look at -------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.method.networks()["model"]

    @property
    def ema(self):
        return self.state.ema.get("model")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return next(iter(self.state.optimizers.values()))

    @property
    def step(self) -> int:
        return self.state.step

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _resume(self, ckpt_dir: Path) -> None:
        ckpt = load_checkpoint(ckpt_dir)
        kind = method_class(self.cfg)
        old_key, new_key = kind.resume_key(ckpt.config), kind.resume_key(self.cfg)
        if old_key != new_key:
            diff = [k for k in sorted(set(old_key) | set(new_key)) if old_key.get(k) != new_key.get(k)]
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: the config differs in {', '.join(diff)}; "
                "use a new --out directory or the checkpoint's config"
            )
        rename = lambda name: kind.legacy_name(ckpt.config, name)  # noqa: E731
        try:
            self.state.load(ckpt.weights, ckpt.weight_names(), ckpt.state(), rename)
        except (RuntimeError, KeyError, ValueError) as err:  # shapes or names that do not fit the config
            first = str(err).strip().splitlines()[0][:300]
            raise CheckpointError(
                f"cannot resume from {ckpt.path}: its files do not fit its config ({first}); "
                "the checkpoint is damaged or was written by another program"
            ) from err
        self.last_checkpoint = ckpt.path
        self.notices = setting_changes(ckpt.config, self.cfg)  # applied from the resume step, and said so
        if self.dist.is_main and self.notices:
            (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))

    def save(self) -> Path | None:
        weights, state = self.state.payload()  # every rank: gathers shards under FSDP
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, weights, state, self.cfg, keep=self.cfg.train.keep_ckpts,
                                   metadata={WEIGHTS_KEY: weights_record(self.cfg)},
                                   class_names=list(getattr(self.dataset, "class_names", ()) or ()))  # fmt: skip
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
        if micro_step == 0:  # the codec's posterior noise for the whole global batch, before the method's draw
            self.preparer.begin_step(self.generator, self.cfg.train.batch_size)
        return self.prepare(next(self.loader), micro_step * self.dist.world + self.dist.rank)

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train up to ``stop_at`` (default ``train.steps``); the run directory is released when it returns."""
        self._acquire()
        try:
            return self._fit(stop_at)
        finally:
            self._release()

    def _fit(self, stop_at: int | None) -> TrainResult:
        t = self.cfg.train
        end = min(t.steps, stop_at) if stop_at is not None else t.steps
        logger = RunLogger(self.run_dir, t.steps, self.step, enabled=self.dist.is_main, report_to=t.report_to,
                           config=self.cfg)  # fmt: skip
        for note in self.notices:
            logger.write(f"resumed with a changed setting, applied from step {self.step}: {note}")
        sums: dict[str, torch.Tensor] = {}
        count, bad_step = 0, torch.full((), -1, dtype=torch.long, device=self.device)
        last_loss, start_step = float("nan"), self.step
        t0 = time.perf_counter()
        try:
            if self.resumed_at == self.step:  # killed after a hooked step's checkpoint: finish its hooks first
                run_hooks([h for h in self.hooks if h.due(self.step)], self.step, self.run_dir, self.dist, logger,
                          resumed=True)  # fmt: skip
            self.resumed_at = None
            while self.step < end:
                logged = self.train_step()
                finite = torch.stack([torch.isfinite(v).all() for v in logged.values()]).all()
                # remember the first bad step without a host sync (checked at log/checkpoint time)
                bad_step = torch.where((bad_step < 0) & ~finite, self.step, bad_step)
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                logger.step(loss=logged.get("loss"))
                hooked = [h for h in self.hooks if h.due(self.step)]
                # a hooked step is checkpointed first: hooks work from it, and a resumed run finishes them
                due_ckpt = bool(t.ckpt_every and self.step % t.ckpt_every == 0) or self.step == end or bool(hooked)
                if self.step % t.log_every == 0 or due_ckpt or self.step == end:
                    self._check_finite(bad_step)
                    means = {k: all_reduce_mean(v / count, self.dist).item() for k, v in sums.items()}
                    for phase in self.state.phases:
                        tag = "" if phase is self.state.phases[0] else f"_{phase.name}"
                        means[f"lr{tag}"] = self.state.lr(phase, self.step - 1)
                    means.update(self.monitor(logger))
                    last_loss = means.get("loss", float("nan"))
                    logger.log(self.step, means, t.batch_size)
                    sums, count = {}, 0
                    self._report_bad_files(logger)
                if due_ckpt:
                    self.save()
                run_hooks(hooked, self.step, self.run_dir, self.dist, logger)
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

    def fixed_batch(self, n: int) -> TrainBatch:
        """The first ``n`` training images, unflipped, as a batch (previews of reconstructions, monitoring)."""
        n = min(n, len(self.dataset))
        raw = self.dataset.get_batch([(i, False) for i in range(n)])
        self.preparer.begin_step(torch.Generator(self.device).manual_seed(0), n)
        return self.preparer(raw, 0)

    def preview_batch(self) -> TrainBatch | None:
        return self.fixed_batch(self.cfg.train.sample_num) if self.method.preview_needs_data else None

    def monitor(self, logger: RunLogger) -> dict[str, float]:
        """The method's numbers on its fixed batch (every rank: FSDP gathers), and its warning, said once."""
        if not self.method.monitor_images:
            return {}
        if self.monitor_batch is None:
            self.monitor_batch = self.fixed_batch(self.method.monitor_images)
        with torch.no_grad(), autocast_for(self.device, self.cfg.train.precision):
            values, warning = self.method.monitor(self.monitor_batch)
        if warning and not self.monitor_warned:
            logger.write(f"warning: {warning}")
            self.monitor_warned = True
        return values

    def preview(self, logger: RunLogger) -> Path | None:
        """The method's picture (sample grid, reconstructions) from EMA weights; every rank takes part in
        gathering the weights, rank 0 draws."""
        if self.cfg.train.sample_num <= 0:
            return None
        weights = self.state.preview_weights()
        if not self.dist.is_main:
            return None
        with torch.no_grad():
            picture = self.method.preview(weights, self.preview_batch())
        if picture is None:
            return None
        images, nrow = picture
        path = save_grid(images, self.run_dir / "samples" / f"step-{self.step:08d}.png", nrow=nrow)
        logger.image("samples/ema", make_grid(images, nrow), self.step)
        logger.write(f"samples: {path}")
        self.last_preview = path
        return path


def train(cfg: Config, run_dir: str | Path, resume: bool = True, stop_at: int | None = None,
          hooks: Sequence[StepHook] = ()) -> TrainResult:  # fmt: skip
    """Train ``cfg`` into ``run_dir`` (resuming from its newest checkpoint if there is one), running ``hooks``
    (evaluation during training: ``repflow.eval.online.training_hooks``) at the steps they choose."""
    trainer = Trainer(cfg, run_dir, resume=resume, hooks=hooks)
    try:
        return trainer.fit(stop_at=stop_at)
    finally:
        cleanup(trainer.dist)


__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]
