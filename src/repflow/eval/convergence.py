"""``repflow bench convergence``: FID against training steps for several configs under one protocol.

Every config is trained with the same seed and the same data budget (equal global batch, the same step
counts), checkpointed at each requested step, sampled there with one shared set of sampling options, and
measured against one cached reference. Results go to ``results.csv`` (one row per config and step) and
``convergence.png`` (FID vs training steps, one line per config). The benchmark resumes: finished rows are
kept, training resumes from the newest checkpoint, and generated samples are cached.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, load_config, to_dict
from ..sample.runs import sample_run
from .evaluate import EvalOptions, evaluate, write_result
from .inception import TFInception
from .runs import default_reference, samples_source

COLUMNS = ["config", "step", "images_seen", "fid", "num_samples", "reference", "ref_count", "sampler",
           "sampling_steps", "cfg", "ema", "train_seconds", "eval_seconds"]  # fmt: skip


@dataclass
class BenchSpec:
    configs: list[str]  # preset names or YAML files
    steps: list[int]
    num_samples: int
    out: Path
    overrides: list[str] = dataclasses.field(default_factory=list)  # applied to every config
    sampling: dict = dataclasses.field(default_factory=dict)  # overrides of the first config's `sample`
    reference: str = ""  # default: the first config's training data
    ref_count: int = 10000
    seed: int = 0
    ema: float | None = -1.0  # None: as -1 unless the run stores a swept EMA
    batch_size: int = 50  # Inception batch


def _names(configs: list[str]) -> list[str]:
    names = [Path(c).stem if c.endswith((".yaml", ".yml")) else c.replace("/", "-") for c in configs]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def prepare_configs(spec: BenchSpec) -> list[tuple[str, Config]]:
    """Load every config with the shared seed, step budget and checkpoint policy; check the data budget."""
    if not spec.configs:
        raise ValueError("name at least one config (preset or YAML file)")
    if not spec.steps or min(spec.steps) <= 0:
        raise ValueError(f"--steps must list positive step counts, got {spec.steps}")
    fixed = [f"seed={spec.seed}", f"train.steps={max(spec.steps)}", "train.keep_ckpts=0"]
    cfgs = [load_config(c, [*spec.overrides, *fixed]) for c in spec.configs]
    batches = {c.train.batch_size for c in cfgs}
    if len(batches) > 1:
        raise ValueError(f"configs differ in train.batch_size ({sorted(batches)}): the data budget would differ; "
                         "pass train.batch_size=N to compare them")  # fmt: skip
    return list(zip(_names(spec.configs), cfgs, strict=True))


def _done(csv_path: Path) -> dict[tuple[str, int], dict]:
    if not csv_path.is_file():
        return {}
    rows = csv.DictReader(csv_path.read_text().splitlines())
    return {(r["config"], int(r["step"])): r for r in rows}


def _append(csv_path: Path, row: dict) -> None:
    new = not csv_path.is_file()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def run_convergence(spec: BenchSpec, inception: TFInception, progress: bool = True) -> tuple[Path, Path]:
    """Train, sample and measure every (config, step); returns (results.csv, convergence.png)."""
    from ..train.loop import Trainer
    from .online import training_hooks

    named = prepare_configs(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    csv_path = spec.out / "results.csv"
    done = _done(csv_path)
    sampling = {**to_dict(named[0][1].sample), **spec.sampling}  # one sampler for every config
    sampling["cfg_interval"] = tuple(sampling["cfg_interval"])
    for name, cfg in named:
        run_dir, trainer, train_seconds = spec.out / "runs" / name, None, 0.0
        for step in sorted(set(spec.steps)):
            if (name, step) in done:
                continue
            ckpt = run_dir / "checkpoints" / f"ckpt-{step:08d}"
            if not ckpt.is_dir():
                trainer = trainer or Trainer(cfg, run_dir, hooks=training_hooks(cfg))
                if trainer.step > step:
                    raise ValueError(f"{run_dir} is past step {step} but has no checkpoint there; use a new --out")
                t0 = time.perf_counter()
                trainer.fit(stop_at=step)
                train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            folder = spec.out / "samples" / name / f"step-{step}"
            samples = sample_run(ckpt, spec.num_samples, sampling, spec.ema, folder, progress=progress)
            ref, root = default_reference(samples.cfg)
            opts = EvalOptions(metrics=("fid",), explicit=True, reference=spec.reference or ref,
                               ref_count=spec.ref_count, batch_size=spec.batch_size, data_root=root,
                               progress=progress)  # fmt: skip
            result = evaluate(samples_source(samples.folder, spec.num_samples), inception, opts)
            write_result(samples.folder / "eval.json", result, inception, samples.provenance)
            prov = samples.provenance
            row = {"config": name, "step": step, "images_seen": step * cfg.train.batch_size,
                   "fid": f"{result.metrics['fid']:.4f}", "num_samples": result.num_samples,
                   "reference": result.reference["source"], "ref_count": result.reference["count"],
                   "sampler": prov["sampler"], "sampling_steps": prov["steps"], "cfg": prov["cfg"],
                   "ema": prov["ema"], "train_seconds": f"{train_seconds:.1f}",
                   "eval_seconds": f"{time.perf_counter() - t0:.1f}"}  # fmt: skip
            _append(csv_path, row)
            print(f"{name} step {step}: FID {result.metrics['fid']:.3f} ({result.num_samples} samples)")
    png = plot_convergence(csv_path, spec.out / "convergence.png")
    return csv_path, png


def plot_convergence(csv_path: Path, png: Path) -> Path:
    """FID against training steps, one line per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(Path(csv_path).read_text().splitlines()))
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for name in dict.fromkeys(r["config"] for r in rows):
        pts = sorted((int(r["step"]), float(r["fid"])) for r in rows if r["config"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if rows:
        r = rows[0]
        ax.set_title(f"FID-{r['num_samples']} vs {r['reference']} ({r['ref_count']}); "
                     f"{r['sampler']} {r['sampling_steps']} steps, cfg {r['cfg']}", fontsize=9)  # fmt: skip
    ax.set_xlabel("training steps")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
