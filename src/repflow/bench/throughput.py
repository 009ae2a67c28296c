"""``repflow bench throughput`` / ``bench sample``: training and sampling speed on synthetic latents.

Training: the real optimiser step (``TrainState.run_step``: forward, backward, clipping, fused AdamW, EMA) on a
fixed synthetic batch, so data loading is excluded (``benchmarks/loader_throughput.py`` measures that).
MFU = model FLOPs per step (counted from the architecture, forward x 3 for training, REPA projector included)
/ step time / the peak bf16 matmul rate measured on the same device.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

import torch

from ..build import build_method, method_class
from ..config import Config
from ..flow.generate import balanced_labels, generate
from ..models.flops import forward_flops
from ..runtime.distributed import DistInfo
from ..train.state import TrainState
from .common import bench_env, encoder_dims, synthetic_batch, timed


@dataclass
class Measurement:
    arch: str
    method: str
    batch: int
    device: str
    step_ms: float
    images_per_s: float
    peak_mem_gib: float
    tflops: float  # achieved model TFLOP/s
    mfu: float  # fraction of the measured peak
    params_m: float


def repa_projector_flops(cfg: Config, model) -> int:
    if not cfg.repa.enabled:
        return 0
    tokens = (cfg.model.input_size // cfg.model.patch_size) ** 2 + model.num_front_tokens
    p, d = cfg.repa.projector_dim, cfg.model.hidden_size
    return sum(2 * tokens * (d * p + p * p + p * e) for e in encoder_dims(cfg))


def train_flops(cfg: Config, model, batch: int) -> int:
    """FLOPs of one training step on ``batch`` images: forward + backward = 3 x the forward (the backward does two
    products per forward product), the network and REPA's projector (a test checks it against torch's counter)."""
    return 3 * (forward_flops(model, batch) + batch * repa_projector_flops(cfg, model))


def _peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def measure_training(cfg: Config, method: str, device: torch.device, peak: float, repeats: int = 10) -> Measurement:
    torch.manual_seed(0)
    trained = build_method(cfg, bench_env(cfg, device)).to(device)
    model = trained.model
    model.grad_checkpointing = cfg.train.grad_checkpointing
    state = TrainState(cfg, DistInfo(device=device), trained)
    state.distribute()
    batch = synthetic_batch(cfg, cfg.train.batch_size, device, torch.Generator(device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(timed(lambda: state.run_step(lambda _: batch), device, repeats=repeats, warmup=3))
    flops = train_flops(cfg, model, cfg.train.batch_size)
    return Measurement(
        cfg.model.arch, method, cfg.train.batch_size, device.type, seconds * 1e3, cfg.train.batch_size / seconds,
        _peak_memory(device), flops / seconds / 1e12, flops / seconds / peak,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )  # fmt: skip


def measure_sampling(cfg: Config, method: str, device: torch.device, peak: float, repeats: int = 2) -> Measurement:
    """Generating one batch with ``cfg.sample`` (sampler, steps, CFG) from a randomly initialised network (the
    cost does not depend on the weights); VAE decoding excluded."""
    torch.manual_seed(0)
    kind = method_class(cfg)
    networks = {k: v.to(device).eval() for k, v in kind.inference_networks(cfg).items()}
    model = networks["model"]
    denoiser = kind.denoiser(cfg, networks, device)
    n = cfg.sample.batch_size
    labels = balanced_labels(range(n), cfg.model.num_classes)
    nfe = 0

    def run():
        nonlocal nfe
        out = generate(denoiser, cfg.sample, range(n), labels)
        nfe = out.nfe

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(timed(run, device, repeats=repeats, warmup=1))
    guided = cfg.sample.cfg != 1.0
    flops = nfe * forward_flops(model, n * (2 if guided else 1))  # guided calls run cond + uncond together
    return Measurement(
        cfg.model.arch, method, n, device.type, seconds * 1e3, n / seconds, _peak_memory(device),
        flops / seconds / 1e12, flops / seconds / peak, sum(p.numel() for p in model.parameters()) / 1e6,
    )  # fmt: skip


def table(rows: list[Measurement], title: str) -> str:
    head = (
        f"{'arch':10s} {'method':6s} {'batch':>5s} {'ms/iter':>9s} {'img/s':>8s} {'mem GiB':>8s} "
        f"{'TFLOP/s':>8s} {'MFU':>6s}"
    )
    lines = [title, head]
    for r in rows:
        mem = f"{r.peak_mem_gib:8.2f}" if r.peak_mem_gib == r.peak_mem_gib else f"{'n/a':>8s}"  # NaN off GPU
        lines.append(
            f"{r.arch:10s} {r.method:6s} {r.batch:5d} {r.step_ms:9.1f} {r.images_per_s:8.1f} "
            f"{mem} {r.tflops:8.2f} {r.mfu:6.1%}"
        )
    return "\n".join(lines)


def as_dicts(rows: list[Measurement]) -> list[dict]:
    return [dataclasses.asdict(r) for r in rows]
