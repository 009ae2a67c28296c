"""LPIPS (Zhang et al. 2018), the VGG16 variant of the ``lpips`` package and taming-transformers that RAE's
decoder training uses: VGG16 features at relu1_2 ... relu5_3, unit-normalised over channels, squared
differences weighted by 1 x 1 "lin" layers, spatially averaged, summed over the five layers.

Weights come from the usual files, by path (nothing is downloaded here):

- torchvision's VGG16 state dict ``vgg16-397923af.pth`` (``features.<i>.weight``), ``method.lpips_vgg``;
- the lin layers ``vgg.pth`` of the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``) or of taming
  (``lin<k>.model.1.weight``), ``method.lpips``;

or one safetensors file holding both (:func:`save_lpips`), ``method.lpips`` alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

VGG_LAYERS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16.features
VGG_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)  # lpips' ScalingLayer, for images in [-1, 1]
_SCALE = (0.458, 0.448, 0.450)
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
WHERE = (f"download torchvision's VGG16 ({VGG_URL}) and the LPIPS lin layers ({LIN_URL}, or taming's vgg.pth) "
         "and set method.lpips=/path/to/vgg.pth method.lpips_vgg=/path/to/vgg16-397923af.pth")  # fmt: skip


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` architecture (no download; the same layer indices), up to relu5_3,
    built without the 124M-parameter classifier LPIPS never uses."""
    from .._compat import require

    vgg = require("torchvision.models.vgg")
    return vgg.make_layers(vgg.cfgs["D"])[: VGG_LAYERS[-1] + 1]


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.vgg = vgg16_features()
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen

    def features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in VGG_LAYERS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample distance (B,) between images in [-1, 1] (greyscale is repeated to RGB); fp32 or fp64."""
        x, y = (v.expand(-1, 3, -1, -1) if v.shape[1] == 1 else v for v in (x, y))
        x, y = (v if v.dtype == torch.float64 else v.float() for v in (x, y))
        total = 0.0
        for lin, fx, fy in zip(self.lin, self.features(x), self.features(y), strict=True):
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def lpips_tensors(vgg_state: dict[str, Tensor], lin_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """:class:`LPIPS`' state dict from torchvision's VGG16 (``features.<i>.*``) and the lin layers
    (``lin<k>.model.1.weight``, or ``.model.0.`` when written without dropout)."""
    tensors = {f"vgg.{k[len('features.'):]}": v for k, v in vgg_state.items()
               if k.startswith("features.") and int(k.split(".")[1]) <= VGG_LAYERS[-1]}  # fmt: skip
    for k in range(len(VGG_CHANNELS)):
        found = [lin_state[n] for n in (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight") if n in lin_state]
        if found:
            tensors[f"lin.{k}.weight"] = found[0]
    return tensors


def save_lpips(vgg_state: dict[str, Tensor], lin_state: dict[str, Tensor], out: str | Path) -> Path:
    """One LPIPS weights file (safetensors) from the VGG16 and lin-layer state dicts."""
    from safetensors.torch import save_file

    out = Path(out)
    save_file({k: v.contiguous() for k, v in lpips_tensors(vgg_state, lin_state).items()}, str(out))
    return out


def load_lpips(path: str | Path, vgg: str | Path = "", device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from the lin-layer file ``path`` and torchvision's VGG16 file ``vgg``, or from one
    :func:`save_lpips` file (``vgg`` empty)."""
    from safetensors.torch import load_file

    from ..encoders.dinov2 import read_state_dict

    for p in (path, vgg):
        if p and not Path(p).is_file():
            raise FileNotFoundError(f"LPIPS weights '{p}' do not exist: {WHERE}")
    path = Path(path)
    if vgg:
        state = lpips_tensors(read_state_dict(Path(vgg)), read_state_dict(path))
    elif path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        raise ValueError(f"'{path}' holds LPIPS lin layers only: name torchvision's VGG16 weights too (method."
                         f"lpips_vgg=/path/to/vgg16-397923af.pth, {VGG_URL})")  # fmt: skip
    model = LPIPS()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"'{path}'{f' and {vgg!s}' if vgg else ''} are not LPIPS weights ("
                         f"{'missing ' + str(missing[:2]) if missing else ''}"
                         f"{'unexpected ' + str(unexpected[:2]) if unexpected else ''})")  # fmt: skip
    return model.to(device)


def lpips_for(settings, device: torch.device | str) -> LPIPS | None:
    """The LPIPS term a method's config asks for (``lpips``, ``lpips_vgg``, ``lpips_weight``); when it wants
    one and names no weights, one start-up line says the term is off and where the files come from."""
    if settings.lpips_weight <= 0:
        return None
    if not settings.lpips:
        print(f"repflow: LPIPS is off: no weights given (method.lpips_weight={settings.lpips_weight:g}); {WHERE}",
              file=sys.stderr)  # fmt: skip
        return None
    return load_lpips(settings.lpips, settings.lpips_vgg, device)
