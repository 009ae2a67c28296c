"""``repflow codec stats``: exact latent statistics of a codec over a dataset, in one streaming pass; ``repflow
codec import``: an LDM-format VAE checkpoint (VA-VAE, REPA-E's) as a diffusers directory for ``codec.kind: vae``.

A ``vae`` codec gets one mean and variance per channel, (C, 1, 1), of a posterior draw (what training sees);
an ``rae`` codec one per latent element, (C, h, w) (``repflow rae stats`` is this command for RAE configs).
Either is written as .safetensors and used with ``codec.stats=FILE``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import command, command_group, count

# the raw latents, whatever normalisation the config sets: a VAE without scaling in its config needs none here
RAW = {"vae": {"codec.stats": "", "codec.scale": 1.0, "codec.shift": 0.0}, "rae": {"codec.stats": ""}}


def latent_stats(args, kinds: tuple[str, ...] = tuple(RAW)) -> int:
    from ..build import codec_for
    from ..config import load_config
    from ..data import build_dataset
    from ..data.latent_stats import gather_moments, latent_moments, save_stats
    from ..runtime.distributed import cleanup, setup_distributed

    cfg = load_config(args.config, args.overrides)
    if cfg.codec.kind not in kinds:
        raise ValueError(f"{args.config} has codec.kind={cfg.codec.kind}; latent statistics are for codec.kind="
                         f"{' or '.join(kinds)}")  # fmt: skip
    cfg = cfg.replace(**RAW[cfg.codec.kind])
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
        local = latent_moments(codec.stats_rows, dataset, indices, flips, args.batch_size, progress=dist.is_main)
        moments = gather_moments(local, dist)
        if dist.is_main:
            mean, var = codec.stats_of(moments)
            meta = {"codec": codec.identity(), "resolution": cfg.data.resolution, "flips": flips,
                    "dataset": dataset.fingerprint(), "images": n}  # fmt: skip
            path = save_stats(args.out, mean, var, moments.count, meta)
            print(f"latent statistics of {moments.count} latents {tuple(mean.shape)}: {path}; train with "
                  f"codec.stats={path}")  # fmt: skip
        return 0
    finally:
        cleanup(dist)


def add_stats_command(group: argparse._SubParsersAction, kinds: tuple[str, ...], help: str, *usage: str) -> None:
    """The ``stats`` subcommand of ``group`` for configs with ``codec.kind`` in ``kinds``."""
    s = command(group, "stats", help, *usage)
    s.add_argument("config", help=f"a preset or YAML file with codec.kind={' or '.join(kinds)} and the data")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--out", required=True, help="statistics file (.safetensors)")
    s.add_argument("--num", type=count, default=0, help="first N images (0: all)")
    s.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="add mirror images (default: data.hflip)")  # fmt: skip
    s.add_argument("--batch-size", type=count, default=64)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.set_defaults(func=lambda args: latent_stats(args, kinds))


def import_vae(args) -> int:
    from ..codecs.ldm_vae import import_vae

    config = import_vae(args.checkpoint, args.out, args.stats)
    levels = "".join("a" if "Attn" in t else "-" for t in config["down_block_types"])
    normalised = "(z - mean) / std per channel" if config.get("latents_mean") else "none yet: give codec.stats"
    print(f"wrote {args.out}: AutoencoderKL, {config['latent_channels']} latent channels at 1/"
          f"{2 ** (len(levels) - 1)} of the image side, widths {config['block_out_channels']}, attention at levels "
          f"{levels}; normalisation {normalised}; use it with codec.kind=vae codec.path={args.out}")  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = command_group(
        sub, "codec", "codecs: latent statistics, LDM-format VAE checkpoints",
        "repflow codec stats vae.yaml codec.path=/weights/sd-vae-ft-ema data.root=/data/in/train --out s.safetensors",
    )  # fmt: skip
    add_stats_command(
        group, tuple(RAW), "exact per-channel (vae) / per-element (rae) latent mean and variance over a dataset",
        "repflow codec stats demo-fashion-sit codec.kind=vae codec.path=/weights/va-vae --out s.safetensors",
        "repflow codec stats rae-ditdh-xl-in256 data.root=/data/in/train --out s.safetensors",
    )  # fmt: skip
    i = command(
        group,
        "import",
        "an LDM-format AutoencoderKL checkpoint (VA-VAE, REPA-E) as a diffusers directory",
        "repflow codec import vavae-imagenet256-f16d32-dinov2.pt --stats latents_stats.pt --out /weights/va-vae",
        "repflow codec import e2e-vavae-400k.pt --stats e2e-vavae-latents-stats.pt --out /weights/e2e-vavae",
    )
    i.add_argument("checkpoint", help="the .pt/.ckpt: a VAE state dict, {state_dict}, {model} or a REPA-E checkpoint")
    i.add_argument("--out", required=True, help="the diffusers AutoencoderKL directory to write (new or empty)")
    i.add_argument("--stats", help="per-channel latent statistics: LightningDiT's latents_stats.pt, REPA-E's "
                   "*-latents-stats.pt, a `repflow codec stats` file (REPA-E checkpoints hold theirs)")  # fmt: skip
    i.set_defaults(func=import_vae)
