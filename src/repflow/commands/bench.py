"""``repflow bench throughput`` and ``repflow bench sample``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import SAMPLERS
from .options import count, examples, int_list


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
        p.add_argument("--methods", default="sit,repa,reg", help="comma-separated: sit, repa, reg")
        p.add_argument("--batch", type=count, default=256 if sampling else 64)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
        p.add_argument("--repeats", type=count, default=2 if sampling else 10, help="timed iterations (median)")
        p.add_argument("--out", help="write the results as JSON here")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.compile=true train.precision=bf16")
        if sampling:
            p.add_argument("--steps", type=count, default=50)
            p.add_argument("--sampler", default="heun", choices=SAMPLERS)
            p.add_argument("--cfg", type=float, default=1.5)
        p.set_defaults(func=lambda a, s=sampling: _run(a, s))
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
