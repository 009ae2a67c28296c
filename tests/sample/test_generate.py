import dataclasses

import pytest
import torch

from repflow.build import build_network, codec_for, resolve_config
from repflow.data import build_dataset
from repflow.sample.generate import generate, sample_images
from repflow.sample.noise import PerSampleNoise

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    torch.manual_seed(0)
    model = build_network(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave adaLN-Zero so the output depends on the input
    return cfg, model.eval()


def test_noise_is_per_sample():
    a = PerSampleNoise(7, [0, 1, 2, 3]).draw({"x": (2, 3)})["x"]
    b = PerSampleNoise(7, [2, 3]).draw({"x": (2, 3)})["x"]
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(PerSampleNoise(8, [0]).draw({"x": (2,)})["x"], a[:1, 0, :2])


@pytest.mark.parametrize("sampler", ["euler", "heun", "sde", "dopri5"])
def test_images_do_not_depend_on_batch_size(setup, sampler):
    cfg, model = setup
    opts = dataclasses.replace(cfg.sample, sampler=sampler, steps=4, cfg=1.5, rtol=1e-3, atol=1e-3)
    codec = codec_for(cfg)
    big, _ = sample_images(model, cfg, codec, range(6), dataclasses.replace(opts, batch_size=6))
    small, _ = sample_images(model, cfg, codec, range(6), dataclasses.replace(opts, batch_size=4))
    tail, _ = sample_images(model, cfg, codec, [4, 5], dataclasses.replace(opts, batch_size=1))
    if sampler == "dopri5":  # adaptive steps depend on the whole batch's error estimate
        assert (big.float() - small.float()).abs().max() <= 2
    else:
        assert torch.equal(big, small)
        assert torch.equal(big[4:], tail)
    assert big.shape == (6, 3, 8, 8) and big.dtype == torch.uint8


def test_cfg_one_equals_conditional_generation(setup):
    cfg, model = setup
    opts = dataclasses.replace(cfg.sample, sampler="euler", steps=3)
    labels = torch.tensor([0, 1, 2])
    plain = generate(model, cfg.flow, dataclasses.replace(opts, cfg=1.0), {"x": (3, 8, 8)}, [0, 1, 2], labels)
    guided = generate(model, cfg.flow, dataclasses.replace(opts, cfg=4.0), {"x": (3, 8, 8)}, [0, 1, 2], labels)
    assert plain.nfe == guided.nfe == 3
    assert not torch.allclose(plain.states["x"], guided.states["x"])


def test_guidance_needs_labels(setup):
    cfg, model = setup
    with pytest.raises(ValueError, match="class-conditional"):
        generate(model, cfg.flow, dataclasses.replace(cfg.sample, cfg=2.0), {"x": (3, 8, 8)}, [0], None)


def test_unknown_sampler(setup):
    cfg, model = setup
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(model, cfg.flow, dataclasses.replace(cfg.sample, sampler="ddim"), {"x": (3, 8, 8)}, [0], None)
