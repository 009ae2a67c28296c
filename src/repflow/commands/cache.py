"""``repflow cache ...``: build per-image caches. ``latents`` is here; other caches (encoder features) add a
subcommand to the same group with :func:`add_cache_arguments`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import command_group, count, examples, positive


def add_cache_arguments(p: argparse.ArgumentParser, dtype: str = "float32") -> None:
    """The options every cache command shares: which data (a config), where, flips, batching, resuming."""
    p.add_argument("config", help="preset name or YAML file whose data.* (and codec/encoder) settings to cache")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/imagenet/train")
    p.add_argument("--out", help="cache directory (default: the config's cache path); an unfinished one resumes")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also store every image's mirror image (default: data.hflip); needed to train with data.hflip=true",
    )
    p.add_argument("--batch-size", type=positive, default=64, help="images per encoder call (per process)")
    p.add_argument("--workers", type=int, default=-1, help="image decoding workers per process (-1: automatic)")
    p.add_argument("--dtype", choices=["float32", "float16"], default=dtype, help=f"storage type (default {dtype})")
    p.add_argument("--shard-size", type=count, default=0, help="images per shard, the unit of resuming (0: automatic)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache made with other settings")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cache_latents(args) -> int:
    from ..codecs.cache import cache_latents
    from ..config import load_config
    from ..runtime.distributed import cleanup, setup_distributed

    cfg = load_config(args.config, args.overrides)
    out = args.out or cfg.codec.cache
    if not out:
        raise ValueError("say where to write the cache: --out DIR (or codec.cache=DIR)")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    dist = setup_distributed(args.device)  # under torchrun: one shard set per rank
    flips = cfg.data.hflip if args.flip is None else args.flip
    try:
        report = cache_latents(
            cfg, out, flips=flips, batch_size=args.batch_size, workers=args.workers, dtype=args.dtype,
            shard_size=args.shard_size, overwrite=args.overwrite, dist=dist, progress=not args.no_progress,
        )  # fmt: skip
    finally:
        cleanup(dist)
    if dist.is_main:
        print(summary(report, out, "latents"))
        print(f"train with: repflow train {args.config} codec.cache={Path(out)} (and the same data.*/codec.*)")
    return 0


def _cache_features(args) -> int:
    from ..build import build_encoders, codec_for, resolve_config
    from ..config import load_config
    from ..data.loader import build_dataset
    from ..encoders.cache import cache_features
    from ..runtime.distributed import cleanup, setup_distributed

    cfg = load_config(args.config, args.overrides)
    if not cfg.encoders:
        raise ValueError(
            f"{args.config} has no frozen encoder: add one under 'encoders' (e.g. encoders=[{{name: tiny}}])"
        )
    if not 0 <= args.encoder < len(cfg.encoders):
        raise ValueError(f"--encoder {args.encoder}: the config has {len(cfg.encoders)} encoder(s)")
    out = args.out or cfg.encoders[args.encoder].cache
    if not out:
        raise ValueError(f"say where to write the cache: --out DIR (or encoders.{args.encoder}.cache=DIR)")
    dist = setup_distributed(args.device)
    dataset = build_dataset(cfg.data, num_classes_hint=max(cfg.model.num_classes, 1))
    cfg = resolve_config(cfg, dataset, codec_for(cfg))  # the encoder's input size follows the model's token grid
    encoder = build_encoders(cfg, dist.device, only=args.encoder)[0]
    flips = cfg.data.hflip if args.flip is None else args.flip
    try:
        report = cache_features(
            cfg, encoder, dataset, out, flips=flips, batch_size=args.batch_size, workers=args.workers,
            dtype=args.dtype, shard_size=args.shard_size, overwrite=args.overwrite, dist=dist,
            progress=not args.no_progress,
        )  # fmt: skip
    finally:
        cleanup(dist)
    if dist.is_main:
        print(summary(report, out, f"{encoder.name} features"))
        print(f"train with: repflow train {args.config} encoders.{args.encoder}.cache={Path(out)} (same data.*)")
    return 0


def summary(report, out, what: str) -> str:
    """One paragraph: what was cached, how fast, what was kept from before, which files were unreadable."""
    store = report.store
    shape = "x".join(map(str, next(iter(store.fields.values())).shape))
    copies = " (+ mirror images)" if store.flips else ""
    msg = (
        f"cached {what} of {store.count} images{copies} as {shape} in {out}: encoded {report.encoded} in "
        f"{report.seconds:.1f}s ({report.rate:.1f} img/s on this process)"
    )
    if report.shards_done_before:
        msg += f"; kept {report.shards_done_before} of {store.num_shards} shards finished earlier"
    if report.bad_files:
        first = ", ".join(report.bad_files[:3])
        msg += f"\nwarning: {len(report.bad_files)} unreadable image(s) were replaced by the next readable one: {first}"
    return msg


def add_commands(sub) -> None:
    """Register the ``cache`` command group on the main parser's subparsers."""
    group = command_group(
        sub,
        "cache",
        "encode a dataset once: VAE latents, frozen-encoder features",
        "repflow cache latents sit-xl2-in256 data.root=/data/imagenet/train --out /fast/in256-latents",
        "repflow cache features sit-xl2-reg-in256 data.root=/data/imagenet/train --out /fast/in256-dinov2",
    )
    lat = group.add_parser(
        "latents",
        help="VAE posterior mean/std of every image (sharded under torchrun, resumable)",
        description="Encode data.* with codec.* (an SD-VAE) into a memory-mapped cache; train with codec.cache=DIR. "
        "Run under `torchrun --nproc_per_node=N --no-python repflow cache latents ...` to use N GPUs.",
        **examples(
            "repflow cache latents sit-xl2-in256 data.root=/data/imagenet/train --out /fast/in256-latents",
            "repflow train sit-xl2-in256 codec.cache=/fast/in256-latents --out runs/xl",
        ),
    )
    add_cache_arguments(lat)
    lat.set_defaults(func=_cache_latents)
    feat = group.add_parser(
        "features",
        help="frozen-encoder patch tokens and class vector of every image (float16, sharded, resumable)",
        description="Run encoders.I over data.* once; train with encoders.I.cache=DIR. REPA/REG then read the "
        "features instead of running the encoder each step.",
        **examples(
            "repflow cache features sit-xl2-reg-in256 data.root=/data/imagenet/train --out /fast/dinov2",
            "repflow train sit-xl2-reg-in256 encoders.0.cache=/fast/dinov2 --out runs/reg",
        ),
    )
    add_cache_arguments(feat, dtype="float16")
    feat.add_argument("--encoder", type=count, default=0, help="which entry of 'encoders' to cache (default 0)")
    feat.set_defaults(func=_cache_features)


__all__ = ["add_cache_arguments", "add_commands", "summary"]
