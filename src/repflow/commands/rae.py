"""``repflow rae stats`` (latent statistics) and ``repflow rae export`` (a decoder as a diffusers AutoencoderRAE)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import command, command_group, count


def _stats(args) -> int:
    from ..build import codec_for
    from ..config import load_config
    from ..data import build_dataset
    from ..data.latent_stats import gather_moments, latent_moments, save_stats
    from ..runtime.distributed import cleanup, setup_distributed

    cfg = load_config(args.config, args.overrides)
    if cfg.codec.kind != "rae":
        raise ValueError(f"{args.config} has codec.kind={cfg.codec.kind}; latent statistics are for codec.kind=rae")
    if cfg.codec.stats:
        cfg = cfg.replace(**{"codec.stats": ""})  # the statistics of the unnormalised latents
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if Path(args.out).suffix != ".safetensors":
        raise ValueError(f"--out {args.out}: latent statistics are written as .safetensors (codec.stats also reads "
                         "the official stat.pt / stats.pt)")  # fmt: skip
    dist = setup_distributed(args.device)
    try:
        dataset = build_dataset(cfg.data, num_classes_hint=max(cfg.model.num_classes, 1))
        codec = codec_for(cfg, dist.device)
        codec.model_shape(cfg.data.channels, cfg.data.resolution)
        n = len(dataset) if args.num <= 0 else min(args.num, len(dataset))
        per = -(-n // dist.world)
        indices = list(range(dist.rank * per, min(n, (dist.rank + 1) * per)))  # disjoint ranges, merged in order
        flips = cfg.data.hflip if args.flip is None else args.flip
        local = latent_moments(codec.raw, dataset, indices, flips, args.batch_size, progress=dist.is_main)
        moments = gather_moments(local, dist)
        if dist.is_main:
            meta = {"codec": codec.identity(), "resolution": cfg.data.resolution, "flips": flips,
                    "dataset": dataset.fingerprint(), "images": n}  # fmt: skip
            path = save_stats(args.out, moments, meta)
            print(f"latent statistics of {moments.count} latents {tuple(moments.mean.shape)}: {path}; train with "
                  f"codec.stats={path}")  # fmt: skip
        return 0
    finally:
        cleanup(dist)


def _export(args) -> int:
    from ..codecs.rae_export import export_autoencoder_rae

    path = export_autoencoder_rae(args.run, Path(args.out), stats=args.stats)
    print(f"wrote {path} (diffusers AutoencoderRAE: AutoencoderRAE.from_pretrained('{path}'))")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = command_group(sub, "rae", "RAE: latent statistics, decoder export",
        "repflow rae stats rae-decoder-dinov2b-in256 data.root=/data/imagenet/train --out stats.safetensors",
        "repflow rae export runs/rae-decoder --stats stats.safetensors --out rae-diffusers/")  # fmt: skip
    s = command(
        group,
        "stats",
        "exact per-element latent mean / variance over a dataset (one pass)",
        "repflow rae stats rae-ditdh-xl-in256 data.root=/data/in/train --out s.safetensors",
        "repflow rae stats demo-fashion-rae-ditdh --num 10000 --out f.safetensors",
    )
    s.add_argument("config", help="a preset or YAML file with codec.kind=rae and the data")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--out", required=True, help="statistics file (.safetensors)")
    s.add_argument("--num", type=count, default=0, help="first N images (0: all)")
    s.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="add mirror images (default: data.hflip)")  # fmt: skip
    s.add_argument("--batch-size", type=count, default=64)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.set_defaults(func=_stats)
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
