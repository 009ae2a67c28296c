"""Shared pieces of the benchmarks: benchmark configs on synthetic latents, peak matmul rate, timing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from ..build import method_class, resolve_static
from ..config import Config, load_config
from ..encoders import get_spec
from ..methods.base import MethodEnv, TrainBatch
from ..methods.flow import stream_shapes

METHODS = ("sit", "repa", "reg", "meanflow", "meanflow_fd")
# MeanFlow as its ImageNet presets train it (guidance in the target: one more no-gradient call of twice the batch)
MEANFLOW = ["method.kind=meanflow", "method.omega=1.0", "method.kappa=0.5", "flow.time.kind=logit_normal",
            "flow.time.mean=-0.4"]  # fmt: skip


def bench_config(arch: str, method: str, batch: int, overrides: list[str] | None = None) -> Config:
    """A resolved ImageNet-256 latent config (32x32x4, 1000 classes) for ``method`` with DINOv2-B features
    (as if cached: the encoder itself is not run)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    items = [
        f"model.arch={arch}", "model.num_classes=1000", "model.input_size=32", "model.in_channels=4",
        f"train.batch_size={batch}", "train.ema_decays=[0.9999]", "train.grad_clip=1.0",
        "model.allow_narrow=true",  # speed, not sample quality: any width may be timed
    ]  # fmt: skip
    if method.startswith("meanflow"):
        items += MEANFLOW + (["method.derivative=finite_difference"] if method == "meanflow_fd" else [])
    elif method != "sit":
        items += ["encoders=[{name: dinov2-vitb14}]", "repa.enabled=true"]
    if method == "reg":
        items += ["reg.enabled=true"]
    cfg = resolve_static(load_config(None, items + list(overrides or [])))
    encoders = tuple(dataclasses.replace(e, resolution=224) for e in cfg.encoders)
    cfg = dataclasses.replace(cfg, encoders=encoders)
    return method_class(cfg).resolve(cfg, bench_env(cfg))


def bench_env(cfg: Config, device: torch.device | str = "cpu") -> MethodEnv:
    """What the method is built with: the encoders' widths from the registry (their weights are not loaded)."""
    return MethodEnv(encoder_dims=encoder_dims(cfg), device=torch.device(device))


def encoder_dims(cfg: Config) -> list[int]:
    return [get_spec(e.name).embed_dim for e in cfg.encoders]


def synthetic_batch(cfg: Config, n: int, device: torch.device, generator: torch.Generator) -> TrainBatch:
    """Random latents, labels and (cached-like) DINOv2 features of the right shapes."""
    x = torch.randn((n, *stream_shapes(cfg)["x"]), generator=generator, device=device)
    y = torch.randint(0, cfg.model.num_classes, (n,), generator=generator, device=device)
    features = {}
    for i, enc in enumerate(cfg.encoders):
        spec = get_spec(enc.name)
        tokens = (enc.resolution // spec.patch_size) ** 2
        features[f"{i}.patch"] = torch.randn(n, tokens, spec.embed_dim, generator=generator, device=device)
        features[f"{i}.cls"] = torch.randn(n, spec.embed_dim, generator=generator, device=device)
    return TrainBatch(x=x, y=y, features=features)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` calls, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_matmul_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 0) -> float:
    """The device's achievable dense matmul rate (FLOP/s), measured with a large square product (``n``: its
    size, 0 for 8192 on a GPU and 2048 on a CPU)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, repeats=10 if device.type == "cuda" else 5, warmup=3)
    return 2 * n**3 / min(times)


__all__ = ["METHODS", "bench_config", "peak_matmul_flops", "synthetic_batch", "timed"]
