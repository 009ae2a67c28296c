"""Turning a loader batch into what the objective trains on: model-space data, labels, encoder features.

This is where the codec runs (or cached latents are read) and where frozen encoders run (or cached features
are read), so the loop never knows which of those a run uses.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..data.datasets import Batch
from ..data.transforms import uint8_to_model
from ..objectives import TrainBatch


class BatchPreparer:
    def __init__(self, cfg: Config, codec, device: torch.device, encoders: list | None = None):
        self.cfg, self.codec, self.device = cfg, codec, device
        self.encoders = list(encoders or [])
        self.conditional = cfg.model.num_classes > 0

    @torch.no_grad()
    def __call__(self, raw: Batch, generator: torch.Generator | None = None) -> TrainBatch:
        images = uint8_to_model(raw.images.to(self.device, non_blocking=True))
        y = raw.labels.to(self.device, non_blocking=True) if self.conditional else None
        x = self.codec.encode(images)
        features = {}
        for i, encoder in enumerate(self.encoders):  # frozen: no graph, bf16 on GPU
            out = encoder(images)
            features[f"{i}.patch"], features[f"{i}.cls"] = out.patch, out.cls
        return TrainBatch(x=x, y=y, features=features)
