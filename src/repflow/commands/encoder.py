"""``repflow encoder ...``: train the tiny offline encoder (SimCLR through the training loop), inspect one."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import command, command_group, count

PACKAGED = Path(__file__).resolve().parents[1] / "encoders" / "weights" / "tiny-fashion-mnist.safetensors"


def train_tiny_encoder(out: Path, run_dir: Path, overrides: list[str], probe_size: int = 10000) -> dict:
    """Train the ``tiny-encoder-simclr`` preset (with overrides) into ``run_dir``, then probe and export the
    encoder to ``out`` with its recipe in the file's metadata."""
    import torch

    from ..config import load_config, replace, to_dict
    from ..data import build_dataset
    from ..encoders.probe import embed, ridge_probe_accuracy
    from ..encoders.tiny import TinyViT, save_tiny
    from ..methods.simclr import tiny_vit_config
    from ..sample.load import load_run
    from ..train.loop import train

    cfg = load_config("tiny-encoder-simclr", overrides)
    t0 = time.perf_counter()
    result = train(cfg, run_dir)
    minutes = (time.perf_counter() - t0) / 60
    run = load_run(run_dir)  # the stored config has the resolved settings
    model = TinyViT(tiny_vit_config(run.cfg))
    model.load_state_dict(run.ckpt.weights("model"))
    data = build_dataset(run.cfg.data)
    test = build_dataset(replace(run.cfg.data, split="test", subset=0))
    n = min(probe_size, len(data))
    with torch.no_grad():
        accuracy = ridge_probe_accuracy(embed(model, data.images[:n]), data.labels[:n],
                                        embed(model, test.images), test.labels)  # fmt: skip
    tr, m = run.cfg.train, run.cfg.method
    meta = {
        "recipe": f"SimCLR (NT-Xent, temperature {m.temperature:g}) on the class token through the repflow "
        "training loop; crop-zoom 0.6-1, flip, contrast, brightness, noise",
        "dataset": run.cfg.data.dataset, "resolution": run.cfg.data.resolution, "steps": tr.steps,
        "batch_size": tr.batch_size, "lr": tr.lr, "seed": run.cfg.seed, "final_loss": round(result.final_loss, 4),
        "train_minutes": round(minutes, 2), "linear_probe_top1": round(accuracy, 4),
        "probe": f"ridge on class token, {n} train / {len(test)} test", "config": to_dict(model.cfg),
        "run": str(run_dir),
    }  # fmt: skip
    save_tiny(model, out, meta)
    return meta


def _train(args) -> int:
    overrides = [
        f"data.dataset={args.dataset}", f"data.resolution={args.resolution}", f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", f"seed={args.seed}", *args.overrides,
    ]  # fmt: skip
    out = Path(args.out)
    run_dir = Path(args.run_dir or out.with_suffix("").as_posix() + "-run")
    meta = train_tiny_encoder(out, run_dir, overrides)
    print(f"tiny encoder: {out}; linear probe top-1 {meta['linear_probe_top1']:.1%} ({meta['probe']}); "
          f"{meta['train_minutes']:.1f} min; training run: {run_dir}")  # fmt: skip
    return 0


def _info(args) -> int:
    from ..encoders.tiny import load_tiny

    model, meta = load_tiny(Path(args.path))
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, **meta}, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    esub = command_group(sub, "encoder", "the tiny offline representation encoder", "repflow encoder info",
                         "repflow encoder train --steps 500 --out tiny.safetensors")  # fmt: skip
    t = command(esub, "train", "train the tiny ViT self-supervised (SimCLR) on a dataset",
                "repflow encoder train --steps 500 --out tiny.safetensors",
                "repflow encoder train --dataset mnist --steps 2000 --out mnist.safetensors")  # fmt: skip
    t.add_argument("--out", default="tiny-encoder.safetensors", help="the exported encoder file")
    t.add_argument("--run-dir", help="the training run (default: next to --out); rerunning resumes it")
    t.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    t.add_argument("--resolution", type=count, default=32)
    t.add_argument("--steps", type=count, default=500)
    t.add_argument("--batch-size", type=count, default=192)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("overrides", nargs="*", help="more dotted overrides of the tiny-encoder-simclr preset")
    t.set_defaults(func=_train)
    i = command(
        esub,
        "info",
        "print a tiny-encoder file's architecture, recipe and probe accuracy",
        "repflow encoder info",
        "repflow encoder info tiny.safetensors",
    )
    i.add_argument("path", nargs="?", default=str(PACKAGED))
    i.set_defaults(func=_info)
