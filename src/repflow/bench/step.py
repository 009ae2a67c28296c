"""One training configuration timed as training runs it: ``TrainState.run_step`` (the loop's own step: forward,
backward, clipping, fused AdamW, foreach EMA) fed by a host-to-device copy of a pinned batch of cached
latents (fp32) and features (fp16), as the data loader hands them over.

Throughput is measured over consecutive steps with no synchronisation between them (the device queue stays
full, as in training); the time split comes from device events at the stage boundaries; host synchronisations
are counted over one further eager step.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import torch

from ..build import build_method
from ..config import Config
from ..methods.base import TrainBatch
from ..runtime.distributed import DistInfo
from ..train.state import TrainState
from .cases import with_train
from .common import bench_env, synchronize, synthetic_batch
from .stages import STAGES, StageTimer
from .syncs import count_host_syncs
from .throughput import train_flops


@dataclass
class Row:
    """One line of the table (and of the CSV / JSON)."""

    case: str
    what: str  # "train", "train+compile", "train+ckpt", "sample heun50 cfg", ..., "official ..."
    batch: int
    images_per_s: float = float("nan")
    ms_per_iter: float = float("nan")
    tflops: float = float("nan")
    mfu: float = float("nan")  # of the peak matmul rate measured on the device
    peak_mem_gib: float = float("nan")
    split_ms: dict[str, float] = field(default_factory=dict)  # STAGES -> ms per step
    host_syncs: int = -1  # per eager step; -1: not counted
    note: str = ""


def peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def host_batch(cfg: Config, device: torch.device) -> TrainBatch:
    """A batch as the cache serves it: latents fp32, features fp16, pinned when there is a GPU to copy to."""
    batch = synthetic_batch(cfg, cfg.train.batch_size, torch.device("cpu"), torch.Generator().manual_seed(0))
    pin = device.type == "cuda"
    held = lambda t: t.pin_memory() if pin else t
    return TrainBatch(held(batch.x), held(batch.y), {k: held(v.half()) for k, v in batch.features.items()})


def to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    move = lambda t: t.to(device, non_blocking=True)
    return TrainBatch(move(batch.x), move(batch.y), {k: move(v).float() for k, v in batch.features.items()})


class StepBench:
    """A built training state for one config; ``run(n)`` takes n steps."""

    def __init__(self, cfg: Config, device: torch.device):
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        method = build_method(cfg, bench_env(cfg, device)).to(device)
        for net in method.networks().values():
            net.grad_checkpointing = cfg.train.grad_checkpointing
        self.state = TrainState(cfg, DistInfo(device=device), method)
        self.state.distribute()  # compiles when train.compile
        self.timer = StageTimer(device)
        self.state.stage_done = self.timer
        self.host = host_batch(cfg, device)

    def next_batch(self, micro_step: int) -> TrainBatch:
        return to_device(self.host, self.device)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.timer.start_step()
            self.state.run_step(self.next_batch)

    def host_syncs(self) -> int:
        with count_host_syncs() as counts:
            self.state.run_step(self.next_batch)
        return sum(counts.values())


def measure_step(name: str, what: str, cfg: Config, device: torch.device, peak: float, repeats: int,
                 warmup: int = 2) -> Row:  # fmt: skip
    """Time ``repeats`` steps after ``warmup`` (compilation happens there); an out-of-memory is a row's note."""
    batch = cfg.train.batch_size
    release(device)
    try:
        bench = StepBench(cfg, device)
        start = time.perf_counter()
        bench.run(warmup)
        synchronize(device)
        warm_s = time.perf_counter() - start
        bench.timer.clear()
        start = time.perf_counter()
        bench.run(repeats)
        synchronize(device)
        seconds = (time.perf_counter() - start) / repeats
        split = {k: 1e3 * v for k, v in bench.timer.split().items()}
        syncs = -1 if cfg.train.compile else bench.host_syncs()
        memory = peak_memory(device)
        flops = train_flops(cfg, bench.state.model, batch)
    except torch.cuda.OutOfMemoryError:
        return Row(name, what, batch, note="out of memory")
    finally:
        bench = None
        release(device)
    note = f"warm-up {warm_s:.0f} s" + (" (compiling)" if cfg.train.compile else "")
    return Row(name, what, batch, batch / seconds, 1e3 * seconds, flops / seconds / 1e12, flops / seconds / peak,
               memory, {k: split.get(k, 0.0) for k in STAGES}, syncs, note)  # fmt: skip


def largest_batch(cfg: Config, device: torch.device, cap: int, probes: tuple[int, int] = (32, 64),
                  fill: float = 0.85, multiple: int = 32) -> tuple[int, str]:  # fmt: skip
    """The largest batch (a multiple of ``multiple``, at most ``cap``) whose eager step should fit in ``fill`` of
    the device's memory, from the peak memory of two probe batches (a line through them: the weights and
    optimiser state, plus activations per image). On a CPU there is nothing to fill: ``cfg``'s own batch."""
    if device.type != "cuda":
        return cfg.train.batch_size, "no GPU: the given batch"
    peaks = []
    for b in probes:
        release(device)
        bench = StepBench(with_train(cfg, batch_size=b, compile=False), device)
        bench.run(2)  # the optimiser state exists from the first step on
        synchronize(device)
        peaks.append(peak_memory(device) * 2**30)
        bench = None
    release(device)
    per_image = (peaks[1] - peaks[0]) / (probes[1] - probes[0])
    total = torch.cuda.get_device_properties(device).total_memory
    fits = int((fill * total - (peaks[0] - per_image * probes[0])) / max(per_image, 1.0))
    batch = max(multiple, min(cap, fits // multiple * multiple))
    return batch, f"{per_image / 2**20:.0f} MiB/image: {fits} fit, capped at {cap}"
