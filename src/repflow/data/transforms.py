"""Image preprocessing: ADM centre crop, RAE's random crop, colour-mode normalisation, uint8 <-> [-1, 1] tensors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: box-downsample while the short side is >= 2x the target, bicubic-resize the short
    side to ``size``, then crop the centre. Smaller images are upsampled by the same bicubic step."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def random_crop_arr(image: Image.Image, size: int, resize_to: int, u: float, v: float) -> Image.Image:
    """RAE stage 1's ``Resize(resize_to, BICUBIC)`` then ``RandomCrop(size)`` (torchvision's arithmetic on PIL
    images): the short side to ``resize_to``, the long side scaled and truncated; the window's top and left at
    fractions ``u``, ``v`` in [0, 1) of the ``free + 1`` possible offsets."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_to, int(resize_to * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=Image.BICUBIC)
    top, left = int(u * (new_h - size + 1)), int(v * (new_w - size + 1))
    return Image.fromarray(np.asarray(image)[top : top + size, left : left + size])


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a camera's EXIF orientation tag (rotated or mirrored) applied."""
    if image.getexif().get(_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


_ORIENTATION = 0x0112  # the EXIF tag


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Greyscale / CMYK / palette / RGBA / 16-bit -> 8-bit RGB (or L for one channel), upright.

    Transparent pixels are composited on white (the usual choice for icons and emoji).
    """
    image = upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        # 16-bit modes are 0..65535 by definition; 32-bit "I"/"F" carry no range, so guess from the values
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def pil_to_uint8(image: Image.Image) -> Tensor:
    """PIL image -> (C, H, W) uint8 tensor."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def uint8_to_model(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def model_to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding as ADM does."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """(N, C, h, w) uint8 -> (N, C, size, size) uint8 with antialiased bicubic resampling, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):
        r = torch.nn.functional.interpolate(
            chunk.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )
        out.append(r.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
