"""DDT: the official size, the encoder / decoder split, REPA on the encoder, REG's token, encoder reuse."""

import dataclasses

import pytest
import torch

from repflow.build import resolve_config
from repflow.config import ConfigError, load_config
from repflow.data import build_dataset
from repflow.flow.generate import generate
from repflow.methods import FlowMethod, MethodEnv
from repflow.models import build_model
from repflow.models.ddt import DDT, DDTConfig, count_parameters

from ..conftest import tiny_config


def test_parameter_count_is_the_official_one():
    # the official DDT(in_channels=4, num_groups=16, hidden_size=1152, num_blocks=28, num_encoder_blocks=22,
    # patch_size=2, num_classes=1000), counted on the meta device (README: 675M)
    assert count_parameters("DDT-XL/2") == 674_646_352


def tiny_ddt(**kw):
    cfg = dict(arch="DDT-T/2", depth=3, hidden_size=32, num_heads=2, encoder_depth=2, num_classes=5, input_size=8,
               in_channels=4)  # fmt: skip
    return build_model(DDTConfig(**{**cfg, **kw}))


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_encoder_then_decoder_and_hidden_states_of_both():
    model = tiny_ddt()
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 4])
    assert torch.count_nonzero(model({"x": x}, t, y).pred["x"]) == 0  # zero output layer at initialisation
    model = perturbed(model)
    out = model({"x": x}, t, y, return_hidden=(1, 2, 3))
    assert set(out.hidden) == {1, 2, 3} and out.hidden[2].shape == (2, 16, 32)
    s = model.encode({"x": x}, t, y)  # the decoder needs only s and the latent
    torch.testing.assert_close(model.decode({"x": x}, s)["x"], out.pred["x"], atol=0, rtol=0)
    other = model.encode({"x": x}, t, torch.tensor([0, 0]))
    assert not torch.allclose(model.decode({"x": x}, other)["x"], out.pred["x"])  # the label enters via s only
    with pytest.raises(ValueError, match="after blocks \\[4\\]"):
        model({"x": x}, t, y, return_hidden=(4,))


def ddt_config(*extra):
    cfg = tiny_config("model.family=ddt", "model.arch=DDT-T/2", "model.depth=3", "model.encoder_depth=2", *extra)
    return resolve_config(cfg, build_dataset(cfg.data, 4))


def test_repa_aligns_an_encoder_block_and_reg_adds_a_token_to_both_halves():
    cfg = ddt_config("repa.enabled=true", "reg.enabled=true", "encoders=[{name: tiny}]")
    cfg = cfg.replace(reg=dataclasses.replace(cfg.reg, dim=6))
    assert cfg.repa.depth == 1  # REPA's rule (a third of the depth) lands in the encoder
    method = FlowMethod(cfg, MethodEnv(encoder_dims=[6]))
    assert method.model.num_front_tokens == 1 and torch.equal(method.model.rope_cos[0], torch.ones(16))
    perturbed(method.model).train()
    from repflow.methods import TrainBatch

    batch = TrainBatch(x=torch.randn(4, 3, 8, 8), y=torch.arange(4),
                       features={"0.patch": torch.randn(4, 16, 6), "0.cls": torch.randn(4, 6)})  # fmt: skip
    out = method(batch, method.draw(batch, 4, torch.Generator().manual_seed(0)))
    assert {"flow_x", "flow_cls", "repa"} <= set(out.terms)
    out.total.backward()
    assert method.model.stream_in["cls"][0].weight.grad.abs().sum() > 0


def test_encoder_reuse_window_one_is_the_plain_sampler_and_two_halves_the_encoder_calls():
    cfg = ddt_config("sample.cfg=2.0", "sample.steps=6")
    model = perturbed(FlowMethod.inference_networks(cfg)["model"])
    denoiser = FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"))
    calls = []
    model.s_embedder.register_forward_hook(lambda *a: calls.append(1))
    labels = torch.tensor([0, 1, 2, 3])
    plain = generate(denoiser, cfg.sample, range(4), labels).states["x"]
    n_plain = len(calls)
    one = generate(denoiser, dataclasses.replace(cfg.sample, encoder_reuse=1), range(4), labels).states["x"]
    assert torch.equal(one, plain) and len(calls) == 2 * n_plain == 12
    opts = dataclasses.replace(cfg.sample, encoder_reuse=2)
    two = generate(denoiser, opts, range(4), labels).states["x"]
    assert len(calls) - 2 * n_plain == 3  # 6 Euler steps, the encoder at steps 0, 2 and 4
    assert not torch.equal(two, plain) and (two - plain).abs().max() < 0.5
    reusing = FlowMethod.denoiser(cfg.replace(**{"sample.encoder_reuse": 2}), {"model": model}, torch.device("cpu"))
    again = [generate(reusing, opts, range(4), labels).states["x"] for _ in range(2)]
    assert torch.equal(again[0], two) and torch.equal(again[1], two)  # each generation counts from its start


def test_encoder_reuse_needs_ddt_and_the_split_is_checked():
    with pytest.raises(ConfigError, match="sample.encoder_reuse=2 needs a network with a condition encoder"):
        cfg = tiny_config("sample.encoder_reuse=2")
        resolve_config(cfg, build_dataset(cfg.data, 4))
    cfg = resolve_config(tiny_config(), build_dataset(tiny_config().data, 4))  # a SiT run sampled with the option
    denoiser = FlowMethod.denoiser(cfg, FlowMethod.inference_networks(cfg), torch.device("cpu"))
    with pytest.raises(ValueError, match="sample.encoder_reuse=2 needs a network with a condition encoder"):
        generate(denoiser, dataclasses.replace(cfg.sample, encoder_reuse=2), range(2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="encoder_depth=3 leaves no decoder block"):
        load_config(None, ["model.family=ddt", "model.depth=3", "model.encoder_depth=3"])
    preset = load_config("ddt-xl2-in256")
    assert (preset.model.encoder_depth, preset.repa.depth, preset.sample.cfg_rule) == (22, 8, "evaluation_strict")
    assert DDT.resolve(DDTConfig(arch="DDT-L/2")).encoder_depth == 20


@pytest.mark.parametrize("layout", ["eva", "ddt"])
def test_rope_tables_are_the_same_cpu_tables_under_a_device_context(layout):
    # a parameter count builds the network under torch.device("meta"); the tables must not mix devices there
    from repflow.models.layers import rope_2d

    cos, sin = rope_2d(16, 4, front=1, back=2, layout=layout)
    with torch.device("meta"):
        cos_meta, sin_meta = rope_2d(16, 4, front=1, back=2, layout=layout)
    assert cos_meta.device.type == sin_meta.device.type == "cpu"
    assert torch.equal(cos, cos_meta) and torch.equal(sin, sin_meta)


def test_meanflow_interval_embedder_gets_the_time_embedders_initialisation():
    torch.manual_seed(0)
    model = tiny_ddt(interval_input=True, hidden_size=256)
    for mlp in (model.t_embedder.mlp, model.t_embedder.interval.mlp):  # N(0, 0.02), not torch's default uniform
        for layer in (mlp[0], mlp[2]):
            assert abs(layer.weight.std().item() - 0.02) < 2e-3
