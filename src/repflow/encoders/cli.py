"""``repflow encoder ...``: train the tiny offline encoder, inspect an encoder file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train(args) -> int:
    from .train_tiny import train_tiny_encoder

    meta = train_tiny_encoder(
        Path(args.out), dataset=args.dataset, resolution=args.resolution, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
    )  # fmt: skip
    print(f"tiny encoder: {args.out}; linear probe top-1 {meta['linear_probe_top1']:.1%} ({meta['probe']}); "
          f"{meta['train_minutes']:.1f} min")  # fmt: skip
    return 0


def _info(args) -> int:
    from .tiny import load_tiny

    model, meta = load_tiny(Path(args.path))
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, **meta}, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encoder", help="the tiny offline representation encoder")
    esub = enc.add_subparsers(dest="encoder_command", required=True)
    t = esub.add_parser("train", help="train the tiny ViT self-supervised (SimCLR) on a dataset")
    t.add_argument("--out", default="tiny-encoder.safetensors")
    t.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    t.add_argument("--resolution", type=int, default=32)
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=192)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train)
    i = esub.add_parser("info", help="print a tiny-encoder file's architecture, recipe and probe accuracy")
    i.add_argument("path", nargs="?", default=str(Path(__file__).parent / "weights" / "tiny-fashion-mnist.safetensors"))
    i.set_defaults(func=_info)
