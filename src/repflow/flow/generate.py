"""Generation: denoiser -> guided velocity -> solver on a time grid -> decoded images.

``generate`` is the one entry point used by training previews, ``repflow sample``, evaluation and the Python
API. Sample i draws its initial noise (and every SDE increment) from its own generator seeded by
``(seed, i)``, so its result does not depend on the batch it is generated in or on the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import SAMPLERS, SampleConfig
from ..data.transforms import model_to_uint8
from .denoiser import Denoiser
from .guidance import Guide, guided
from .noise import PerSampleNoise
from .solvers import State, dopri5, dpm_solver_2m, euler, euler_maruyama, heun, mean_jumps, sde_grid
from .timesteps import time_grid


@dataclass
class Generated:
    states: dict[str, Tensor]  # final state per stream in model space ("x", and "cls" for REG)
    nfe: int  # velocity evaluations (classifier-free guided: one batched network call each)


def balanced_labels(indices: Sequence[int], num_classes: int, classes: Sequence[int] | None = None) -> Tensor | None:
    """Label of sample i: ``classes[i mod len(classes)]`` (default all classes, so i mod num_classes: N/K per
    class for N a multiple of K). None for an unconditional model."""
    if num_classes <= 0:
        return None
    classes = list(range(num_classes)) if not classes else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} do not exist; the model has classes 0..{num_classes - 1}")
    return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)


def check_sampler(denoiser: Denoiser, opts: SampleConfig) -> None:
    """Refuse, before any sampling, a sampler the denoiser cannot run."""
    if opts.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {opts.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if opts.sampler == "mean" and not getattr(denoiser, "interval_input", False):
        raise ValueError(
            "--sampler mean jumps with average velocities: it needs a MeanFlow run (method.kind="
            "meanflow); this model predicts the instantaneous velocity: use euler, heun, dpmpp_2m, sde "
            "or dopri5"
        )
    if getattr(denoiser, "guidance_input", False) and opts.cfg < 1:
        raise ValueError(f"--cfg {opts.cfg:g}: this network was trained on guidance scales w >= 1 (iMF)")


def generate(
    denoiser: Denoiser,
    opts: SampleConfig,
    indices: Sequence[int],
    labels: Tensor | None = None,
    guide: Denoiser | None = None,
) -> Generated:
    """Sample the denoiser's streams for sample ``indices`` with options ``opts``.

    Guidance: with ``guide`` (another denoiser with the same state shapes) AutoGuidance, two network calls per
    guided evaluation; else classifier-free guidance with the denoiser's null label, the conditional and null-label
    halves in one call of twice the batch; scales from ``denoiser.guidance_scales(opts)``, where from
    ``opts.cfg_interval`` and ``opts.cfg_rule``.
    """
    check_sampler(denoiser, opts)
    denoiser = denoiser.for_options(opts) if hasattr(denoiser, "for_options") else denoiser
    device = getattr(denoiser, "device", torch.device("cpu"))
    noise = PerSampleNoise(opts.seed, indices, device)
    state = {k: v.to(getattr(denoiser, "dtype", v.dtype)) for k, v in noise.draw(denoiser.shapes).items()}
    scale = getattr(denoiser, "noise_scale", 1.0)
    if scale != 1.0:
        if opts.sampler == "sde":  # its score assumes unit noise: the reverse SDE of a scaled path is another one
            raise ValueError(f"the sde sampler assumes flow.noise_scale=1 (this model: {scale:g}); use heun or euler")
        state["x"] = state["x"] * scale
    scales = denoiser.guidance_scales(opts)
    if labels is not None:
        labels = labels.to(device)
    if guide is not None:
        if dict(guide.shapes) != dict(denoiser.shapes):
            raise ValueError(f"the guide generates {dict(guide.shapes)}, the model {dict(denoiser.shapes)}")
        weight = opts.guide_scale if opts.guide_scale >= 0 else opts.cfg
        scales = {k: weight for k in denoiser.shapes}  # AutoGuidance: one scale for every stream
        how = Guide(guide.velocity)
    elif any(w != 1.0 for w in scales.values()):
        if labels is None or denoiser.num_classes == 0 or denoiser.null_label is None:
            which = "this model has no classes" if denoiser.num_classes == 0 else "no labels were given"
            raise ValueError(f"classifier-free guidance (cfg {opts.cfg:g}) needs a class-conditional model and "
                             f"labels, and {which}: sample with cfg 1 (--cfg 1)")  # fmt: skip
        how = Guide(null_label=denoiser.null_label)  # the denoiser itself: batched
    else:
        how = None
    interval = tuple(opts.cfg_interval)
    velocity = guided(denoiser.velocity, labels, how, scales, interval, opts.cfg_rule, opts.cfg_channels)
    if opts.sampler == "mean":  # MeanFlow's jumps: the average velocity over each step, guided as a velocity
        if guide is not None:
            raise ValueError("the mean sampler guides with the model's own null label, not with another run")

        def average(s: State, t: float, r: float) -> State:
            u = lambda s_, t_, y_: denoiser.average_velocity(s_, t_, r, y_)  # noqa: E731
            return guided(u, labels, how, scales, interval, opts.cfg_rule, opts.cfg_channels)(s, t, t)

        sol = mean_jumps(average, state, time_grid(opts.steps, denoiser.shift, opts.grid))
    elif opts.sampler == "euler":
        sol = euler(velocity, state, time_grid(opts.steps, denoiser.shift, opts.grid))
    elif opts.sampler == "heun":
        sol = heun(velocity, state, time_grid(opts.steps, denoiser.shift, opts.grid))
    elif opts.sampler == "dpmpp_2m":
        sol = dpm_solver_2m(velocity, state, time_grid(opts.steps, denoiser.shift, opts.grid), denoiser.path)
    elif opts.sampler == "sde":
        grid = sde_grid(opts.steps, opts.sde_t_last, denoiser.shift)
        sol = euler_maruyama(velocity, state, grid, denoiser.path, noise.like)
    else:
        sol = dopri5(velocity, state, rtol=opts.rtol, atol=opts.atol)
    return Generated(states=sol.state, nfe=sol.nfe)


@torch.no_grad()
def sample_images(
    denoiser: Denoiser,
    opts: SampleConfig,
    indices: Sequence[int],
    labels: Tensor | None = None,
    guide: Denoiser | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Generate and decode samples ``indices`` in batches of ``opts.batch_size``: (N, C, H, W) uint8 and the NFE
    per batch. Labels default to balanced classes (index mod num_classes)."""
    indices = list(indices)
    if labels is None:
        labels = balanced_labels(indices, denoiser.num_classes)
    chunks, nfe = [], 0
    starts = range(0, len(indices), opts.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="sampling", unit="batch")
    for lo in starts:
        idx = indices[lo : lo + opts.batch_size]
        y = None if labels is None else labels[lo : lo + len(idx)]
        out = generate(denoiser, opts, idx, y, guide)
        chunks.append(model_to_uint8(denoiser.decode(out.states)).cpu())
        nfe = out.nfe
    return torch.cat(chunks), nfe
