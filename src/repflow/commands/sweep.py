"""``repflow sweep RUN``: sampling settings of a checkpoint over a grid, to a table and a plot (``--write``: the
best becomes the run's default)."""

from __future__ import annotations

import argparse

from .eval import add_inception_args, add_metric_settings
from .options import add_run_argument, command, count, float_list, int_list, parse_interval, positive


def interval_list(text: str) -> list[tuple[float, float]]:
    """``0,1:0,0.7`` -> [(0, 1), (0, 0.7)]."""
    return [parse_interval(part) for part in text.split(":") if part.strip()]


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _sweep(args) -> int:
    from ..eval.evaluate import parse_metrics
    from ..eval.extractors import Extractors
    from ..eval.fdr import FDR6
    from ..eval.inception import load_inception
    from ..eval.sweep import SweepSpec, run_sweep
    from ..runtime.distributed import cleanup, setup_distributed

    grid = {"cfg": args.cfg, "cfg_interval": args.interval, "steps": args.steps, "sampler": args.sampler,
            "ema": args.ema}  # fmt: skip
    fdr_spaces = tuple(name_list(args.fdr_spaces)) if args.fdr_spaces else tuple(FDR6)
    spec = SweepSpec(run=args.run, grid={k: v for k, v in grid.items() if v is not None}, num_samples=args.num,
                     metrics=args.metrics, by=args.by or "", reference=args.ref or "", ref_count=args.ref_count,
                     data_root=args.data_root or "", seed=args.seed, batch_size=args.sample_batch_size, out=args.out,
                     write=args.write, keep_samples=args.keep_samples, inception_batch=args.batch_size,
                     encoder_paths=dict(args.encoder_path), kid_subsets=args.kid_subsets,
                     kid_subset_size=args.kid_subset_size, fdr_spaces=fdr_spaces,
                     fdr_norm=args.fdr_norm or "")  # fmt: skip
    want_logits = "is" in parse_metrics(args.metrics)[0]
    dist = setup_distributed(args.device)
    try:
        extractors = Extractors(lambda: load_inception(args.inception, args.resize, args.inception_fc, dist.device,
                                                       want_logits), spec.encoder_paths, dist.device)  # fmt: skip
        result = run_sweep(spec, extractors, dist)
        if not dist.is_main:
            return 0
        print(result.csv.read_text(), end="")
        b = result.best
        metric = spec.by or spec.metrics.split(",")[0].strip()
        print(f"best: {b['sampler']} {b['steps']} steps, cfg {b['cfg']} on [{b['interval_lo']}, {b['interval_hi']}], "
              f"EMA {b['ema']}: {metric} {b[metric]}; table: {result.csv}; plot: {result.png}")  # fmt: skip
        if result.written:
            print(f"stored in {result.written}: repflow sample / eval and repflow.load use it by default")
        return 0
    finally:
        cleanup(dist)


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = command(
        sub,
        "sweep",
        "measure sampling settings of a checkpoint over a grid (guidance, interval, steps, sampler, EMA)",
        "repflow sweep runs/fashion --cfg 1,1.5,2,3 --interval 0,1:0,0.7 --steps 25,50 --num-samples 500",
        "repflow sweep runs/jit --cfg 2.4,2.9 --ema 0.9999,0.9996 --write   # the best becomes the run's default",
        description="Every cell draws the same seeds with balanced labels and is measured against one cached "
        "reference; finished cells are kept when a sweep is interrupted and rerun.",
    )
    add_run_argument(s)
    s.add_argument("--cfg", type=float_list, help="guidance scales, e.g. 1,1.5,2,3 (default: the run's)")
    s.add_argument("--interval", type=interval_list, help="guidance intervals LO,HI separated by ':', e.g. 0,1:0,0.7")
    s.add_argument("--steps", type=int_list, help="solver steps, e.g. 25,50")
    s.add_argument("--sampler", type=name_list, help="samplers, e.g. heun,euler")
    s.add_argument("--ema", type=float_list, help="EMA decays the run keeps (0: raw weights), e.g. 0.9999,0.9996")
    s.add_argument("--num-samples", dest="num", type=positive, default=1000, help="samples per cell")
    s.add_argument("--metrics", default="fid", help="comma-separated metrics per cell, as repflow eval's (fid, kid, "
                   "fd_dinov2, fdr6, ...; default: fid)")  # fmt: skip
    s.add_argument("--by", help="the metric the best cell is chosen by (default: the first of --metrics)")
    s.add_argument("--ref", help="reference (default: the run's training data), as for repflow eval")
    s.add_argument("--ref-count", type=count, default=50000, help="images of a dataset/folder reference (0: all)")
    s.add_argument("--data-root", help="dataset root for a dataset reference")
    s.add_argument("--seed", type=int, help="sampling seed of every cell (default: the run's)")
    s.add_argument("--sample-batch-size", type=positive, help="images generated per batch")
    s.add_argument("--out", help="sweep folder (default <run>/sweep/<checkpoint>): sweep.csv, sweep.png, samples/")
    s.add_argument("--write", action="store_true", help="store the best setting as the run's sampling.json")
    s.add_argument("--keep-samples", action="store_true", help="keep each cell's PNGs after measuring them")
    add_metric_settings(s)
    add_inception_args(s)
    s.set_defaults(func=_sweep)
