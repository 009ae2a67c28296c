"""The one place that decides when computation runs in bf16.

- ``auto``: bf16 autocast on a GPU, fp32 on a CPU (exact and reproducible: what tests and CI use);
- ``bf16``: bf16 autocast on a GPU, and on a CPU where the CPU does bf16 matrix products fast (AVX-512 or
  AMX: 1.4x faster than fp32 for the demo on such a machine). On an AVX2-only CPU a bf16 matmul runs ~400x
  slower than fp32 (0.28 vs 119 GFLOP/s measured on a 2-core AMD EPYC), so there ``bf16`` runs in fp32 and
  says so once;
- ``fp32``: fp32 everywhere.

Training, sampling, codecs and encoders all ask here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU has the vector units that make bf16 matrix products fast (AVX-512 / AMX)."""
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return capability.startswith("AVX512") or "AMX" in capability


@functools.cache
def _say_fp32_instead() -> None:
    if os.environ.get("RANK", "0") != "0":  # one process speaks for a torchrun job
        return
    capability = torch.backends.cpu.get_cpu_capability()
    warnings.warn(f"precision=bf16: this CPU ({capability}) has no AVX-512/AMX, where bf16 is ~400x slower "
                  "than fp32; running in fp32", stacklevel=3)  # fmt: skip


def use_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose from auto, fp32, bf16")
    if device.type == "cuda":
        return precision != "fp32"
    if precision == "bf16" and not cpu_bf16_is_fast():
        _say_fp32_instead()
        return False
    return precision == "bf16"


def autocast_for(device: torch.device | str, precision: str = "auto"):
    """bf16 autocast when :func:`use_bf16` says so, else a no-op context."""
    device = torch.device(device)
    if not use_bf16(device, precision):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 when it already is (loss and conversion arithmetic never drops float64
    inputs to float32, so float64 checks against reference code stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
