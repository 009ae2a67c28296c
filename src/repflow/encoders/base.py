"""The frozen-encoder protocol: images in [-1, 1] -> patch tokens (B, N, D) and a global vector (B, D).

Every encoder (DINOv2 through timm / transformers / torch.hub files, CLIP, SigLIP, MAE, repflow's tiny ViT) is
wrapped in :class:`FrozenEncoder`, which owns the preprocessing (channel replication, resize to the encoder's
input size, its mean/std normalisation) and keeps the network in eval mode without gradients. Features for
REPA / REG run in bf16 autocast on GPU; RAE's latent (:meth:`FrozenEncoder.latent_tokens`) in the precision its
codec asks for (fp32 by default, as the official code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.fingerprint import weights_sha256
from ..runtime.precision import autocast_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass
class EncoderOutput:
    patch: Tensor  # (B, N, D) patch tokens (normalised, without class/register tokens)
    cls: Tensor  # (B, D) global vector (DINOv2: x_norm_clstoken)


# (normalised images at the encoder's resolution) -> (patch tokens, global vector)
Backbone = Callable[[Tensor], tuple[Tensor, Tensor]]
# (normalised images, block indices) -> the patch tokens after those blocks, before the final norm (B, N, D) each
Layers = Callable[[Tensor, Sequence[int]], list[Tensor]]


class FrozenEncoder(nn.Module):
    def __init__(
        self,
        network: nn.Module,
        forward: Backbone,
        *,
        name: str,
        embed_dim: int,
        patch_size: int,
        resolution: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        source: str = "",
        layers: Layers | None = None,
        depth: int = 0,
        norm_eps: float = 1e-6,
        resize: Literal["bicubic", "bilinear"] = "bicubic",
    ):
        """``layers`` / ``depth`` / ``norm_eps``: the blocks' raw tokens, how many blocks, and the final
        LayerNorm's eps (for RAE's latent: the final norm without its affine, :meth:`latent_tokens`).
        ``resize``: how inputs of another size are resized (DINOv3's transform: bilinear with antialias)."""
        super().__init__()
        self.network = network
        self._forward = forward
        self._layers, self.depth, self.norm_eps = layers, depth, norm_eps
        self.resize = resize
        self.name, self.embed_dim, self.patch_size, self.resolution = name, embed_dim, patch_size, resolution
        self.source = source  # where the weights came from (for logs)
        self._sha256: str | None = None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.network.eval()
        self.network.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # frozen: dropout / norm statistics never switch to training behaviour

    @property
    def num_patches(self) -> int:
        return (self.resolution // self.patch_size) ** 2

    def identity(self) -> dict:
        """What a feature cache made with this encoder must match: its weights (hashed, so a local copy of the
        same weights matches), input size and width; not the path it was loaded from."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.network.state_dict())
        return {"encoder": self.name, "weights_sha256": self._sha256, "resolution": self.resolution,
                "dim": self.embed_dim}  # fmt: skip

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] images (any size, 1 or 3 channels) -> normalised (B, 3, R, R), float32 (float64 stays: checks)."""
        x = (images.to(torch.promote_types(images.dtype, torch.float32)) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            size = (self.resolution, self.resolution)
            if self.resize == "bilinear":  # torchvision's Resize(antialias=True) on tensors, as DINOv3's transform
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            else:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    def block_indices(self, layers: Sequence[int]) -> list[int]:
        """0-indexed block numbers of ``layers`` (a negative index counts from the end: -1 is the last block),
        each named once, in increasing order (the official code returns them in block order)."""
        out = [i + self.depth if i < 0 else i for i in layers]
        bad = [i for i, b in zip(layers, out, strict=True) if not 0 <= b < self.depth]
        if bad:
            raise ValueError(f"{self.name} has {self.depth} blocks (0..{self.depth - 1}, or -{self.depth}..-1 from "
                             f"the end); cannot take block {bad[0]}")  # fmt: skip
        if not out or any(a >= b for a, b in zip(out, out[1:], strict=False)):
            raise ValueError(f"blocks {list(layers)} of {self.name}: name at least one, each once, in increasing order")
        return out

    @torch.no_grad()
    def latent_tokens(
        self, images: Tensor, layers: Sequence[int] = (-1,), token_mean: bool = False, precision: str = "auto"
    ) -> Tensor:
        """RAE's latent (B, N, D) float32: the patch tokens after each block of ``layers`` (0-indexed, as the
        official ``get_intermediate_layers(n=[...])``; negative from the end) through the final LayerNorm *without*
        its affine, averaged; with ``token_mean`` plus the mean over tokens of the deepest one (RAEv2's DINOv3 /
        SigLIP2 multi-layer encoders add ``outputs[-1].mean(dim=1)``; its DINOv2 one does not). RAE: ``(-1,)``."""
        if self._layers is None:
            raise ValueError(f"encoder {self.name} ({self.source}) cannot give its blocks' tokens")
        x = self.preprocess(images)
        with autocast_for(x.device, precision):
            tokens = self._layers(x, self.block_indices(layers))
        dtype = torch.promote_types(x.dtype, torch.float32)  # bf16 under autocast -> float32
        normed = [F.layer_norm(t.to(dtype), (t.shape[-1],), eps=self.norm_eps) for t in tokens]
        z = torch.stack(normed).mean(0)  # (B, N, D)
        if token_mean:  # RAEv2: + outputs[-1].mean(dim=1, keepdim=True), outputs in block order: the deepest
            z = z + normed[-1].mean(1, keepdim=True)  # (B, 1, D), the same vector added to every token
        return z

    @torch.no_grad()
    def embed(self, x: Tensor, precision: str = "auto") -> EncoderOutput:
        """The network on inputs already preprocessed (normalised; any size it accepts), for callers with their
        own preprocessing (the FD metrics resize and pad as RAEv2's evaluator does)."""
        with autocast_for(x.device, precision):
            patch, cls = self._forward(x)
        return EncoderOutput(patch=patch.float(), cls=cls.float())

    @torch.no_grad()
    def forward(self, images: Tensor) -> EncoderOutput:
        return self.embed(self.preprocess(images))
