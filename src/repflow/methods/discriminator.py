"""The discriminators of a decoder's GAN: trainable heads on the tokens of a frozen ViT.

- ``disc: dino`` (RAE's, ``src/disc/dinodisc.py``): a separate frozen DINO (v1) ViT-S/8, read from a weights file
  (RAE's ``dino_vit_small_patch8_224.pth``, timm's ``vit_small_patch8_224.dino`` or DINO's
  ``dino_deitsmall8_pretrain.pth``: one key layout). Images in [-1, 1] are resized bilinearly to its 224 px,
  normalised with ImageNet's mean and std, and five heads read its patch tokens: one on the last block's
  output (without the final norm) and one after each of blocks 2, 5, 8 and 11 (so the last block is read
  twice, by two heads, as the official code does). As there, the MLPs use tanh-GELU and the key bias of the
  attention is zeroed (softmax ignores it).
- ``disc: encoder`` (repflow 0.2's): heads after four spread blocks of the run's own frozen encoder.

A head (``DiscHead``): spectral-normalised 1-D convolutions over the tokens, k = 1, then a residual k = 9
(circular) scaled by 1/sqrt(2), then k = 1 to one logit per token, each followed by a per-sample batch norm
(RAE's ``BatchNormLocal`` with a virtual batch of 1) and LeakyReLU(0.2). The spectral norm is torch's
``spectral_norm`` hook, as in the official code: in train mode its stored ``u`` advances one power iteration
per call, in eval mode it is used as stored. (repflow 0.2 used the parametrised form; :func:`legacy_disc_name`
maps its checkpoints' names.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from ..encoders.base import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .decoder_losses import GANSettings

DINO_BLOCKS = (2, 5, 8, 11)  # RAE's key_depths
DINO_WHERE = ("download RAE's discs/dino_vit_small_patch8_224.pth from https://huggingface.co/nyu-visionx/"
              "RAE-collections (or timm's vit_small_patch8_224.dino model.safetensors) and set method.disc_weights="
              "/path/to/it")  # fmt: skip


class BatchNormLocal(nn.Module):
    """Normalisation of each sample's channels over its tokens (RAE's BatchNormLocal, virtual batch 1), affine;
    computed in fp32 (or fp64)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, N)
        x = x if x.dtype == torch.float64 else x.float()
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / (var + self.eps).sqrt() * self.weight[:, None] + self.bias[:, None]


def sn_conv(dim: int, out: int, k: int) -> nn.Conv1d:
    conv = nn.Conv1d(dim, out, k, padding=k // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


class DiscHead(nn.Module):
    def __init__(self, dim: int, kernel: int = 9):
        super().__init__()
        block = lambda k: nn.Sequential(sn_conv(dim, dim, k), BatchNormLocal(dim), nn.LeakyReLU(0.2))  # noqa: E731
        self.inp, self.res, self.out = block(1), block(kernel), sn_conv(dim, 1, 1)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, N, D) -> (B, N)
        x = self.inp(tokens.transpose(1, 2))
        x = (self.res(x) + x) * (1 / math.sqrt(2))  # the official ResidualBlock's multiply, for equal rounding
        return self.out(x).flatten(1)


def load_dino(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """A frozen DINO ViT (timm's ``vit_small_patch8_224`` family) whose width, depth, patch and input size are
    read from the weights file (heads of 64 channels, as DINO's ViT-S and ViT-B)."""
    from .._compat import require
    from ..encoders.dinov2 import read_state_dict

    if not path:
        raise ConfigError(f"method.disc=dino needs the DINO ViT-S/8 weights: {DINO_WHERE}")
    if not Path(path).is_file():
        raise ConfigError(f"method.disc_weights='{path}' does not exist: {DINO_WHERE}")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in read_state_dict(Path(path)).items()}
    state = {k: v for k, v in state.items() if not k.startswith("head")}  # DINO's projection head, a classifier
    try:
        dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    except (KeyError, ValueError) as err:
        raise ValueError(f"'{path}' is not a DINO ViT weights file (no {err})") from err
    for k in [k for k in state if k.endswith("attn.qkv.bias")]:
        state[k] = torch.cat([state[k][:dim], torch.zeros_like(state[k][dim : 2 * dim]), state[k][2 * dim :]])
    timm = require("timm")
    model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, img_size=grid * patch,
                              patch_size=patch, embed_dim=dim, depth=depth, num_heads=max(1, dim // 64),
                              act_layer="gelu_tanh")  # fmt: skip
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"'{path}' does not fit a DINO ViT ({str(err).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ValueError(f"'{path}' is not a DINO ViT weights file ({what})")
    return model.to(device).eval().requires_grad_(False)


class DinoDiscriminator(nn.Module):
    """Heads on a frozen DINO ViT: one on its last block's tokens, one after each of ``blocks``."""

    def __init__(self, backbone: nn.Module, blocks: tuple[int, ...] = DINO_BLOCKS):
        super().__init__()
        depth = len(backbone.blocks)
        if not blocks or max(blocks) >= depth:
            raise ConfigError(f"method.disc_blocks={list(blocks)}: the DINO ViT has blocks 0 .. {depth - 1}")
        self._backbone = (backbone,)  # frozen, from its own file: neither trained nor saved
        self.blocks, self.size = tuple(blocks), backbone.patch_embed.img_size[0]
        self.heads = nn.ModuleList(DiscHead(backbone.embed_dim) for _ in range(len(blocks) + 1))
        # ((x + 1) / 2 - mean) / std written as the official x * scale + shift, for equal rounding
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("scale", 0.5 / std, persistent=False)
        self.register_buffer("shift", (0.5 - mean) / std, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, heads x N) of images in [-1, 1]; gradients flow back to the images."""
        backbone = self._backbone[0]
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x * self.scale + self.shift
        last = len(backbone.blocks) - 1
        taps = sorted({*self.blocks, last})
        out = backbone.forward_intermediates(x, indices=taps, norm=False, output_fmt="NLC", intermediates_only=True)
        tokens = dict(zip(taps, out, strict=True))  # (B, N, D) each, class token dropped
        return torch.cat([head(tokens[b]) for head, b in zip(self.heads, (last, *self.blocks), strict=True)], dim=1)


class EncoderDiscriminator(nn.Module):
    """repflow 0.2's discriminator: heads after ``blocks`` of a frozen repflow encoder."""

    def __init__(self, encoder, blocks: tuple[int, ...]):
        super().__init__()
        if max(blocks) >= encoder.depth:
            raise ConfigError(f"method.disc_blocks={list(blocks)}: {encoder.name} has blocks 0 .. {encoder.depth - 1}")
        self._encoder = (encoder,)  # frozen, rebuilt from the config: not saved
        self.blocks = tuple(blocks)
        self.heads = nn.ModuleList(DiscHead(encoder.embed_dim) for _ in blocks)

    def forward(self, images: Tensor) -> Tensor:
        encoder = self._encoder[0]
        size = encoder.resolution
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        feats = encoder._layers(encoder.preprocess(x), list(self.blocks))
        return torch.cat([head(f.float()) for head, f in zip(self.heads, feats, strict=True)], dim=1)


def spread_blocks(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending with the last (12 blocks: 2, 5, 8, 11)."""
    return tuple(sorted({max(0, round(depth * k / 4) - 1) for k in (1, 2, 3, 4)}))


class PatchDiscriminator(nn.Module):
    """taming-transformers' PatchGAN ``NLayerDiscriminator`` (pix2pix's), REPA-E's critic (``loss/
    discriminator.py``): 4x4 convolutions, stride 2 for the first ``layers``, channel width ``width`` doubling up
    to 8x, BatchNorm2d and LeakyReLU(0.2) between them, one logit per patch. Parameter names match the official
    state dict (``main.<i>.*``), so a discriminator checkpoint loads as it is. Initialisation as taming's
    ``weights_init``: convolution weights N(0, 0.02) (biases keep torch's default), BN weights N(1, 0.02)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2, True)]  # fmt: skip
        seq.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:  # (B, C, H, W) in [-1, 1] -> (B, 1, h, w) logits
        return self.main(images)


_LEGACY_SN = {".parametrizations.weight.original": ".weight_orig", ".parametrizations.weight.0._u": ".weight_u",
              ".parametrizations.weight.0._v": ".weight_v"}  # fmt: skip


def legacy_disc_name(name: str) -> str:
    """A discriminator parameter's name in repflow 0.2's checkpoints (parametrised spectral norm) -> today's.
    Both store the unnormalised weight and the power iteration's vectors: a run continues where it was."""
    for old, new in _LEGACY_SN.items():
        if name.startswith("disc.") and name.endswith(old):
            return name[: -len(old)] + new
    return name


def build_discriminator(settings: GANSettings, encoder, device: torch.device | str) -> nn.Module:
    """The discriminator a method's config asks for; ``encoder``: the run's frozen encoder (``disc: encoder``)."""
    if settings.disc == "dino":
        return DinoDiscriminator(load_dino(settings.disc_weights, device), settings.disc_blocks or DINO_BLOCKS)
    if encoder is None:
        raise ConfigError("method.disc=encoder needs a frozen encoder")
    return EncoderDiscriminator(encoder, settings.disc_blocks or spread_blocks(encoder.depth))
