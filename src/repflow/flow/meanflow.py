"""The MeanFlow objective (Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447), in this library's convention.

With ``z_t = alpha_t x + sigma_t eps`` (t = 0 data, t = 1 noise) and ``v = dz_t/dt``, the network predicts the
*average* velocity over [r, t], ``u(z_t, r, t) = (z_t - z_r) / (t - r)``, conditioned on t and the interval
``h = t - r`` (the official network's two time inputs). Differentiating ``(t - r) u = z_t - z_r`` in t gives the
MeanFlow identity

    u(z_t, r, t) = v - (t - r) d/dt u(z_t, r, t),   d/dt u = v . grad_z u + du/dt   (r fixed),

so the target is ``sg(v_g - (t - r) du/dt)``, the total derivative taken by one Jacobian-vector product along
``(v_g, 1)`` in ``(z, t)`` (``torch.func.jvp``), or by a central finite difference (MF-RAE). r = t is flow
matching. ``v_g`` is the velocity with guidance folded in (the paper's appendix, the official ``guidance_fn``):
``omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null)`` for t in the guidance interval,
from the network itself without gradient. One step from noise: ``x = eps - u(eps, 0, 1)``.

iMF (Geng, Lu et al. 2025, arXiv 2512.02012; Lyy-iiis/imeanflow ``imf.py``) recasts the loss as one on the
instantaneous velocity, ``||u + (t - r) sg(du/dt) - sg(v_g)||^2``: the same value and gradient as the loss on
``u - sg(v_g - (t - r) du/dt)`` (tested), so what changes is the JVP's tangent (``tangent="model"``: the network's
own conditional velocity ``u(z_t, t, t | c)`` instead of the noisy ``v_g``) and an auxiliary loss on a velocity
prediction (``velocity_weight``; iMF's second head where the network has one, else its ``u(z_t, t, t)``). iMF's
guided velocity ``v + (1 - 1/w)(v_c - v_u)`` is the form above with omega = 1, kappa = 1 - 1/w.

iMF's guidance conditioning (``guidance_conditioning``): instead of one fixed w, every sample draws its own
``w`` in ``[1, guidance_max]`` (density ~ ``w^-guidance_beta``, iMF's ``sample_cfg_scale``) and its own interval
``t_lo ~ U(guidance_start_range)``, ``t_hi ~ U(guidance_end_range)`` (``[0, 1]`` on the r = t share, iMF's
``sample_cfg_interval``); the network takes ``(w, t_lo, t_hi)`` as inputs, so one network samples at any w. The
target is ``v + (1 - 1/w')(v_c - v_u)`` with ``w' = w`` for t in ``[t_lo, t_hi]`` and 1 outside, ``v_c`` the
velocity at the sample's label conditioned on ``(w', 0, 1)``, ``v_u`` at the null label on ``(1, 0, 1)`` (iMF's
``guidance_fn``); the differentiated call sees ``(w, t_lo, t_hi)``. With a velocity head (``velocity_head``:
the network's ``ModelOutput.velocity``, iMF's v head) the guidance calls and the velocity loss read that head,
the loss its output from the differentiated call itself.

pMF (Lu et al. 2026, arXiv 2601.22158; Lyy-iiis/pMF ``pmf.py``, ``pmfDiT``) lets the network predict the field
``x(z_t, r, t) = z_t - t u(z_t, r, t)`` (``prediction="x"``, on the linear path): ``u = (z_t - x) / max(t, 0.05)``
inside every call, so the JVP, the guidance and the sampler all see u; the true velocity is ``(z_t - x) /
max(t, 0.05)`` as well. Its perceptual losses (LPIPS, ConvNeXt) are not here.

The reductions follow the official code (Gsunshine/meanflow, ``meanflow.py``): the squared error is *summed*
over a sample's values, divided by ``sg((loss + c)^p)`` (the adaptive weight) and averaged over the batch. The
pairs with r = t are an exact share of the batch (``int(n * r_equals_t)``), and the dropped labels are drawn as
a count and placed on samples of that share, as the official code's first-k masks do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..runtime.precision import full_precision
from .loss import FlowSample, LossOutput, draw_noise, drop_labels, step_draw
from .path import Path, expand_t
from .timesteps import TimeSampler

DERIVATIVES = ("jvp", "finite_difference")
TANGENTS = ("target", "model")  # the JVP's z-tangent: v_g (MeanFlow) or the network's own velocity (iMF)


@dataclass
class MeanFlowDraw:
    """The random quantities of one MeanFlow step: the pair (r <= t), noise per stream, label-drop mask."""

    t: Tensor  # (B,)
    r: Tensor  # (B,)
    eps: dict[str, Tensor]
    drop: Tensor  # (B,) bool
    guidance: Tensor | None = None  # (B, 3): iMF's (w, t_lo, t_hi) per sample (guidance_conditioning)

    def chunk(self, index: int, size: int) -> MeanFlowDraw:
        sl = slice(index * size, (index + 1) * size)
        guidance = None if self.guidance is None else self.guidance[sl]
        return MeanFlowDraw(self.t[sl], self.r[sl], {k: v[sl] for k, v in self.eps.items()}, self.drop[sl], guidance)


def guidance_scale(u: Tensor, w_max: float, beta: float) -> Tensor:
    """iMF's ``sample_cfg_scale``: u ~ U(0, 1) to w in [1, w_max] with density ~ w^-beta (inverse CDF)."""
    if beta == 1.0:
        return torch.exp(u * math.log(w_max))
    base = (1.0 - beta) * math.log(w_max)
    return torch.exp(torch.log1p(u * math.expm1(base)) / (1.0 - beta))


def guidance_condition(w: Tensor, lo: Tensor | float = 0.0, hi: Tensor | float = 1.0) -> Tensor:
    """(B, 3) ``(w, t_lo, t_hi)``: what a guidance-conditioned network takes (iMF's velocity calls: (w, 0, 1))."""
    return torch.stack([w, torch.zeros_like(w) + lo, torch.zeros_like(w) + hi], dim=-1)


def adaptive_weight(loss: Tensor, power: float, offset: float) -> Tensor:
    """``loss / sg((loss + offset)^power)`` per sample: the value is reweighted, the gradient direction kept
    (power 0: the plain loss; power 1: about a relative error, so a few large errors do not dominate)."""
    return loss / (loss.detach() + offset) ** power


def sum_flat(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch (the official loss sums over pixels)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


@dataclass
class Prediction:
    """What the differentiated call produced: the average velocity per stream and hidden states (REPA reads them)."""

    pred: dict[str, Tensor]
    hidden: dict[int, Tensor]


ModelFn = Callable[..., object]  # (states, t, y, return_hidden=..., h=...) -> ModelOutput


@dataclass
class MeanFlowLoss:
    path: Path
    time_sampler: TimeSampler  # t and r are two draws of it, sorted
    r_equals_t: float = 0.75  # share of the batch with r = t (official data_proportion)
    class_dropout: float = 0.0
    null_label: int = 0
    omega: float = 1.0  # guidance folded into the target: weight of the true velocity ...
    kappa: float = 0.0  # ... and of the model's own conditional velocity (paper App. B.1); null gets 1 - w - k
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # t where it applies (official t_start, t_end)
    norm_p: float = 1.0  # adaptive weight 1 / (loss + norm_eps)^norm_p
    norm_eps: float = 0.01
    derivative: str = "jvp"  # or finite_difference (MF-RAE)
    fd_step: float = 5e-3  # MF-RAE's delta_t
    noise_scale: float = 1.0
    tangent: str = "target"  # iMF: "model"
    prediction: str = "v"  # what the network outputs: the average velocity u, or pMF's x = z_t - t u
    min_denominator: float = 0.05  # pMF: u = (z_t - x) / max(t, 0.05)
    velocity_weight: float = 0.0  # iMF's auxiliary velocity loss (iMF: 1)
    velocity_head: bool = False  # the network has a velocity head (model.velocity_head): velocities read it
    guidance_conditioning: bool = False  # iMF: w and its interval drawn per sample and given to the network
    guidance_max: float = 8.0  # w in [1, guidance_max] (iMF: 1 + s_max, s_max = 7)
    guidance_beta: float = 1.0  # w's density ~ w^-beta (iMF's cfg_beta; 1: log-uniform)
    guidance_start_range: tuple[float, float] = (0.0, 0.5)  # t_lo ~ U(range) (iMF)
    guidance_end_range: tuple[float, float] = (0.5, 1.0)  # t_hi ~ U(range) (iMF)

    def __post_init__(self) -> None:
        if self.derivative not in DERIVATIVES:
            raise ValueError(f"unknown derivative {self.derivative!r}; choose from {', '.join(DERIVATIVES)}")
        if self.prediction not in ("v", "x") or (self.prediction == "x" and self.path.name != "linear"):
            raise ValueError(f"MeanFlow predicts v, or x on the linear path (pMF); got {self.prediction!r} on "
                             f"the {self.path.name} path")  # fmt: skip
        if self.tangent not in TANGENTS:
            raise ValueError(f"unknown tangent {self.tangent!r}; choose from {', '.join(TANGENTS)}")

    @property
    def guides(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0 or self.guidance_conditioning

    # -- randomness ------------------------------------------------------------------------------------------
    def draw(
        self, shapes: Mapping[str, Sequence[int]], n: int, generator: torch.Generator | None, device=None
    ) -> MeanFlowDraw:
        t = self.time_sampler.sample(n, self.path, generator, device=device)
        r = self.time_sampler.sample(n, self.path, generator, device=device)
        t, r = torch.maximum(t, r), torch.minimum(t, r)
        eps = draw_noise(shapes, n, generator, device, self.noise_scale)
        # official: the first int(n * data_proportion) samples get r = t and the first num_drop (a binomial count)
        # lose their label; a random order places both, so a process's slice is not all of one kind
        order = torch.randperm(n, generator=generator, device=device)
        equal = torch.zeros(n, dtype=torch.bool, device=device)
        equal[order[: int(n * self.r_equals_t)]] = True
        r = torch.where(equal, t, r)
        num_drop = int((torch.rand(n, generator=generator, device=device) < self.class_dropout).sum())
        drop = torch.zeros(n, dtype=torch.bool, device=device)
        drop[order[:num_drop]] = True
        if not self.guidance_conditioning:
            return MeanFlowDraw(t, r, eps, drop)
        bounds = [torch.rand(n, generator=generator, device=device, dtype=t.dtype) * (b - a) + a
                  for a, b in (self.guidance_start_range, self.guidance_end_range)]  # fmt: skip
        lo, hi = torch.where(equal, 0.0, bounds[0]), torch.where(equal, 1.0, bounds[1])  # r = t: no interval
        w = guidance_scale(torch.rand(n, generator=generator, device=device, dtype=t.dtype), self.guidance_max,
                           self.guidance_beta)  # fmt: skip
        return MeanFlowDraw(t, r, eps, drop, guidance_condition(w, lo, hi))

    # -- the target's parts ----------------------------------------------------------------------------------
    @torch.no_grad()
    def guided_velocity(self, model: ModelFn, z_t: dict[str, Tensor], v: dict[str, Tensor], t: Tensor,
                        y: Tensor | None, drop: Tensor,
                        guidance: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """``v_g``: the true velocity with the model's guidance folded in, on samples that keep their label and
        whose t lies in the interval (official ``guidance_fn`` then ``cond_drop``)."""
        return self.target_velocities(model, z_t, v, t, y, drop, guidance)[0]

    @torch.no_grad()
    def target_velocities(self, model: ModelFn, z_t: dict[str, Tensor], v: dict[str, Tensor], t: Tensor,
                          y: Tensor | None, drop: Tensor,
                          guidance: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
        """``(v_g, tangent)``: the guided velocity and the JVP's z-tangent, which is ``v_g`` (MeanFlow) or the
        network's conditional velocity ``u(z_t, t, t | c)`` with the label kept (iMF's ``v_c``, also where the
        label is dropped), taken from the guidance call when that one has it. ``guidance``: the draw's per-sample
        ``(w, t_lo, t_hi)`` (``guidance_conditioning``)."""
        own = self.tangent == "model"
        guides = self.guides and y is not None
        if guides and self.guidance_conditioning:
            return self.conditioned_target_velocities(model, z_t, v, t, y, drop, guidance)
        v_c = v_u = None
        if guides and (self.kappa != 0 or own):  # both halves in one call of twice the batch
            null = torch.full_like(y, self.null_label)
            both = self.predict(model, {k: torch.cat([z, z]) for k, z in z_t.items()}, torch.cat([t, t]),
                                torch.cat([y, null]))  # fmt: skip
            v_c, v_u = {k: b.chunk(2)[0] for k, b in both.items()}, {k: b.chunk(2)[1] for k, b in both.items()}
        elif guides:  # only the null-label velocity is needed (official: one call)
            v_u = self.predict(model, z_t, t, torch.full_like(y, self.null_label))
        elif own:
            v_c = self.predict(model, z_t, t, y)
        if not guides:
            return v, (v_c if own else v)
        lo, hi = self.guidance_interval
        inside = (t >= lo) & (t <= hi)
        out = {}
        for k, v_k in v.items():
            on = expand_t(inside.to(v_k.dtype), v_k)  # omega and kappa in v's precision (a float64 run: float64)
            omega, kappa = 1 + on * (self.omega - 1), on * self.kappa
            guided = omega * v_k + (1 - omega - kappa) * v_u[k] + (kappa * v_c[k] if self.kappa != 0 else 0)
            out[k] = torch.where(drop.view(-1, *[1] * (v_k.ndim - 1)), v_k, guided)  # dropped labels: unguided
        return out, (v_c if own else out)

    def conditioned_target_velocities(self, model: ModelFn, z_t: dict[str, Tensor], v: dict[str, Tensor],
                                      t: Tensor, y: Tensor, drop: Tensor,
                                      guidance: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
        """iMF's ``guidance_fn``: ``v_g = v + (1 - 1/w')(v_c - v_u)`` with the sample's own w' (its w inside its
        interval, else 1); ``v_c`` conditioned on ``(w', 0, 1)``, ``v_u`` on the null label and ``(1, 0, 1)``, in
        one call of twice the batch. Dropped labels: ``v_g = v``; the tangent ``v_c`` either way."""
        w, lo, hi = guidance.unbind(-1)
        w_in = torch.where((t >= lo) & (t <= hi), w, torch.ones_like(w))  # (B,)
        conditions = torch.cat([guidance_condition(w_in), guidance_condition(torch.ones_like(w))])
        both = self.predict(model, {k: torch.cat([z, z]) for k, z in z_t.items()}, torch.cat([t, t]),
                            torch.cat([y, torch.full_like(y, self.null_label)]), guidance=conditions)  # fmt: skip
        v_c, v_u = {k: b.chunk(2)[0] for k, b in both.items()}, {k: b.chunk(2)[1] for k, b in both.items()}
        out = {}
        for k, v_k in v.items():
            kappa = expand_t(1 - 1 / w_in.to(v_k.dtype), v_k)
            guided = v_k + kappa * (v_c[k] - v_u[k])
            out[k] = torch.where(drop.view(-1, *[1] * (v_k.ndim - 1)), v_k, guided)
        return out, (v_c if self.tangent == "model" else out)

    def average_velocity(self, model: ModelFn, z_t: dict[str, Tensor], t: Tensor, r: Tensor, y: Tensor | None,
                         tangent: dict[str, Tensor], return_hidden: Sequence[int] = (),
                         guidance: Tensor | None = None):  # fmt: skip
        """``u(z_t, r, t)`` (with gradient), its total derivative ``d/dt u`` along ``(tangent, 1)`` with r fixed
        (no gradient), and the aux outputs of the differentiated call: its hidden states and its velocity head's
        velocity (with gradient; empty without a head)."""
        conditions = {} if guidance is None else {"guidance": guidance}

        def u_fn(z: dict[str, Tensor], time: Tensor):
            out = model(z, time, y, return_hidden=tuple(return_hidden), h=time - r, **conditions)
            velocity = self.as_average_velocity(out.velocity, z, time) if self.velocity_head else {}
            return self.as_average_velocity(out.pred, z, time), (out.hidden, velocity)

        if self.derivative == "jvp":
            # the fused attention kernels (flash, memory-efficient; CPU's flash too) have no forward-mode
            # derivative: the math path, under the JVP only
            with sdpa_kernel(SDPBackend.MATH):
                u, du_dt, hidden = torch.func.jvp(u_fn, (z_t, t), (tangent, torch.ones_like(t)), has_aux=True)
            return u, {k: d.detach() for k, d in du_dt.items()}, hidden
        u, hidden = u_fn(z_t, t)
        with torch.no_grad():  # MF-RAE: (u(z + d v, t + d) - u(z - d v, t - d)) / 2d
            d = self.fd_step
            plus, _ = u_fn({k: z + d * tangent[k] for k, z in z_t.items()}, t + d)
            minus, _ = u_fn({k: z - d * tangent[k] for k, z in z_t.items()}, t - d)
            du_dt = {k: (full_precision(plus[k]) - full_precision(minus[k])) / (2 * d) for k in plus}
        return u, du_dt, hidden

    def as_average_velocity(self, pred: Mapping[str, Tensor], z: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """The network's output as u: itself, or (pMF) ``(z_t - x) / max(t, min_denominator)``."""
        if self.prediction == "v":
            return dict(pred)
        return {k: self.path.convert(p, "x", "v", z[k], t, self.min_denominator) for k, p in pred.items()}

    def predict(self, model: ModelFn, z: dict[str, Tensor], t: Tensor, y: Tensor | None, **kw) -> dict[str, Tensor]:
        """The instantaneous velocity of one call (h = 0), in full precision: the velocity head's where the
        network has one (iMF's ``v_cond_fn``), else its average velocity."""
        out = model(z, t, y, **kw)
        pred = out.velocity if self.velocity_head else out.pred
        return self.as_average_velocity({k: full_precision(p) for k, p in pred.items()}, z, t)

    # -- the loss --------------------------------------------------------------------------------------------
    def __call__(self, model: ModelFn, clean: Mapping[str, Tensor], y: Tensor | None,
                 weights: Mapping[str, float] | None = None, draw: MeanFlowDraw | None = None,
                 generator: torch.Generator | None = None,
                 return_hidden: Sequence[int] = ()) -> tuple[LossOutput, FlowSample]:  # fmt: skip
        weights = weights or {}
        draw = step_draw(self, clean, draw, generator)
        t, r = draw.t, draw.r
        clean = {k: full_precision(v) for k, v in clean.items()}
        z_t = {k: self.path.interpolate(v, draw.eps[k], t) for k, v in clean.items()}
        if self.prediction == "v":
            v = {k: self.path.velocity(c, draw.eps[k], t) for k, c in clean.items()}
        else:  # pMF: the true velocity as the network's, (z_t - x) / max(t, 0.05)
            v = self.as_average_velocity(clean, z_t, t)
        v_g, tangent = self.target_velocities(model, z_t, v, t, y, draw.drop, draw.guidance)
        y = drop_labels(y, draw.drop, self.class_dropout, self.null_label)
        u, du_dt, (hidden, velocity) = self.average_velocity(model, z_t, t, r, y, tangent, return_hidden,
                                                             draw.guidance)  # fmt: skip
        # iMF's auxiliary velocity loss (with gradient): its velocity head's output from the same call (iMF), or
        # without a head the network's instantaneous velocity u(z_t, t, t) from one more call
        if self.velocity_weight and not self.velocity_head:
            conditions = {} if draw.guidance is None else {"guidance": draw.guidance}
            velocity = self.predict(model, z_t, t, y, h=torch.zeros_like(t), **conditions)
        velocity = velocity if self.velocity_weight else {}
        terms: dict[str, Tensor] = {}
        total = 0.0
        for k in clean:
            interval = expand_t((t - r).clamp(0.0, 1.0), v_g[k])  # official: clip(t - r, 0, 1)
            target = (v_g[k] - interval * full_precision(du_dt[k])).detach()
            error = sum_flat((full_precision(u[k]) - target) ** 2)  # (B,)
            terms[f"meanflow_{k}"] = adaptive_weight(error, self.norm_p, self.norm_eps).mean()
            terms[f"meanflow_{k}_mse"] = error.detach().mean() / target[0].numel()  # per value, unweighted (log)
            total = total + weights.get(k, 1.0) * terms[f"meanflow_{k}"]
            if k in velocity:
                error_v = sum_flat((full_precision(velocity[k]) - v_g[k].detach()) ** 2)
                terms[f"meanflow_{k}_v"] = adaptive_weight(error_v, self.norm_p, self.norm_eps).mean()
                total = total + weights.get(k, 1.0) * self.velocity_weight * terms[f"meanflow_{k}_v"]
        return LossOutput(total=total, terms=terms), FlowSample(t=t, x_t=z_t, y=y, output=Prediction(u, hidden))
