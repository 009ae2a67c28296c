"""Resizing to the Inception input (299 x 299) exactly as the reference tools do.

- ``"tf"`` (default): TensorFlow 1's legacy ``ResizeBilinear`` (``align_corners=False``, no half-pixel centres),
  the op inside the 2015-12-05 graph that the ADM evaluator and the original TTUR FID feed. Output pixel ``i``
  samples the input at ``i * in / out``. clean-fid calls this mode ``legacy_tensorflow``. Using it keeps our
  statistics comparable with ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``).
- ``"clean"``: clean-fid's default: PIL bicubic on each channel as a float image, clipped to [0, 255].

Both take and return float tensors in [0, 255], (B, 3, H, W) -> (B, 3, size, size).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ResizeMode = Literal["tf", "clean"]
RESIZE_MODES: tuple[str, ...] = ("tf", "clean")


def _legacy_bilinear_axis(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (lo, hi) and weight of hi for one axis of TF1's legacy bilinear resize."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)  # TF computes the scale in float32
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.floor()
    frac = (src - lo).to(device)
    lo = lo.long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)  # the last row/column repeats (no wrap, no zero padding)
    return lo.to(device), hi.to(device), frac


def resize_tf_bilinear(x: Tensor, size: int = 299) -> Tensor:
    """TF1 ``tf.image.resize_bilinear(x, (size, size), align_corners=False)`` on (B, C, H, W) floats."""
    b, c, h, w = x.shape
    if h == size and w == size:
        return x
    y_lo, y_hi, y_frac = _legacy_bilinear_axis(h, size, x.device)
    x_lo, x_hi, x_frac = _legacy_bilinear_axis(w, size, x.device)
    top, bottom = x[:, :, y_lo], x[:, :, y_hi]  # (B, C, size, W)
    rows = top + (bottom - top) * y_frac[:, None]
    left, right = rows[..., x_lo], rows[..., x_hi]  # (B, C, size, size)
    return left + (right - left) * x_frac


def resize_pil_bicubic(x: Tensor, size: int = 299) -> Tensor:
    """clean-fid's resize: PIL bicubic per channel in float mode ('F'), no quantisation, clipped to [0, 255]."""
    arr = x.detach().cpu().numpy().astype(np.float32)
    out = np.empty((*arr.shape[:2], size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        for ch in range(arr.shape[1]):
            img = Image.fromarray(arr[i, ch]).resize((size, size), resample=Image.BICUBIC)
            out[i, ch] = np.asarray(img)
    return torch.from_numpy(out.clip(0, 255)).to(x.device)


def resize_for_inception(x: Tensor, mode: str, size: int = 299) -> Tensor:
    if mode == "tf":
        return resize_tf_bilinear(x, size)
    if mode == "clean":
        return resize_pil_bicubic(x, size)
    raise ValueError(f"unknown resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}")
