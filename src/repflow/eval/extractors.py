"""One registry of feature extractors for every distributional metric: the FID Inception and any frozen encoder.

A *space* is named by a string:

- ``inception``: TensorFlow's inception-2015-12-05 (``inception.py``), outputs ``pool`` (2048-d pool_3),
  ``spatial`` (2023-d, sFID) and ``logits`` (1008-d, IS; only with the classifier);
- ``<encoder>[@<size>]``: a frozen encoder of ``repflow.encoders`` (``dinov2-vitl14``, ``clip-vitl14``,
  ``mae-vitl16``, ``siglip2-so400m16``, ``convnextv2-base``, ``dinov3-vitl16``, ...) or a family alias
  (``dinov2`` is ``dinov2-vitl14``, the encoder of Stein et al. 2023 and RAEv2), fed ``size`` x ``size`` inputs
  (default 224, dgm-eval's), output ``global``: the encoder's global vector, the class token after the final
  LayerNorm for DINOv2 / DINOv3 / MAE (``x_norm_clstoken``), CLIP's ``ln_post`` of the class token, SigLIP's
  attention-pooling head, ConvNeXt's mean of the last feature map; never a projection head.

Encoder inputs are prepared as FD-loss / RAEv2's evaluator prepares them: uint8 -> [0, 1] -> bicubic resize with
antialias (torch, no re-quantisation) to the size when the images differ -> the encoder's mean / std -> for a ViT
whose patch does not divide the size, zero padding at the right and bottom to the next multiple (timm's
``dynamic_img_pad``: DINOv2-L/14 and CLIP-L/14 at 256 px see 19 x 19 patches) -> the network in fp32.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .inception import TFInception

ALIASES = {"dinov2": "dinov2-vitl14", "dinov3": "dinov3-vitl16", "clip": "clip-vitl14", "mae": "mae-vitl16",
           "siglip": "siglip2-so400m16", "convnext": "convnextv2-base"}  # fmt: skip
DEFAULT_SIZE = 224
INCEPTION = "inception"
CNN_FAMILIES = ("convnext",)
PREPROCESS = "uint8/255, bicubic+antialias resize, mean/std, zero pad to the patch, fp32"


@dataclass(frozen=True)
class Space:
    encoder: str  # "inception" or a name of repflow.encoders
    size: int  # input size in pixels (the Inception: 299)

    @property
    def name(self) -> str:
        return INCEPTION if self.encoder == INCEPTION else f"{self.encoder}@{self.size}"


def space_choices() -> str:
    from ..encoders import ENCODERS

    names = [INCEPTION, *sorted(n for n in ENCODERS if n != "tiny"), "tiny"]
    return f"{', '.join(names)} (aliases {', '.join(f'{k}={v}' for k, v in ALIASES.items())}), optionally @SIZE"


def parse_space(text: str) -> Space:
    """``"dinov2@256"`` -> Space("dinov2-vitl14", 256); ``"inception"`` -> Space("inception", 299)."""
    from ..encoders import ENCODERS

    base, at, size = text.strip().partition("@")
    base = ALIASES.get(base, base)
    if base == INCEPTION:
        if at:
            raise ValueError(f"the Inception space has a fixed input size (299): '{text}' takes no @SIZE")
        return Space(INCEPTION, 299)
    if base not in ENCODERS:
        close = difflib.get_close_matches(base, [INCEPTION, *ENCODERS, *ALIASES], n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"unknown feature space '{text}'{hint}; choose from {space_choices()}")
    if at and not (size.isdigit() and int(size) > 0):
        raise ValueError(f"feature space '{text}': the size after @ must be a positive number of pixels")
    return Space(base, int(size) if at else DEFAULT_SIZE)


class FeatureExtractor:
    """uint8 (B, 3, H, W) images -> named (B, D) float32 features on the CPU."""

    space: Space
    outputs: tuple[str, ...]  # what it can give
    kept: tuple[str, ...]  # outputs whose per-image features a reference cache keeps (KID, precision/recall)
    cached: tuple[str, ...]  # outputs whose statistics a reference cache keeps

    def __call__(self, images: Tensor, outputs: tuple[str, ...]) -> dict[str, Tensor]:
        raise NotImplementedError

    def identity(self) -> dict:
        """What the features depend on (weights, input size, preprocessing); not where the weights were read."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The identity plus where the weights came from (for results files)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]


class InceptionExtractor(FeatureExtractor):
    def __init__(self, inception: TFInception):
        self.net, self.space = inception, Space(INCEPTION, 299)
        self.outputs = ("pool", "spatial", "logits") if inception.has_logits else ("pool", "spatial")
        self.kept, self.cached = ("pool",), ("pool", "spatial")

    def __call__(self, images: Tensor, outputs: tuple[str, ...]) -> dict[str, Tensor]:
        out = self.net(images.to(self.net.device), spatial="spatial" in outputs, logits="logits" in outputs)
        return {k: getattr(out, k).float().cpu() for k in outputs}

    def identity(self) -> dict:
        return {"space": INCEPTION, "weights": self.net.fingerprint(), "resize": self.net.resize}

    def describe(self) -> dict:
        return {**self.identity(), "file": self.net.source}


class EncoderExtractor(FeatureExtractor):
    def __init__(self, encoder, space: Space, family: str):
        self.encoder, self.space = encoder, space
        self.outputs = self.kept = self.cached = ("global",)
        self.pad = family not in CNN_FAMILIES  # a ViT pads to whole patches; a CNN takes any size

    def preprocess(self, images: Tensor) -> Tensor:
        x = images.to(self.encoder.mean.device, torch.float32) / 255.0  # (B, 3, H, W) in [0, 1]
        if tuple(x.shape[-2:]) != (self.space.size, self.space.size):
            x = F.interpolate(x, size=(self.space.size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.encoder.mean) / self.encoder.std
        extra = -self.space.size % self.encoder.patch_size if self.pad else 0
        return F.pad(x, (0, extra, 0, extra)) if extra else x  # timm's dynamic_img_pad: zeros right and bottom

    def __call__(self, images: Tensor, outputs: tuple[str, ...]) -> dict[str, Tensor]:
        return {"global": self.encoder.embed(self.preprocess(images), precision="fp32").cls.float().cpu()}

    def identity(self) -> dict:
        ident = self.encoder.identity()
        return {"space": self.space.name, "weights_sha256": ident["weights_sha256"], "dim": ident["dim"],
                "preprocess": PREPROCESS}  # fmt: skip

    def describe(self) -> dict:
        return {**self.identity(), "source": self.encoder.source}


def _parse_paths(paths: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for name, path in (paths or {}).items():
        space = parse_space(name)
        if space.encoder == INCEPTION:
            raise ValueError("the Inception's file is given with --inception, not --encoder-path")
        out[space.encoder] = path
    return out


class Extractors:
    """The feature extractors of one evaluation, built on first use: the Inception by ``inception`` (a loaded
    network, or a function loading it), encoders from ``paths`` (encoder name or alias -> weights file, directory
    or hub id; without one, the name's default hub weights)."""

    def __init__(
        self,
        inception: TFInception | Callable[[], TFInception] | None = None,
        paths: dict[str, str] | None = None,
        device: str | torch.device = "cpu",
    ):
        self._inception, self.paths, self.device = inception, _parse_paths(paths), torch.device(device)
        self._built: dict[str, FeatureExtractor] = {}

    def get(self, space: Space | str) -> FeatureExtractor:
        space = parse_space(space) if isinstance(space, str) else space
        if space.name not in self._built:
            self._built[space.name] = self._build(space)
        return self._built[space.name]

    def _build(self, space: Space) -> FeatureExtractor:
        if space.encoder == INCEPTION:
            net = self._inception
            if net is None:
                from .inception import load_inception

                net = load_inception(device=self.device)
            return InceptionExtractor(net if isinstance(net, TFInception) else net())
        from ..config import EncoderConfig
        from ..encoders import build_encoder, get_spec

        spec = get_spec(space.encoder)
        # built for the padded input: timm resamples its position table once, straight to the grid it will see,
        # as RAEv2's model (built at its pretraining size) does at every forward
        padded = space.size if spec.family in CNN_FAMILIES else -(-space.size // spec.patch_size) * spec.patch_size
        cfg = EncoderConfig(name=space.encoder, path=self.paths.get(space.encoder, ""))
        return EncoderExtractor(build_encoder(cfg, padded, device=self.device), space, spec.family)

    def describe(self) -> dict:
        """Every extractor built so far, by space name."""
        return {name: ex.describe() for name, ex in self._built.items()}

    def identities(self) -> dict:
        """What the features of every extractor built so far depend on, by space name (not where weights lie)."""
        return {name: ex.identity() for name, ex in self._built.items()}


def as_extractors(extractors: Extractors | TFInception) -> Extractors:
    """Callers that hold only the Inception (as before encoders were metrics) get a set built around it."""
    if isinstance(extractors, Extractors):
        return extractors
    return Extractors(inception=extractors, device=extractors.device)
