"""``repflow bench inception``: images per second of the FID Inception, the layers one by one (the path before
the CPU work) against the frozen, channels-last, chunked path, on the same images, with the largest difference of
their features."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    name: str
    images_per_s: float  # wall clock, best of the repeats
    cpu_s_per_image: float  # process CPU time (all threads) per image, same repeat
    spread: tuple[float, ...]  # images/s of every repeat


def _time(fn, images: torch.Tensor, batch: int, repeats: int, name: str) -> tuple[Timing, torch.Tensor]:
    fn(images[:2])  # warm-up (the optimised path is built here)
    rates, best, pools = [], (0.0, 0.0), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        pools = torch.cat([fn(b) for b in images.split(batch)])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(len(images) / wall)
        best = max(best, (len(images) / wall, cpu / len(images)))
    return Timing(name, best[0], best[1], tuple(rates)), pools


def bench_inception(inception, num: int = 48, resolution: int = 32, batch: int = 50, repeats: int = 3, seed: int = 0):
    """(timings before and after, max |pool_3 difference|) on ``num`` random ``resolution`` px images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 3, resolution, resolution), dtype=torch.uint8, generator=g)

    def run(optimise: bool):
        inception.optimise = optimise
        return lambda x: inception(x, spatial=True, logits=False).pool

    with torch.inference_mode():
        before, a = _time(run(False), images, batch, repeats, "layers one by one (before)")
        after, b = _time(run(True), images, batch, repeats, "frozen, one image per thread (after)")
    inception.optimise = None
    return [before, after], float((a - b).abs().max())


def format_timings(timings: list[Timing], diff: float, threads: int, num: int, resolution: int, batch: int) -> str:
    lines = [f"FID Inception on the CPU, {threads} threads, {num} images of {resolution} px resized to 299, "
             f"batch {batch}"]  # fmt: skip
    for t in timings:
        spread = ", ".join(f"{r:.2f}" for r in t.spread)
        lines.append(f"  {t.name:40s} {t.images_per_s:6.2f} images/s  {t.cpu_s_per_image:6.3f} CPU s/image  "
                     f"(repeats: {spread})")  # fmt: skip
    lines.append(f"  speed-up {timings[1].images_per_s / timings[0].images_per_s:.2f}x; "
                 f"max |pool_3 difference| {diff:.2e}")  # fmt: skip
    return "\n".join(lines)
