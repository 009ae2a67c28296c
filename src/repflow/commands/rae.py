"""``repflow rae stats`` (latent statistics: ``repflow codec stats`` for RAE configs) and ``repflow rae export``
(a decoder as a diffusers AutoencoderRAE)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .codec import add_stats_command
from .options import command, command_group


def _export(args) -> int:
    from ..codecs.rae_export import export_autoencoder_rae

    path = export_autoencoder_rae(args.run, Path(args.out), stats=args.stats)
    print(f"wrote {path} (diffusers AutoencoderRAE: AutoencoderRAE.from_pretrained('{path}'))")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "rae", "RAE: latent statistics, decoder export",
        "repflow rae stats rae-decoder-dinov2b-in256 data.root=/data/imagenet/train --out stats.safetensors",
        "repflow rae export runs/rae-decoder --stats stats.safetensors --out rae-diffusers/")  # fmt: skip
    add_stats_command(
        group, ("rae",), "exact per-element latent mean / variance over a dataset (one pass)",
        "repflow rae stats rae-ditdh-xl-in256 data.root=/data/in/train --out s.safetensors",
        "repflow rae stats demo-fashion-rae-ditdh --num 10000 --out f.safetensors",
    )  # fmt: skip
    e = command(
        group,
        "export",
        "a rae_decoder run as a diffusers AutoencoderRAE directory",
        "repflow rae export runs/rae-decoder --stats s.safetensors --out rae-hf/",
    )
    e.add_argument("run", help="a rae_decoder run or checkpoint")
    e.add_argument("--stats", default="", help="latent statistics to store with it (repflow rae stats)")
    e.add_argument("--out", required=True, help="the directory to write")
    e.set_defaults(func=_export)
