"""The ``repflow`` command line. Thin: parse, build, call. ``main(argv)`` is callable from tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _train(args) -> int:
    from .config import load_config, to_yaml
    from .train.loop import train

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from .build import resolve_static

        print(to_yaml(resolve_static(cfg)), end="")
        print("# model.num_classes/input_size/in_channels and reg.dim are filled in from the data and encoder")
        return 0
    out = Path(args.out or f"runs/{cfg.name}")
    result = train(cfg, out, resume=not args.no_resume)
    print(f"trained {result.steps} steps in {result.seconds:.0f}s; run: {out}; checkpoint: {result.last_checkpoint}")
    return 0


def parse_interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0,0.7), got {text!r}") from err
    return lo, hi


def _sample(args) -> int:
    """PNGs named by sample index (sharded over torchrun processes, resumable), then a grid and an .npz."""
    import dataclasses

    from .sample.export import save_grid, save_npz
    from .sample.load import load_model
    from .sample.sharded import generate_sharded, read_samples, sampling_manifest
    from .train.distributed import cleanup, setup_distributed

    dist = setup_distributed(args.device)
    try:
        cfg, model, codec, ckpt = load_model(args.run, ema=args.ema, device=dist.device, vae=args.vae)
        changes = {k: v for k, v in {
            "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg, "cfg_interval": args.cfg_interval,
            "seed": args.seed, "batch_size": args.batch_size,
        }.items() if v is not None}  # fmt: skip
        opts = dataclasses.replace(cfg.sample, **changes)
        name = f"{ckpt.path.name}-{opts.sampler}{opts.steps}-cfg{opts.cfg:g}-seed{opts.seed}"
        out = Path(args.out or ckpt.path.parent.parent / "samples" / name)
        manifest = {**sampling_manifest(str(ckpt.path.resolve()), args.ema, opts, cfg.model.num_classes),
                    "vae": args.vae or cfg.codec.path}  # fmt: skip
        made = generate_sharded(model, cfg, codec, out, args.num, opts, manifest, dist)
        if not dist.is_main:
            return 0
        k = cfg.model.num_classes
        first = read_samples(out, range(min(args.num, 100)))
        grid = save_grid(first, out / "grid.png", nrow=k if 0 < k <= 16 else None)
        nfe = f", NFE {made.nfe}" if made.count else ", all already there"
        msg = f"{args.num} samples ({opts.sampler}, {opts.steps} steps{nfe}, cfg {opts.cfg}) in {out}; grid {grid}"
        if args.npz:
            msg += f"; npz {save_npz(read_samples(out, range(args.num)), out / 'samples.npz')}"
        print(msg)
        return 0
    finally:
        cleanup(dist)


def _presets(args) -> int:
    from .config import PRESET_DIR, list_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        note = first[1:].strip() if first.startswith("#") else ""
        print(f"{name:28s} {note}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repflow", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"repflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a preset or YAML file")
    t.add_argument("config", help="preset name (see `repflow presets`) or path to a YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.arch=SiT-B/2")
    t.add_argument("--out", help="run directory (default runs/<name>); an existing run is resumed")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate images from a run or checkpoint")
    s.add_argument("run", help="run directory (newest checkpoint) or checkpoint directory")
    # --num alone would stop torchrun: it rejects it as an ambiguous abbreviation of its own --numa-binding
    s.add_argument("--num-samples", "--num", dest="num", type=int, default=64, help="samples 0..N-1")
    s.add_argument("--sampler", choices=["euler", "heun", "sde", "dopri5"])
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--cfg-interval", type=parse_interval, help="LO,HI: guide only for t in [LO, HI] (t=1 is noise)")
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--ema", type=float, default=-1.0, help="EMA decay to use (-1: first EMA, 0: raw weights)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--vae", default="", help="decode with this VAE (dir or hub id) instead of the one training used")
    s.add_argument("--npz", action="store_true", help="also write an ADM-style samples.npz")
    s.add_argument("--out", help="output folder")
    s.set_defaults(func=_sample)

    pr = sub.add_parser("presets", help="list the shipped presets")
    pr.set_defaults(func=_presets)

    d = sub.add_parser("demo", help="train a small class-conditional model on Fashion-MNIST and sample it")
    d.add_argument("--out", default="demo_out")
    d.add_argument("overrides", nargs="*", help="dotted overrides for the demo preset")
    d.set_defaults(func=_demo)

    from .bench.cli import add_commands as bench_commands
    from .data.cli import add_commands as cache_commands
    from .encoders.cli import add_commands as encoder_commands
    from .eval.cli import add_commands as add_eval_commands

    encoder_commands(sub)
    cache_commands(sub)
    bench = sub.add_parser("bench", help="benchmarks: throughput, convergence (FID vs training steps)")
    bench_commands(bench.add_subparsers(dest="bench_command", required=True))
    add_eval_commands(sub)  # eval, analyze, and `bench convergence` in the group above
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .train.checkpoint import CheckpointError
    from .train.loop import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NonFiniteLossError as err:
        print(f"repflow: {err}", file=sys.stderr)
        return 3
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"repflow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repflow: interrupted; the newest checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
