"""Sharded, resumable generation: N samples as PNGs named by global index, split over torchrun processes.

Process ``r`` of ``w`` generates indices ``r, r + w, r + 2w, ...``; an index whose PNG already exists is
skipped, so an interrupted 50K-sample run resumes where it stopped. PNGs are written under a temporary
name and renamed, so an existing name always holds a complete image. Because every sample draws its
noise from its own seeded generator (``noise.py``), the images do not depend on the number of processes,
the batch size, or how often the run was interrupted.

A ``samples.json`` manifest records what the folder's images were generated with; resuming into a folder
made with different settings is refused rather than silently mixing two models' samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import SampleConfig, to_dict
from ..flow.generate import balanced_labels, sample_images
from ..runtime.distributed import DistInfo, barrier
from ..runtime.images import save_pngs
from ..runtime.lock import DirectoryLock
from ..runtime.safe_load import read_json

MANIFEST = "samples.json"


def sample_path(folder: str | Path, index: int) -> Path:
    """The PNG of sample ``index`` (the name ``save_pngs`` writes)."""
    return Path(folder) / f"{int(index):06d}.png"


def shard_indices(num: int, rank: int = 0, world: int = 1) -> list[int]:
    """The global indices process ``rank`` of ``world`` is responsible for."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    return list(range(rank, num, world))


def read_samples(folder: str | Path, indices) -> torch.Tensor:
    """(N, C, H, W) uint8 of the given samples' PNGs (C = 1 for greyscale)."""
    arrays = [np.asarray(Image.open(sample_path(folder, i))) for i in indices]
    batch = torch.from_numpy(np.stack(arrays))
    return batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)


class Generated(NamedTuple):
    count: int  # samples this process generated (0 when all of its shard was already there)
    nfe: int  # network evaluations per sample (the most over batches: dopri5 adapts its steps)


def pending_indices(folder: str | Path, indices: list[int]) -> list[int]:
    return [i for i in indices if not sample_path(folder, i).is_file()]


def describe_labels(num_classes: int, classes: list[int] | None = None) -> str:
    if num_classes <= 0:
        return "unconditional"
    return f"classes {list(classes)}[index mod {len(classes)}]" if classes else f"index mod {num_classes}"


def sampling_manifest(
    checkpoint: str, ema: float, opts: SampleConfig, num_classes: int, classes: list[int] | None = None
) -> dict:
    """Everything the images depend on, except how many there are."""
    labels = describe_labels(num_classes, classes)
    return {"checkpoint": str(checkpoint), "ema": ema, "labels": labels, "sample": to_dict(opts)}


def _without_batch_size(manifest: dict) -> dict:
    """The manifest as compared: the batch size changes nothing in the images (noise is per sample)."""
    return {k: _without_batch_size(v) if isinstance(v, dict) else v for k, v in manifest.items() if k != "batch_size"}


def _with_defaults(old: dict) -> dict:
    """An older manifest lacks the sampling options added since; its images were made with their defaults
    (the behaviour before the option existed, e.g. ``sample.cfg_rule=step``)."""
    if not isinstance(old.get("sample"), dict):
        return old
    return {**old, "sample": {**to_dict(SampleConfig()), **old["sample"]}}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _refuse_foreign(folder: Path) -> None:
    """A run's folder, or PNGs that no manifest describes (one's own images), are never written into."""
    if (folder / "checkpoints").is_dir() or (folder / "config.yaml").is_file():
        raise ValueError(f"'{folder}' is a run or checkpoint folder; write samples to another folder")
    if not (folder / MANIFEST).is_file() and any(folder.glob("[0-9]" * 6 + ".png")):  # written before any image
        raise ValueError(f"'{folder}' holds numbered PNGs that repflow sample did not write (no {MANIFEST}); "
                         "write to another folder")  # fmt: skip


def _claim_folder(folder: Path, manifest: dict) -> None:
    """Write the manifest, or check that an existing one describes the same images. A manifest over a folder
    without images (a run that failed before its first one) is replaced, not obeyed."""
    path = folder / MANIFEST
    if any(folder.glob("[0-9]" * 6 + ".png")):  # and a manifest: write_sharded refused images without one
        old = read_json(path)
        if not isinstance(old, dict):
            raise ValueError(f"{path} is damaged; delete it or write to another folder")
        old = _with_defaults(old)
        diff = _differences(_without_batch_size(old), _without_batch_size(manifest))
        if diff:
            raise ValueError(f"{folder} holds images made with other settings ({', '.join(diff)} differ); "
                             "write to another folder or delete it")  # fmt: skip
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)


def write_sharded(
    make: Callable[[list[int]], tuple[torch.Tensor, int]],
    folder: str | Path,
    num: int,
    batch_size: int,
    manifest: dict,
    dist: DistInfo | None = None,
    progress: bool = True,
    what: str = "sampling",
) -> Generated:
    """Write the missing PNGs ``0..num-1`` of ``folder`` that belong to this process, ``batch_size`` at a time;
    ``make(indices)`` returns their (N, C, H, W) uint8 images and its network evaluations per image.

    Every process must call this (it synchronises on a barrier before and after). Rank 0 holds the folder's
    lock meanwhile: a second job writing into the same folder stops with one line.
    """
    dist = dist or DistInfo()
    folder = Path(folder)
    if num <= 0:
        raise ValueError(f"the number of images must be positive, got {num}")
    _refuse_foreign(folder)  # before the lock file is made there
    lock = DirectoryLock(folder, "sample folder").acquire() if dist.is_main else None
    try:
        if dist.is_main:
            _claim_folder(folder, manifest)
        barrier(dist)
        if not dist.is_main:
            _claim_folder(folder, manifest)  # the main process wrote it; every rank checks the same thing
        todo = pending_indices(folder, shard_indices(num, dist.rank, dist.world))
        bar = tqdm(total=len(todo), desc=f"{what} (rank {dist.rank})" if dist.enabled else what,
                   unit="img", disable=not progress or not todo, dynamic_ncols=True)  # fmt: skip
        nfe = 0
        with torch.inference_mode():
            for lo in range(0, len(todo), batch_size):
                idx = todo[lo : lo + batch_size]
                images, batch_nfe = make(idx)
                save_pngs(images, folder, idx)
                nfe = max(nfe, batch_nfe)
                bar.update(len(idx))
        bar.close()
        barrier(dist)
    finally:
        if lock is not None:
            lock.release()
    return Generated(len(todo), nfe)


def generate_sharded(
    denoiser,
    folder: str | Path,
    num: int,
    opts: SampleConfig,
    manifest: dict,
    dist: DistInfo | None = None,
    progress: bool = True,
    guide=None,
    classes: list[int] | None = None,
) -> Generated:
    """Generate the missing samples ``0..num-1`` of ``denoiser`` that belong to this process (``guide``: a
    second denoiser for AutoGuidance; ``classes``: sample i has ``classes[i mod len]``); see ``write_sharded``."""

    def make(idx: list[int]) -> tuple[torch.Tensor, int]:
        return sample_images(denoiser, opts, idx, balanced_labels(idx, denoiser.num_classes, classes), guide=guide)

    return write_sharded(make, folder, num, opts.batch_size, manifest, dist, progress)
