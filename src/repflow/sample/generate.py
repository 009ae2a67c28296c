"""Generation: network -> velocity field -> guidance -> solver -> decoded images.

``generate`` is the one entry point used by training previews, ``repflow sample`` and evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..build import guidance_scales, stream_shapes
from ..config import FlowConfig, SampleConfig
from ..data.transforms import model_to_uint8
from ..flow.guidance import classifier_free
from ..flow.path import Path, build_path, expand_t
from ..flow.solvers import dopri5, euler, euler_maruyama, heun
from .noise import PerSampleNoise


@dataclass
class Generated:
    states: dict[str, Tensor]  # final state per stream in model space ("x", and "cls" for REG)
    nfe: int  # velocity evaluations (a guided evaluation is one batched network call)


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast on GPU (and when asked on CPU); fp32 otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def network_velocity(model: nn.Module, path: Path, flow: FlowConfig, precision: str = "auto"):
    """(state, t, y) -> velocity per stream, converting the network's prediction kind to v."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def velocity(state: dict[str, Tensor], t: float, y: Tensor | None) -> dict[str, Tensor]:
        x = state["x"]
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        with autocast_for(device, precision):
            out = model({k: v.float() for k, v in state.items()}, t_vec, y)
        v = {}
        for k, s in state.items():
            pred = out.pred[k].to(s.dtype)
            v[k] = path.convert(pred, flow.prediction, "v", s, expand_t(t_vec, s).to(s.dtype), flow.min_denominator)
        return v

    return velocity


def generate(
    model: nn.Module,
    flow: FlowConfig,
    opts: SampleConfig,
    shapes: dict[str, Sequence[int]],
    indices: Sequence[int],
    labels: Tensor | None,
    guidance: dict[str, float] | None = None,
    precision: str = "auto",
) -> Generated:
    """Sample the streams ``shapes`` (per-sample shapes, e.g. {"x": (4, 32, 32)}) for sample ``indices``.

    The initial noise and every SDE increment of sample i come from its own seeded generator, so the result
    for index i is the same whatever the batch it is generated in. ``guidance`` maps stream -> CFG scale
    (default: ``opts.cfg`` for every stream).
    """
    if opts.sampler not in ("euler", "heun", "sde", "dopri5"):
        raise ValueError(f"unknown sampler {opts.sampler!r}; choose from euler, heun, sde, dopri5")
    device = next(model.parameters()).device
    path = build_path(flow.path)
    noise = PerSampleNoise(opts.seed, indices, device)
    state = noise.draw(shapes)
    null_label = getattr(model, "null_label", 0)
    scales = guidance if guidance is not None else {k: opts.cfg for k in shapes}
    if any(w != 1.0 for w in scales.values()) and (labels is None or getattr(model, "num_classes", 0) == 0):
        raise ValueError("classifier-free guidance needs a class-conditional model and labels")
    if labels is not None:
        labels = labels.to(device)
    velocity = classifier_free(
        network_velocity(model, path, flow, precision), labels, null_label, scales, tuple(opts.cfg_interval)
    )
    was_training = model.training
    model.eval()
    try:
        if opts.sampler == "euler":
            sol = euler(velocity, state, opts.steps)
        elif opts.sampler == "heun":
            sol = heun(velocity, state, opts.steps)
        elif opts.sampler == "sde":
            sol = euler_maruyama(velocity, state, opts.steps, path, noise.like, t_last=opts.sde_t_last)
        else:
            sol = dopri5(velocity, state, rtol=opts.rtol, atol=opts.atol)
    finally:
        model.train(was_training)
    return Generated(states=sol.state, nfe=sol.nfe)


def balanced_labels(indices: Sequence[int], num_classes: int) -> Tensor | None:
    """Label of sample i is i mod num_classes: N/num_classes per class for N a multiple of the classes."""
    if num_classes <= 0:
        return None
    return torch.tensor([i % num_classes for i in indices], dtype=torch.long)


@torch.no_grad()
def sample_images(
    model: nn.Module,
    cfg,
    codec,
    indices: Sequence[int],
    opts: SampleConfig | None = None,
    labels: Tensor | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Generate and decode samples ``indices`` of a resolved config: (N, C, H, W) uint8 and the NFE per batch.

    Labels default to balanced classes (index mod num_classes). Batches of ``opts.batch_size``.
    """
    opts = opts or cfg.sample
    indices = list(indices)
    if labels is None:
        labels = balanced_labels(indices, cfg.model.num_classes)
    shapes, scales = stream_shapes(cfg), guidance_scales(cfg, opts)
    chunks, nfe = [], 0
    starts = range(0, len(indices), opts.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="sampling", unit="batch")
    for lo in starts:
        idx = indices[lo : lo + opts.batch_size]
        y = None if labels is None else labels[lo : lo + len(idx)]
        out = generate(model, cfg.flow, opts, shapes, idx, y, guidance=scales, precision=cfg.train.precision)
        chunks.append(model_to_uint8(codec.decode(out.states["x"])).cpu())
        nfe = out.nfe
    return torch.cat(chunks), nfe
