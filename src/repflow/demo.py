"""`repflow demo`: train the demo preset on Fashion-MNIST and show a class-by-class sample grid."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .api import fit
from .config import load_config

DEMO_PRESET = "demo-fashion-reg"


def run_demo(out: Path, overrides: list[str] | None = None) -> dict[str, Path]:
    t0 = time.perf_counter()
    cfg = load_config(DEMO_PRESET, overrides)
    run_dir = out / "run"
    arch = f"{cfg.model.arch} ({cfg.model.depth} blocks x {cfg.model.hidden_size})"
    print(f"repflow demo: training {arch} on {cfg.data.dataset} for {cfg.train.steps} steps -> {run_dir}")
    result = fit(cfg, out=run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": result.last_checkpoint}
    # the final EMA preview already is the demo grid: one column per class, fixed seeds
    for name, src in (("samples", result.preview), ("loss", run_dir / "loss.png")):
        if src is not None and Path(src).is_file():
            paths[name] = Path(shutil.copyfile(src, out / f"{name}.png"))
    s = cfg.sample
    print(f"repflow demo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"  samples ({cfg.train.sample_num}, one class per column, {s.sampler} {s.steps} steps, cfg {s.cfg}): "
          f"{paths.get('samples')}")  # fmt: skip
    print(f"  loss curve: {paths.get('loss')}")
    print(f"  checkpoint: {paths['checkpoint']}  (repflow sample {run_dir} --num-samples 100)")
    print(f"  TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return paths
