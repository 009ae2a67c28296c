"""Evaluation during training (``train.eval_every``, settings in ``train.eval``): a step hook of the training
loop (``repflow.train.hooks``), so the loop stays generic.

At a due step the loop has just written that step's checkpoint; the hook runs what ``repflow eval`` of that
checkpoint runs: ``sample_run`` (every process its share of the indices, per-sample seeds, balanced labels,
the run's ``sample`` section changed by ``train.eval``), then ``evaluate`` on the main process against a
reference whose statistics, in every feature space the metrics need (``fid``, ``kid``, ``fd_dinov2``, ...), were
computed (and cached by content) when training started. So the value logged is
the one a later ``repflow eval CKPT --metrics ... --num-samples N ...`` prints. Samples go to
``<run>/eval/online/ckpt-<step>/`` with ``online.json`` (what was asked, then the result) and ``eval.json``;
an interrupted evaluation keeps the images it wrote and a resumed run finishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import Config, ConfigError, replace
from ..runtime.distributed import barrier, broadcast_object
from ..sample.runs import sample_run
from ..sample.swept import describe_setting
from .evaluate import EvalOptions, parse_metrics, prepare_references
from .extractors import Extractors
from .inception import load_inception
from .reference import peek_resolution
from .runs import default_reference, measure_samples

RECORD = "online.json"


def training_hooks(cfg: Config) -> list:
    """The step hooks a run's config asks for: the online evaluation when ``train.eval_every`` > 0."""
    return [OnlineEval(cfg)] if cfg.train.eval_every > 0 else []


@contextlib.contextmanager
def _untrained_matmuls():
    """Training allows TF32 matmuls on GPU; `repflow eval` runs in a fresh process with torch's default (fp32):
    the same here, so the online value is the one `repflow eval` gives."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class OnlineEval:
    name = "eval"

    def __init__(self, cfg: Config):
        self.every = cfg.train.eval_every
        self.settings = cfg.train.eval
        self.last = cfg.train.steps

    def start(self, run) -> list[str]:
        cfg, e = run.cfg, run.cfg.train.eval
        self.run, self.settings, self.last = run, e, cfg.train.steps
        if not run.generates:
            raise ConfigError(f"train.eval_every={self.every}: method {cfg.method.kind} does not generate images here "
                              "(no denoiser, or a codec without a decoder), so there is nothing to evaluate; set "
                              "train.eval_every=0")  # fmt: skip
        try:
            self.metrics, _ = parse_metrics(",".join(e.metrics))
        except ValueError as err:
            raise ConfigError(f"config key 'train.eval.metrics': {err}") from err
        self.changes = e.sampling_changes()
        self.opts = replace(cfg.sample, **self.changes)  # the combination, checked by the schema now
        self.reference, self.data_root = (e.reference, cfg.data.root) if e.reference else default_reference(cfg)
        self.eval_opts = EvalOptions(metrics=self.metrics, explicit=True, reference=self.reference,
                                     ref_count=e.ref_count, kid_subsets=e.kid_subsets,
                                     kid_subset_size=e.kid_subset_size, data_root=self.data_root,
                                     progress=False)  # fmt: skip
        device = run.dist.device
        try:  # built on first use: only the networks the metrics need are loaded
            self.extractors = Extractors(lambda: load_inception(None, "tf", None, device, "is" in self.metrics),
                                         dict(p.split("=", 1) for p in e.encoder_paths), device)  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"config key 'train.eval.encoder_paths': {err}") from err
        described = ""
        if run.dist.is_main:  # one process measures, as `repflow eval`; the reference is computed once, here
            size = (cfg.data.resolution,) * 2
            self._check_size(peek_resolution(self.reference), size)  # before any expensive work
            try:
                _, _, ref, _ = prepare_references(dataclasses.replace(self.eval_opts, allow_resolution_mismatch=True),
                                                  self.extractors, size)  # fmt: skip
            except ValueError as err:
                raise ConfigError(f"train.eval: {err}") from err
            if ref is not None:
                self._check_size(ref.resolution, size)
                described = f"{ref.description} ({ref.count} images)" if ref.count else ref.description
        barrier(run.dist)
        setting = describe_setting(self.opts, e.ema)
        return [f"evaluation every {self.every} steps and at the last: {', '.join(self.metrics)} of {e.num_samples} "
                f"samples ({setting}) against {described or self.reference}"]  # fmt: skip

    def _check_size(self, resolution: tuple[int, int] | None, size: tuple[int, int]) -> None:
        if resolution and tuple(resolution) != size:
            h, w = resolution
            raise ConfigError(f"train.eval.reference {self.reference} holds {h}x{w} images; the samples will "
                              f"be {size[0]} px")  # fmt: skip

    def due(self, step: int) -> bool:
        return step > 0 and (step % self.every == 0 or step == self.last)

    def _asked(self, step: int) -> dict:
        e = self.settings
        return {"step": step, "metrics": list(self.metrics), "num_samples": e.num_samples, "ema": e.ema,
                "sample": {k: list(v) if isinstance(v, tuple) else v for k, v in self.changes.items()},
                "reference": self.reference, "ref_count": e.ref_count, "encoder_paths": list(e.encoder_paths),
                "kid_subsets": e.kid_subsets, "kid_subset_size": e.kid_subset_size}  # fmt: skip

    def _claim(self, folder: Path, asked: dict) -> dict | None:
        """The values of an evaluation this folder finished with the same request, or None after making the
        folder ready: one left by a request that differs (settings changed on resume) is emptied."""
        path = folder / RECORD
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is not None and old.get("asked") == asked and old.get("result") is not None:
            return old["result"]
        if old is not None and old.get("asked") != asked:
            shutil.rmtree(folder)
        _write_json(path, {"asked": asked, "result": None})  # images of an interrupted run stay: sample_run resumes
        return None

    def __call__(self, step: int, checkpoint: Path, say: Callable[[str], None]) -> dict[str, float]:
        dist, e = self.run.dist, self.settings
        folder = self.run.run_dir / "eval" / "online" / checkpoint.name
        asked = self._asked(step)
        done = broadcast_object(self._claim(folder, asked) if dist.is_main else None, dist)
        if done is not None:
            say(f"step {step}: evaluation finished before the interruption, read from {folder / RECORD}")
            return done
        say(f"step {step}: evaluating {checkpoint.name} ({', '.join(self.metrics)} of {e.num_samples} samples)")
        with _untrained_matmuls():
            samples = sample_run(checkpoint, e.num_samples, self.changes, e.ema, folder, dist, progress=False,
                                 swept=False)  # fmt: skip
            values: dict[str, float] = {}
            if dist.is_main:
                result = measure_samples(samples, e.num_samples, self.extractors, self.eval_opts, {"online": asked},
                                         keep=e.keep_samples)  # fmt: skip
                values = {f"{self.name}/{k}": float(v) for k, v in result.metrics.items()}
                _write_json(folder / RECORD, {"asked": asked, "result": values})
        barrier(dist)
        return values


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
