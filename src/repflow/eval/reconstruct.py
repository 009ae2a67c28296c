"""Evaluating an autoencoder run (a method with a ``reconstructor``: ``rae_decoder``): the first N images of a
held-out split reconstructed and written as PNGs (sharded and resumable, like samples), their PSNR against the
originals, a grid of originals over reconstructions, and the folder handed on to FID against the same split
(rFID, as RAE reports it: reconstructions of ImageNet val against ImageNet val)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..data import build_dataset
from ..data.transforms import model_to_uint8, uint8_to_model
from ..runtime.distributed import DistInfo, barrier
from ..runtime.images import save_grid
from ..sample.load import load_run
from ..sample.sharded import read_samples, write_sharded

PSNR_CAP = 100.0  # dB, for an exact reconstruction (an infinite PSNR would make the mean meaningless)


@dataclass
class RunReconstructions:
    folder: Path
    cfg: Config
    psnr: float  # mean over images of 10 log10(255^2 / MSE) on the 8-bit images
    count: int
    reference: str  # the split the reconstructions are measured against (rFID)
    data_root: str
    provenance: dict


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two (N, C, H, W) uint8 batches, capped at ``PSNR_CAP``."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0**2 / mse.clamp_min(1e-30))).clamp(max=PSNR_CAP)


def reconstruct_run(
    run: str | Path,
    num: int,
    ema: float = -1.0,
    split: str = "test",
    data_root: str = "",
    folder: str | Path | None = None,
    dist: DistInfo | None = None,
    batch_size: int = 50,
    progress: bool = True,
) -> RunReconstructions:
    """Make sure reconstructions ``0..num-1`` of ``split`` exist in ``folder`` (default
    ``<run>/eval/recon-<checkpoint>-<ema>-<split>``) and measure their PSNR (on the main process)."""
    dist = dist or DistInfo()
    loaded = load_run(str(run), ema=ema, device=dist.device)
    cfg, ckpt = loaded.cfg, loaded.ckpt
    if loaded.reconstruct is None:
        raise ValueError(f"{ckpt.path} was trained with method {cfg.method.kind}, which does not reconstruct images")
    data = dataclasses.replace(cfg.data, split=split, root=data_root or cfg.data.root, hflip=False)
    dataset = build_dataset(data, num_classes_hint=max(cfg.model.num_classes, 1))
    num = min(num, len(dataset))
    weights = "raw" if loaded.ema == "raw" else f"ema{loaded.ema:g}"
    folder = Path(folder or ckpt.run_dir / "eval" / f"recon-{ckpt.path.name}-{weights}-{split}")
    described = {"dataset": data.dataset, "split": split, "root": data.root, "resolution": data.resolution}
    manifest = {"checkpoint": str(ckpt.path.resolve()), "ema": loaded.ema, "reconstruct": described}

    def originals(indices: list[int]) -> torch.Tensor:
        return dataset.get_batch([(i, False) for i in indices]).images

    def make(indices: list[int]) -> tuple[torch.Tensor, int]:
        x = uint8_to_model(originals(indices)).to(dist.device)
        return model_to_uint8(loaded.reconstruct(x)).cpu(), 1

    write_sharded(make, folder, num, batch_size, manifest, dist, progress, what="reconstructing")
    psnr = 0.0
    if dist.is_main:
        total = 0.0
        for lo in range(0, num, batch_size):
            idx = list(range(lo, min(lo + batch_size, num)))
            total += psnr_uint8(read_samples(folder, idx), originals(idx)).sum().item()
        psnr = total / num
        shown = list(range(min(num, 32)))
        rows = []
        for lo in range(0, len(shown), 8):  # originals over their reconstructions, 8 per row
            idx = shown[lo : lo + 8]
            rows += [originals(idx), read_samples(folder, idx)]
        save_grid(torch.cat(rows), folder / "grid.png", nrow=min(8, len(shown)))
    barrier(dist)
    reference = f"{data.dataset}:{split}" if data.dataset != "image_folder" else "image_folder:train"
    provenance = {"checkpoint": str(ckpt.path), "ema": loaded.ema, "reconstructions": str(folder),
                  "split": split, "psnr": psnr if math.isfinite(psnr) else None}  # fmt: skip
    return RunReconstructions(folder, cfg, psnr, num, reference, data.root, provenance)
