"""`repflow demo`: train the demo preset on Fashion-MNIST, then sample a class-by-class grid."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .config import load_config
from .sample.export import save_grid
from .sample.generate import sample_images
from .sample.load import load_model
from .train.loop import train

DEMO_PRESET = "demo-fashion"


def run_demo(out: Path, overrides: list[str] | None = None) -> dict[str, Path]:
    t0 = time.perf_counter()
    cfg = load_config(DEMO_PRESET, overrides)
    run_dir = out / "run"
    print(f"repflow demo: training {cfg.model.arch} on {cfg.data.dataset} for {cfg.train.steps} steps -> {run_dir}")
    train(cfg, run_dir)
    cfg, model, codec, ckpt = load_model(str(run_dir))
    k = max(cfg.model.num_classes, 1)
    n = 10 * k  # ten samples per class, one class per column
    with torch.inference_mode():
        images, nfe = sample_images(model, cfg, codec, range(n))
    grid = save_grid(images, out / "samples.png", nrow=k)
    loss_png = out / "loss.png"
    if (run_dir / "loss.png").is_file():
        shutil.copyfile(run_dir / "loss.png", loss_png)
    minutes = (time.perf_counter() - t0) / 60
    print(f"repflow demo finished in {minutes:.1f} min")
    print(f"  samples grid ({n} images, {cfg.sample.sampler} {cfg.sample.steps} steps, NFE {nfe}): {grid}")
    print(f"  loss curve: {loss_png}")
    print(f"  checkpoint: {ckpt.path}")
    print(f"  TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return {"grid": grid, "loss": loss_png, "checkpoint": ckpt.path}
