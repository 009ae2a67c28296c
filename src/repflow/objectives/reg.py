"""REG (Wu et al. 2025): denoise the encoder's global vector jointly with the image, as one extra token.

The class token ``cls`` is noised with the image's t and its own noise (the flow loss does that for every
stream) and its velocity loss is weighted by beta = 0.03. The network side (Linear + LayerNorm in, zero
position embedding, zero-initialised Linear out) is the model's vector stream ``cls``.
"""

from __future__ import annotations

from torch import Tensor

from .base import Term, TrainBatch

SOURCES = ("cls", "patch_mean", "learnable")


def global_vector(batch: TrainBatch, encoder: int, source: str) -> Tensor:
    """The global vector of encoder ``encoder``: its class token, or the mean of its patch tokens."""
    if source == "cls":
        return batch.features[f"{encoder}.cls"]
    if source == "patch_mean":
        return batch.features[f"{encoder}.patch"].mean(dim=1)
    raise ValueError(f"REG global vector source {source!r} has no encoder target; choose from {SOURCES[:2]}")


class RegTerm(Term):
    def __init__(self, weight: float = 0.03, source: str = "cls"):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown REG source {source!r}; choose from {SOURCES}")
        self.weight, self.source = weight, source

    def streams(self, batch: TrainBatch) -> dict[str, tuple[Tensor, float]]:
        if self.source == "learnable":  # the ablation: a learned token in the sequence, nothing to denoise
            return {}
        return {"cls": (global_vector(batch, 0, self.source), self.weight)}
