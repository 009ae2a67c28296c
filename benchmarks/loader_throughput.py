"""Images/s delivered by the cached-latent loader (and latents + a REPA-like feature cache), by worker count.

    python benchmarks/loader_throughput.py [--num 8192] [--batch 256] [--workers 0,1,2,4] [--dir /fast/disk]

Builds two array stores of random values with the real ImageNet-256 layouts, through the same code as
``repflow cache latents``: SD-VAE posteriors (mean + std, 4x32x32 float32 each, with mirror images) and
DINOv2-B/14-like features (256x768 patch tokens + a 768 class vector, float16). Then it times the training
loader (``ResumableBatchSampler`` -> ``CachedDataset`` -> ``DataLoader``) in random order, warm (files in the
page cache) and cold (the files' pages evicted first with ``posix_fadvise``, so reads hit the disk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repflow.data import ArrayStore, CachedDataset, Field, ImageDataset, build_loader  # noqa: E402
from repflow.data.loader import ResumableBatchSampler  # noqa: E402


class LabelsOnly(ImageDataset):
    """What a cached run needs from the image dataset: its length and labels."""

    def __init__(self, n: int):
        self.labels = torch.arange(n) % 1000
        self.num_classes = 1000

    def __len__(self) -> int:
        return len(self.labels)


def build_store(path: Path, n: int, fields: dict[str, Field], flips: bool) -> ArrayStore:
    store = ArrayStore.create(path, n, fields, {"kind": "bench"}, flips=flips, shard_size=1024)
    rng = np.random.default_rng(0)
    for k in store.pending_shards():
        items = store.shard_items(k)
        rows = len(items) * store.copies
        values = {
            name: rng.standard_normal((rows, *f.shape), dtype=np.float32).astype(f.dtype) for name, f in fields.items()
        }
        store.write_items(items.start, values)
        store.mark_done(k)
    return ArrayStore.open(path)


def evict(store: ArrayStore) -> None:
    """Drop this store's pages from the page cache (only our files; nothing else on the machine)."""
    for name in store.fields:
        fd = os.open(store.path / f"{name}.npy", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_up(store: ArrayStore) -> None:
    """Read the store's files once so that they sit in the page cache."""
    for name in store.fields:
        with open(store.path / f"{name}.npy", "rb") as f:
            while f.read(64 << 20):
                pass


def measure(
    stores: dict[str, ArrayStore], n: int, batch: int, workers: int, batches: int, cold: bool, repeat: int = 0
) -> float:
    dataset = CachedDataset(LabelsOnly(n), stores)
    for s in stores.values():
        evict(s) if cold else warm_up(s)
    # a fresh seed per measurement: warm runs read pages the first pass cached, cold runs read from disk
    hflip = all(s.flips for s in stores.values())  # the feature store here has no mirror images
    sampler = ResumableBatchSampler(n, batch, seed=1000 * repeat + workers + 10 * cold, hflip=hflip)
    loader = iter(build_loader(dataset, sampler, workers=workers))
    for _ in range(2):  # start-up: worker processes, first reads
        next(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(loader)
        assert b.arrays["latents.mean"].shape[0] == batch
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=8192, help="images in the cache")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", default="0,1,2,4")
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per cell; the median is shown")
    p.add_argument("--dir", default=None, help="where to build the caches (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the caches afterwards")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.dir or tempfile.mkdtemp(prefix="repflow-bench-"))
    t0 = time.perf_counter()
    latents = build_store(
        root / "latents", args.num, {"mean": Field((4, 32, 32), "float32"), "std": Field((4, 32, 32), "float32")}, True
    )
    features = build_store(
        root / "features", args.num, {"patch": Field((256, 768), "float16"), "cls": Field((768,), "float16")}, False
    )
    size = {k: sum((s.path / f"{f}.npy").stat().st_size for f in s.fields) / 2**30 for k, s in
            (("latents", latents), ("features", features))}  # fmt: skip
    print(f"built caches of {args.num} images in {time.perf_counter() - t0:.0f}s under {root}: "
          f"latents {size['latents']:.2f} GiB (with mirror images), features {size['features']:.2f} GiB")  # fmt: skip
    cpus, reps = os.cpu_count(), f"{args.repeats} x {args.batches}"
    print(f"CPU: {cpus} cores; batch {args.batch}; images/s delivered (median of {reps} batches)\n")
    per_image = {"latents": 2 * 4 * 32 * 32 * 4, "latents + features": 2 * 4 * 32 * 32 * 4 + (256 * 768 + 768) * 2}
    print(f"{'cache':<20} {'pages':<6} " + " ".join(f"{f'{w} workers':>11}" for w in args.workers.split(",")))
    for name, stores in (
        ("latents", {"latents": latents}),
        ("latents + features", {"latents": latents, "features": features}),
    ):
        for cold in (False, True):
            rates = [
                statistics.median(measure(stores, args.num, args.batch, int(w), args.batches, cold, r)
                                  for r in range(args.repeats))
                for w in args.workers.split(",")
            ]  # fmt: skip
            print(f"{name:<20} {'cold' if cold else 'warm':<6} " + " ".join(f"{r:>11,.0f}" for r in rates)
                  + f"   (best {max(rates) * per_image[name] / 2**20:,.0f} MiB/s)")  # fmt: skip
    if not args.keep and args.dir is None:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
