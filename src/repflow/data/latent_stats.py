"""``repflow codec stats``: per-element (RAE) or per-channel (VAE) mean and variance of a codec's latents over a
dataset, in one streaming pass, exactly.

The official RAE code estimates them with a momentum running average (so the result depends on the batch
order and is not the dataset's statistics). Here every batch contributes its count, mean and sum of squared
deviations in float64, merged with Chan's pairwise rule; processes under torchrun take disjoint index
ranges and their partial results are merged in rank order, so the file is the same for any batch size or
process count (up to float64 rounding) and equals a one-pass computation over all latents.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..runtime.distributed import DistInfo
from .datasets import ImageDataset
from .transforms import uint8_to_model


@dataclass
class Moments:
    """count, mean and M2 (sum of squared deviations) per element, float64."""

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, batch: Tensor) -> Moments:
        x = batch.double()
        mean = x.mean(0)
        return cls(x.shape[0], mean, ((x - mean) ** 2).sum(0))

    def merge(self, other: Moments) -> Moments:
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def var(self) -> Tensor:
        """The population variance (as the official statistics: ``unbiased=False``)."""
        return self.m2 / max(self.count, 1)


def latent_moments(
    encode, dataset: ImageDataset, indices: list[int], flips: bool, batch_size: int, progress: bool = True
) -> Moments:
    """Moments of ``encode(images in [-1, 1])`` over the dataset items ``indices`` (and their mirror images)."""
    total = Moments(0, torch.zeros(()), torch.zeros(()))
    items = [(i, f) for i in indices for f in ((False, True) if flips else (False,))]
    bar = tqdm(total=len(items), desc="latent statistics", unit="img", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        z = encode(uint8_to_model(dataset.get_batch(chunk).images))
        total = total.merge(Moments.of(z.cpu()))
        bar.update(len(chunk))
    bar.close()
    return total


def gather_moments(local: Moments, dist: DistInfo) -> Moments:
    """Every rank's moments merged in rank order (the same result on every rank)."""
    if not dist.enabled:
        return local
    import torch.distributed as tdist

    parts: list = [None] * dist.world
    tdist.all_gather_object(parts, (local.count, local.mean.cpu(), local.m2.cpu()))
    out = Moments(0, torch.zeros(()), torch.zeros(()))
    for count, mean, m2 in parts:
        out = out.merge(Moments(count, mean, m2))
    return out


def save_stats(path: str | Path, mean: Tensor, var: Tensor, count: int, meta: dict) -> Path:
    """``mean`` and ``var`` (float32) and ``meta`` (JSON, with the count of latents and the time) as .safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "count": count, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_name(path.name + ".tmp")
    save_file({"mean": mean.float().contiguous(), "var": var.float().contiguous()}, str(tmp),
              metadata={"repflow": json.dumps(meta)})  # fmt: skip
    tmp.replace(path)
    return path


def _as_mean_var(tensors: dict) -> dict:
    """LightningDiT's ``{mean, std}`` and REPA-E's ``{latents_bias, latents_scale}`` as ``{mean, var}`` (in
    float64: ``1 / sqrt(var)`` then gives their scale back to rounding)."""
    if set(tensors) == {"mean", "std"} and all(isinstance(t, Tensor) for t in tensors.values()):
        return {"mean": tensors["mean"], "var": tensors["std"].double() ** 2}
    if set(tensors) == {"latents_bias", "latents_scale"} and all(isinstance(t, Tensor) for t in tensors.values()):
        return {"mean": tensors["latents_bias"], "var": tensors["latents_scale"].double() ** -2}
    return tensors


def load_stats(path: str | Path) -> tuple[Tensor, Tensor, dict]:
    """(mean, var, metadata), per element (C, h, w) or per channel (C, 1, 1): a ``repflow codec stats`` file
    (.safetensors), the official RAE ``stat.pt`` / RAEv2 ``stats.pt`` (``torch.save({"mean": ..., "var":
    ...})``, population variance; both normalise ``(z - mean) / sqrt(var + 1e-5)``, so either is used as it is),
    LightningDiT's ``latents_stats.pt`` (``{"mean", "std"}``: ``(z - mean) / std``) or REPA-E's
    ``*-latents-stats.pt`` (``{"latents_bias", "latents_scale"}``: ``(z - bias) * scale``), read without
    unpickling code."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path, meta = Path(path), {}
    if not path.is_file():
        raise FileNotFoundError(f"latent statistics '{path}' do not exist; make them with `repflow codec stats`")
    if path.suffix == ".safetensors":
        tensors: Any = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("repflow", "{}"))
    else:
        from ..runtime.safe_load import load_plain

        tensors = load_plain(path, "latent statistics")
    tensors = _as_mean_var(tensors) if isinstance(tensors, dict) else tensors
    if not isinstance(tensors, dict) or set(tensors) != {"mean", "var"}:
        what = sorted(map(str, tensors)) if isinstance(tensors, dict) else type(tensors).__name__
        raise ValueError(f"'{path}' holds {what}; latent statistics are a dict of two tensors, 'mean' and "
                         "'var' (or LightningDiT's 'mean' and 'std', REPA-E's 'latents_bias' and "
                         "'latents_scale')")  # fmt: skip
    mean, var = tensors["mean"], tensors["var"]
    if not (isinstance(mean, Tensor) and isinstance(var, Tensor)) or mean.shape != var.shape:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (mean, var)]
        raise ValueError(f"'{path}': 'mean' {shapes[0]} and 'var' {shapes[1]} must be tensors of one shape")
    if mean.dim() == 4 and mean.shape[0] == 1:  # a (1, C, h, w) batch axis, as some scripts keep it
        mean, var = mean[0], var[0]
    if mean.dim() != 3:
        raise ValueError(f"'{path}' holds {tuple(mean.shape)} statistics; expected one per latent element (C, h, w)")
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all() and (var >= 0).all()):
        raise ValueError(f"'{path}' holds non-finite statistics or a negative variance")
    return mean, var, meta
