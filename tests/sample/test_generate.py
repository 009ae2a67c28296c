import dataclasses

import pytest
import torch

from repflow.build import codec_for, resolve_config
from repflow.config import SAMPLERS
from repflow.data import build_dataset
from repflow.flow.generate import generate, sample_images
from repflow.flow.noise import PerSampleNoise
from repflow.flow.solvers import euler, heun
from repflow.flow.timesteps import time_grid
from repflow.methods import FlowMethod
from repflow.methods.flow import build_flow_network

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    torch.manual_seed(0)
    model = build_flow_network(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave adaLN-Zero so the output depends on the input
    model.eval()
    return cfg, FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"), codec_for(cfg))


def test_noise_is_per_sample():
    a = PerSampleNoise(7, [0, 1, 2, 3]).draw({"x": (2, 3)})["x"]
    b = PerSampleNoise(7, [2, 3]).draw({"x": (2, 3)})["x"]
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(PerSampleNoise(8, [0]).draw({"x": (2,)})["x"], a[:1, 0, :2])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_images_do_not_depend_on_batch_size(setup, sampler):
    cfg, denoiser = setup
    opts = dataclasses.replace(cfg.sample, sampler=sampler, steps=4, cfg=1.5, rtol=1e-3, atol=1e-3)
    big, _ = sample_images(denoiser, dataclasses.replace(opts, batch_size=6), range(6))
    small, _ = sample_images(denoiser, dataclasses.replace(opts, batch_size=4), range(6))
    tail, _ = sample_images(denoiser, dataclasses.replace(opts, batch_size=1), [4, 5])
    if sampler == "dopri5":  # adaptive steps depend on the whole batch's error estimate
        assert (big.float() - small.float()).abs().max() <= 2
    else:
        assert torch.equal(big, small)
        assert torch.equal(big[4:], tail)
    assert big.shape == (6, 3, 8, 8) and big.dtype == torch.uint8


def hand_written_euler(denoiser, opts, indices, labels, w: float):
    """Classifier-free guidance written out: two separate network passes per step, u + w (c - u)."""
    state = PerSampleNoise(opts.seed, indices).draw(denoiser.shapes)
    null = torch.full_like(labels, denoiser.null_label)

    def velocity(s, t, t_step):
        c, u = denoiser.velocity(s, t, labels), denoiser.velocity(s, t, null)
        return {k: u[k] + w * (c[k] - u[k]) for k in s}

    return euler(velocity, state, time_grid(opts.steps)).state


def test_guidance_scale_one_is_the_conditional_model_and_batched_guidance_is_two_passes(setup):
    cfg, denoiser = setup
    opts = dataclasses.replace(cfg.sample, sampler="euler", steps=3)
    labels = torch.tensor([0, 1, 2])
    plain = generate(denoiser, dataclasses.replace(opts, cfg=1.0), [0, 1, 2], labels)
    cond_only = euler(lambda s, t, _: denoiser.velocity(s, t, labels),
                      PerSampleNoise(opts.seed, [0, 1, 2]).draw(denoiser.shapes), time_grid(3))  # fmt: skip
    assert torch.equal(plain.states["x"], cond_only.state["x"])  # w = 1: exactly the conditional model
    guided = generate(denoiser, dataclasses.replace(opts, cfg=4.0), [0, 1, 2], labels)
    reference = hand_written_euler(denoiser, opts, [0, 1, 2], labels, 4.0)
    assert torch.allclose(guided.states["x"], reference["x"], atol=1e-5)  # one batched call == two passes
    assert not torch.allclose(plain.states["x"], guided.states["x"], atol=1e-3)
    assert plain.nfe == guided.nfe == 3


def test_guidance_needs_labels(setup):
    cfg, denoiser = setup
    with pytest.raises(ValueError, match="class-conditional"):
        generate(denoiser, dataclasses.replace(cfg.sample, cfg=2.0), [0], None)


def test_unknown_sampler(setup):
    cfg, denoiser = setup
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(denoiser, dataclasses.replace(cfg.sample, sampler="ddim"), [0], None)


class CountingNetwork(torch.nn.Module):
    """The network as the denoiser calls it, recording the batch size of every call."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, states, t, y, **kw):
        self.calls.append(t.shape[0])
        return self.inner(states, t, y, **kw)


def counted(cfg, model):
    """The run's denoiser with its network wrapped in a call counter."""
    denoiser = FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"), codec_for(cfg))
    net = CountingNetwork(model)
    return dataclasses.replace(denoiser, network=net), net


def tiny_setup(*overrides):
    cfg = tiny_config(*overrides)
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    torch.manual_seed(0)
    model = build_flow_network(cfg).double()  # float64: batched and separate calls agree to rounding
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model.eval()


def dit_dh_setup():
    """RAEv2's in-context DiT^DH with an internal output: internal guidance inside the velocity."""
    overrides = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.backbone=in_context", "model.depth=3",
                 "model.hidden_size=32", "model.num_heads=2", "model.head_width=64", "model.head_heads=4",
                 "model.internal_depth=2", "model.num_classes=4", "model.input_size=4", "model.in_channels=3",
                 "flow.prediction=x", "data.resolution=4", "sample.internal_guidance=1.5",
                 "sample.internal_interval=[0.1,1.0]"]  # fmt: skip
    return tiny_setup(*overrides)


def reg_setup():
    """REG: two streams (image and class token) with their own scales."""
    return tiny_setup("reg.enabled=true", "encoders=[{name: tiny}]", "reg.dim=6", "sample.cfg_cls=1.5")


@pytest.mark.parametrize("make", [tiny_setup, dit_dh_setup, reg_setup], ids=["sit", "raev2-internal", "reg"])
def test_classifier_free_guidance_is_one_network_call_per_evaluation(make):
    """Every guided evaluation is one call on the conditional and null-label halves together (the cause of two
    calls was an ``is`` test between two bound methods, always false), equal to two separate calls."""
    cfg, model = make()
    denoiser, net = counted(cfg, model)
    labels = torch.tensor([0, 1, 2])
    opts = dataclasses.replace(cfg.sample, sampler="heun", steps=4, cfg=3.0, cfg_interval=(0.0, 0.6))
    out = generate(denoiser, opts, [0, 1, 2], labels)
    grid = time_grid(4)
    guided_steps = [lo <= 0.6 for lo in grid[:-1]]  # the step rule: decided at each step's start
    expected = [6 if g else 3 for g, n in zip(guided_steps, (2, 2, 2, 1), strict=True) for _ in range(n)]
    assert out.nfe == 7 and net.calls == expected  # 2 x 3 Heun evaluations + the final Euler step

    def separately(state, t, t_step):  # the same guidance written with two calls
        weak = denoiser.for_options(opts) if hasattr(denoiser, "for_options") else denoiser
        scales = denoiser.guidance_scales(opts)
        if not t_step <= 0.6:
            return weak.velocity(state, t, labels)
        c, u = weak.velocity(state, t, labels), weak.velocity(state, t, torch.full_like(labels, 4))
        return {k: u[k] + scales[k] * (c[k] - u[k]) for k in c}

    start = {k: v.double() for k, v in PerSampleNoise(opts.seed, [0, 1, 2]).draw(denoiser.shapes).items()}
    reference = heun(separately, start, grid).state
    for k in reference:
        torch.testing.assert_close(out.states[k], reference[k], rtol=1e-10, atol=1e-10)
    unguided = generate(denoiser, dataclasses.replace(opts, cfg=1.0, cfg_cls=1.0), [0, 1, 2], labels)
    assert (unguided.states["x"] - out.states["x"]).abs().max() > 1e-3


def test_autoguidance_calls_the_guide_network_separately():
    cfg, model = tiny_setup()
    _, weak_model = tiny_setup("seed=1")
    (den, main_net), (guide, guide_net) = counted(cfg, model), counted(cfg, weak_model)
    opts = dataclasses.replace(cfg.sample, sampler="euler", steps=3, cfg=2.0)
    generate(den, opts, [0, 1], torch.tensor([0, 1]), guide=guide)
    assert main_net.calls == guide_net.calls == [2, 2, 2]  # two networks: a call each, same batch
