"""REG's cost over SiT: parameters, FLOPs (counted from the architecture) and forward latency measured side by
side (interleaved runs, median), at SiT-XL/2 and 256 px (32x32x4 latents) by default.

    python benchmarks/reg_overhead.py [--arch SiT-XL/2] [--batch 4] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from repflow.config import ModelConfig
from repflow.models import build_model
from repflow.models.flops import forward_flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="SiT-XL/2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cls-dim", type=int, default=768, help="encoder width (DINOv2-B: 768)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = ModelConfig(arch=args.arch, num_classes=1000, input_size=32, in_channels=4)
    torch.manual_seed(0)
    models = {
        "SiT": build_model(cfg).to(device).eval(),
        "SiT+REG": build_model(cfg, vector_streams={"cls": args.cls_dim}).to(device).eval(),
    }
    b = args.batch
    inputs = {
        "SiT": {"x": torch.randn(b, 4, 32, 32, device=device)},
        "SiT+REG": {"x": torch.randn(b, 4, 32, 32, device=device), "cls": torch.randn(b, args.cls_dim, device=device)},
    }
    t, y = torch.rand(b, device=device), torch.randint(0, 1000, (b,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def run(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            models[name](inputs[name], t, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in models:  # warm-up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):  # interleaved so drifts in machine load hit both alike
        for name in models:
            times[name].append(run(name))

    print(f"{args.arch}, 256 px (32x32x4), batch {b}, {device.type}, {args.repeats} interleaved repeats")
    print(f"{'model':10s} {'params (M)':>11s} {'GFLOPs/img':>11s} {'GMACs/img':>10s} {'median ms':>10s}")
    rows = {}
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        flops = forward_flops(model) / 1e9
        ms = statistics.median(times[name]) * 1e3
        rows[name] = (params, flops, ms)
        print(f"{name:10s} {params:11.2f} {flops:11.2f} {flops / 2:10.2f} {ms:10.1f}")
    (p0, f0, t0), (p1, f1, t1) = rows["SiT"], rows["SiT+REG"]
    print(f"REG overhead: params +{(p1 / p0 - 1) * 100:.2f}%, FLOPs +{(f1 / f0 - 1) * 100:.2f}%, "
          f"latency {(t1 / t0 - 1) * 100:+.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
