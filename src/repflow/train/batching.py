"""Turning a loader batch into what the objective trains on: model-space data, labels, encoder features.

This is where the codec runs (or cached latents are read) and where frozen encoders run (or cached features
are read), so the loop never knows which of those a run uses.

A stochastic codec (a VAE) contributes randomness: every step draws a fresh posterior sample
``mean + std * eps``. Like :class:`repflow.flow.loss.FlowDraw`, ``eps`` is drawn once per step for the
*global* batch from the generator all ranks share (:meth:`BatchPreparer.begin_step`) and each micro-batch
takes its slice ``chunk = micro_step * world + rank``, so a sample's latent does not depend on the number of
processes or accumulation steps, and cached and on-the-fly encoding give the same training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..codecs.cache import LATENTS
from ..config import Config
from ..data.datasets import Batch
from ..data.transforms import uint8_to_model
from ..encoders.cache import store_name
from ..methods.base import TrainBatch


class BatchPreparer:
    def __init__(self, cfg: Config, codec, device: torch.device, encoders: list | None = None,
                 keep_images: bool = False, pixels: bool = False):  # fmt: skip
        """``keep_images``: the batch carries the pixel images too (methods that look at pixels); ``pixels``:
        its ``x`` is the images themselves (a method that encodes them with a network it trains)."""
        self.cfg, self.codec, self.device, self.keep_images = cfg, codec, device, keep_images
        self.pixels = pixels
        self.encoders = list(encoders or [])
        self.conditional = cfg.model.num_classes > 0
        self.shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
        self._eps: Tensor | None = None

    def begin_step(self, generator: torch.Generator | None, global_batch: int) -> None:
        """Draw this step's codec noise for the whole global batch (call at micro-step 0, before the flow draw)."""
        if self.codec.stochastic and not self.pixels:
            device = generator.device if generator is not None else self.device
            self._eps = torch.randn((global_batch, *self.shape), generator=generator, device=device)

    @torch.no_grad()
    def __call__(self, raw: Batch, chunk: int = 0) -> TrainBatch:
        """The micro-batch ``chunk`` (= micro_step * world + rank) of the current step."""
        y = raw.labels.to(self.device, non_blocking=True) if self.conditional else None
        images = uint8_to_model(raw.images.to(self.device, non_blocking=True)) if raw.images.numel() else None
        return TrainBatch(x=self.model_space(raw, images, chunk), y=y, features=self.features(raw, images),
                          images=images if self.keep_images else None)  # fmt: skip

    def model_space(self, raw: Batch, images: Tensor | None, chunk: int) -> Tensor:
        if self.pixels:
            return images
        cached = f"{LATENTS}.mean" in raw.arrays  # a cached posterior (or a deterministic codec's latent)
        if not cached and not self.codec.stochastic:
            return self.codec.encode(images)
        if cached:  # no image was decoded
            mean = raw.arrays[f"{LATENTS}.mean"].to(self.device, non_blocking=True)
            std = raw.arrays.get(f"{LATENTS}.std")
            std = None if std is None else std.to(self.device, non_blocking=True)
        else:
            mean, std = self.codec.moments(images)
        if not self.codec.stochastic:
            return self.codec.sample(mean)  # deterministic codec: zero posterior noise
        if self._eps is None:
            raise RuntimeError("BatchPreparer.begin_step() must draw the step's posterior noise first")
        n = mean.shape[0]
        eps = self._eps[chunk * n : (chunk + 1) * n].to(self.device)
        return self.codec.sample(mean, std, eps)

    def features(self, raw: Batch, images: Tensor | None) -> dict[str, Tensor]:
        features = {}
        for i, encoder in enumerate(self.encoders):
            cached = f"{store_name(i)}.patch"
            if cached in raw.arrays:  # repflow cache features: float16 on disk, float32 here
                patch = raw.arrays[cached].to(self.device, non_blocking=True).float()
                cls = raw.arrays[f"{store_name(i)}.cls"].to(self.device, non_blocking=True).float()
            else:  # frozen: no graph, bf16 on GPU
                out = encoder(images)
                patch, cls = out.patch, out.cls
            features[f"{i}.patch"], features[f"{i}.cls"] = patch, cls
        return features
