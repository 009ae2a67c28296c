"""Encode a dataset into an :class:`ArrayStore` once: sharded over processes, resumable, with a progress bar.

This is the engine of ``repflow cache latents`` (and of any other per-image cache, e.g. encoder features): the
caller gives the fields, a function ``images -> {field: tensor}`` and the identity ``meta`` the reader will
check. Under ``torchrun`` every rank takes its share of the unfinished shards; a rerun after an interruption
keeps the finished shards and redoes only the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..runtime.distributed import DistInfo, barrier, broadcast_object
from .datasets import ImageDataset
from .loader import default_workers
from .store import SOURCE, ArrayStore, Field

MAX_SHARD = 4096  # images per shard by default: minutes of work on one GPU, so little is redone after a kill
EncodeFn = Callable[[Tensor], Mapping[str, Tensor]]


@dataclass
class EncodeReport:
    store: ArrayStore
    encoded: int = 0  # rows (items x copies) this process encoded in this call
    shards_done_before: int = 0  # finished shards found at the start (kept, not redone)
    seconds: float = 0.0
    bad_files: list[str] = field(default_factory=list)  # unreadable files replaced, over the whole store

    @property
    def rate(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


class _ShardBatches:
    """The loader's sampler: batches of ``(index, False)`` items, never crossing a shard boundary."""

    def __init__(self, store: ArrayStore, shards: list[int], batch_size: int):
        self.plan: list[tuple[int, int, int]] = []  # (shard, first item, end item)
        for k in shards:
            items = store.shard_items(k)
            for lo in range(items.start, items.stop, batch_size):
                self.plan.append((k, lo, min(lo + batch_size, items.stop)))

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for _, lo, hi in self.plan:
            yield [(i, False) for i in range(lo, hi)]

    def __len__(self) -> int:
        return len(self.plan)


def with_flips(images: Tensor) -> Tensor:
    """(B, C, H, W) -> (2B, C, H, W): each image followed by its mirror, matching store rows index*2 + flip."""
    return torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1)


def cache_meta(kind: str, key: str, identity: Mapping[str, Any], resolution: int, dataset: ImageDataset) -> dict:
    """What a per-image cache must match, checked when it is resumed and when a run opens it: the identity of
    what encoded it (``key``: a codec's or an encoder's), the resolution, the image count and the dataset."""
    return {"kind": kind, key: dict(identity), "resolution": resolution, "count": len(dataset),
            "dataset": dataset.fingerprint()}  # fmt: skip


def cache_images(
    data: Any, dataset: ImageDataset, out: str | Path, fields: Mapping[str, Field], encode: EncodeFn,
    meta: Mapping[str, Any], source: Mapping[str, Any], **options: Any,
) -> EncodeReport:  # fmt: skip
    """:func:`encode_dataset` with the store's ``info`` filled in: ``source`` (where the encoder's weights came
    from), the data section ``data``, the repflow version and the time. ``options``: encode_dataset's."""
    from .. import __version__
    from ..config import to_dict

    info = {**source, "data": to_dict(data), "repflow": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return encode_dataset(dataset, out, fields, encode, meta, info=info, **options)


def encode_dataset(
    dataset: ImageDataset,
    out: str | Path,
    fields: Mapping[str, Field],
    encode: EncodeFn,
    meta: Mapping[str, Any],
    *,
    flips: bool = False,
    batch_size: int = 64,
    workers: int = -1,
    shard_size: int = 0,
    overwrite: bool = False,
    info: Mapping[str, Any] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    desc: str = "encoding",
) -> EncodeReport:
    """Encode every image of ``dataset`` (and its mirror image if ``flips``) into the store at ``out``.

    ``encode`` receives uint8 images (B, C, H, W) on the CPU and returns one tensor (B, *shape) per field.
    ``shard_size`` (the unit of resuming) 0 picks at least 8 shards per process, at most 4096 images each; a
    resumed store keeps the shard size it was created with.
    """
    if SOURCE in fields:
        raise ValueError(f"'{SOURCE}' is a reserved field name")
    dist = dist or DistInfo()
    all_fields = {**fields, SOURCE: Field((), "int64")}
    shard_size = shard_size or min(MAX_SHARD, max(1, -(-len(dataset) // (8 * dist.world))))
    grouped = dist.enabled and torch.distributed.is_initialized()
    store = None
    if dist.is_main:
        store = ArrayStore.create(out, len(dataset), all_fields, meta, flips, shard_size, info, overwrite)
    if grouped:
        barrier(dist)
    if store is None:  # other ranks: rank 0 has created (or validated) it
        store = ArrayStore.open(out, expect=meta, complete=False)
    if grouped:  # one view of what is left, dealt out evenly (a resumed run may have few shards left)
        pending = broadcast_object(store.pending_shards() if dist.is_main else None, dist)
        mine = pending[dist.rank :: dist.world]
    else:  # independently launched shards (no process group): a fixed assignment that cannot overlap
        pending = store.pending_shards()
        mine = [k for k in pending if k % dist.world == dist.rank]
    report = EncodeReport(store, shards_done_before=store.num_shards - len(pending))
    batches = _ShardBatches(store, mine, batch_size)
    workers = default_workers(dataset) if workers < 0 else workers
    loader = DataLoader(
        dataset, sampler=batches, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    bar = _progress(sum(len(store.shard_items(k)) for k in mine) * store.copies, desc, progress and dist.is_main)
    t0 = shard_t0 = time.perf_counter()
    shard_bad: list[str] = []
    for (k, lo, hi), batch in zip(batches.plan, loader, strict=True):
        images = with_flips(batch.images) if store.flips else batch.images
        values = {name: v.detach().cpu() for name, v in encode(images).items()}
        values[SOURCE] = batch.indices.repeat_interleave(store.copies)
        store.write_items(lo, values)
        shard_bad.extend(f for f in batch.bad_files if f not in shard_bad)
        report.encoded += (hi - lo) * store.copies
        bar.update((hi - lo) * store.copies)
        if hi == store.shard_items(k).stop:  # the shard's last batch: make it durable, then mark it
            store.mark_done(k, {"bad_files": shard_bad, "seconds": round(time.perf_counter() - shard_t0, 3)})
            shard_bad, shard_t0 = [], time.perf_counter()
    bar.close()
    report.seconds = time.perf_counter() - t0
    if grouped:
        barrier(dist)
    report.bad_files = list(dict.fromkeys(f for r in store.records() for f in r.get("bad_files", [])))
    return report


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    # unit "img": tqdm shows the rate as img/s (with k/M prefixes)
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, disable=not enabled, smoothing=0.1)


__all__ = ["SOURCE", "EncodeReport", "encode_dataset", "with_flips"]
