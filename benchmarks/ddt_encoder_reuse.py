"""DDT's encoder reuse at sampling: wall time of Euler sampling with ``sample.encoder_reuse`` N (the encoder runs
at every N-th evaluation) on a randomly initialised DDT at 256 px in SD-VAE latents (32x32x4, 256 tokens).

    python benchmarks/ddt_encoder_reuse.py --arch DDT-B/2 --steps 10 --batch 2 --reuse 1 2 4

Prints the median of ``--repeats`` timings per N and the share of block evaluations N leaves (the encoder's
blocks run 1/N as often). Timing only: what reuse costs in FID needs a trained model (repflow eval with
--encoder-reuse N on one).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from repflow.config import load_config
from repflow.flow.generate import generate
from repflow.methods import FlowMethod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="DDT-B/2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reuse", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = load_config(None, ["model.family=ddt", f"model.arch={args.arch}", "model.input_size=32",
                             "model.in_channels=4", "model.num_classes=1000", "sample.sampler=euler",
                             f"sample.steps={args.steps}", "sample.cfg=1.0"])  # fmt: skip
    torch.manual_seed(0)
    model = FlowMethod.inference_networks(cfg)["model"].eval()
    denoiser = FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"))
    labels = torch.arange(args.batch)
    enc, depth = model.encoder_depth, len(model.blocks)
    print(f"{args.arch}: {enc} encoder + {depth - enc} decoder blocks, {args.steps} Euler steps, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    base = None
    for n in args.reuse:
        opts = dataclasses.replace(cfg.sample, encoder_reuse=n)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            generate(denoiser, opts, range(args.batch), labels)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        base = base or t
        evals = -(-args.steps // n) * enc + args.steps * (depth - enc)
        share = evals / (args.steps * depth)
        print(f"encoder_reuse {n}: {t:.2f} s ({t / base:.0%} of N=1), block evaluations {share:.0%}")


if __name__ == "__main__":
    main()
