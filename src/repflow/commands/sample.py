"""``repflow sample``: PNGs named by sample index (sharded over torchrun processes, resumable), a grid, an .npz."""

from __future__ import annotations

import argparse

from .options import add_run_argument, add_sampling_args, command, positive, sampling_changes


def _sample(args) -> int:
    from ..runtime.distributed import cleanup, setup_distributed
    from ..runtime.images import save_grid, save_npz
    from ..sample.runs import class_labels, sample_run
    from ..sample.sharded import read_samples

    dist = setup_distributed(args.device)
    try:
        run = sample_run(args.run, args.num, sampling_changes(args), args.ema, args.out, dist,
                         classes=args.classes, guide=args.guide, vae=args.vae)  # fmt: skip
        if not dist.is_main:
            return 0
        out, opts, k = run.folder, run.opts, run.cfg.model.num_classes
        first = read_samples(out, range(min(args.num, 100)))
        per_row = len(run.classes) if run.classes else k
        grid = save_grid(first, out / "grid.png", nrow=per_row if 0 < per_row <= 16 else None)
        nfe = f", NFE {run.made.nfe}" if run.made.count else ", all already there"
        msg = f"{args.num} samples ({opts.sampler}, {opts.steps} steps{nfe}, cfg {opts.cfg}) in {out}; grid {grid}"
        if args.npz:
            labels = class_labels(args.num, k, run.classes)
            msg += f"; npz {save_npz(read_samples(out, range(args.num)), out / 'samples.npz', labels)}"
        print(msg)
        return 0
    finally:
        cleanup(dist)


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = command(
        sub,
        "sample",
        "generate images from a run or checkpoint",
        "repflow sample runs/fashion --num-samples 100 --sampler heun --steps 50 --cfg 1.5 --cfg-interval 0,0.7",
        "repflow sample runs/fashion --classes sneaker,bag --num-samples 16 --npz",
        "torchrun --nproc_per_node 8 $(which repflow) sample runs/xl --num-samples 50000 --sampler sde --steps 250",
    )
    add_run_argument(s)
    # --num alone would stop torchrun: it rejects it as an ambiguous abbreviation of its own --numa-binding
    s.add_argument("--num-samples", "--num", dest="num", type=positive, default=64, help="samples 0..N-1")
    add_sampling_args(s)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--vae", default="", help="decode with this VAE (dir or hub id) instead of the one training used")
    s.add_argument("--npz", action="store_true", help="also write an ADM-style samples.npz")
    s.add_argument("--out", help="output folder")
    s.set_defaults(func=_sample)
