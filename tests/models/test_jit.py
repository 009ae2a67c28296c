"""JiT: the network (RoPE, in-context tokens, SwiGLU, sizes) and its x-prediction / v-loss objective."""

import pytest
import torch

from repflow.config import load_config
from repflow.flow.loss import FlowMatching
from repflow.flow.path import LinearPath
from repflow.flow.timesteps import TimeSampler
from repflow.models import build_model
from repflow.models.jit import JiTConfig
from repflow.models.layers import apply_rope, rope_2d


def tiny_jit(**kw) -> torch.nn.Module:
    cfg = dict(arch="JiT-T/4", depth=4, hidden_size=32, num_heads=2, bottleneck=8, context_tokens=3, context_start=2,
               num_classes=5, input_size=16, in_channels=3)  # fmt: skip
    cfg.update(kw)
    return build_model(JiTConfig(**cfg))


def count(arch: str) -> int:
    with torch.device("meta"):
        model = build_model(JiTConfig(arch=arch, num_classes=1000, input_size=256, in_channels=3))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,expected", [("JiT-B/16", 131e6), ("JiT-L/16", 459e6)])
def test_parameter_counts_match_the_paper(arch, expected):
    assert count(arch) == pytest.approx(expected, rel=0.01)


def test_zero_output_at_initialisation_and_shapes():
    model = tiny_jit()
    x = torch.randn(2, 3, 16, 16)
    out = model({"x": x}, torch.rand(2), torch.tensor([1, 4]))
    assert out.pred["x"].shape == x.shape and torch.count_nonzero(out.pred["x"]) == 0


@pytest.mark.parametrize("layout", ["eva", "ddt"])  # JiT, DiT^DH, LightningDiT; DDT
def test_rope_is_a_rotation_with_the_relative_position_property(layout):
    cos, sin = rope_2d(8, 4, layout=layout)  # 16 positions on a 4x4 grid (row-major), head width 8
    q, k = torch.randn(16, 8), torch.randn(16, 8)
    assert torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # norm preserving

    def score(a, b):  # <R(position a) q0, R(position b) k0> for one fixed pair of vectors
        return (apply_rope(q[:1], cos[a], sin[a]) * apply_rope(k[:1], cos[b], sin[b])).sum()

    at = lambda row, col: row * 4 + col  # noqa: E731
    base = score(at(0, 1), at(2, 0))
    assert torch.allclose(score(at(1, 2), at(3, 1)), base, atol=1e-5)  # both moved by (+1, +1): unchanged
    assert torch.allclose(score(at(1, 3), at(3, 2)), base, atol=1e-5)  # by (+1, +2)
    assert not torch.allclose(score(at(0, 1), at(3, 0)), base, atol=1e-3)  # another offset: another score
    front_cos, front_sin = rope_2d(8, 4, front=2, layout=layout)
    assert torch.equal(front_cos[:2], torch.ones(2, 8)) and torch.equal(front_sin[:2], torch.zeros(2, 8))


def test_in_context_tokens_enter_at_their_block_and_leave_before_the_output():
    model = tiny_jit()
    seen = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, args, out, i=i: seen.append((i, out.shape[1])))
    out = model({"x": torch.randn(2, 3, 16, 16)}, torch.rand(2), torch.tensor([0, 1]), return_hidden=(1, 4))
    assert seen == [(0, 16), (1, 16), (2, 19), (3, 19)]  # 16 image tokens; 3 class tokens from block 2 (0-indexed)
    assert out.hidden[1].shape[1] == out.hidden[4].shape[1] == 16  # hidden states: image tokens only
    # the class tokens carry the label: changing it changes the output even without adaLN (zeroed here)
    with torch.no_grad():
        for b in model.blocks:
            b.adaLN_modulation[-1].bias.fill_(0.1)
        model.out_x.weight.normal_()
    x, t = torch.randn(1, 3, 16, 16), torch.rand(1)
    first, second = (model({"x": x}, t, torch.tensor([label])).pred["x"] for label in (0, 3))
    assert not torch.allclose(first, second)


def test_v_loss_from_x_prediction_is_the_jit_formula():
    """JiT: v_pred = (z_t - x_pred) / max(t, 0.05) against v = (z_t - x) / max(t, 0.05)."""
    fm = FlowMatching(LinearPath(), TimeSampler(), prediction="x", loss_space="v", min_denominator=0.05)
    x, x_pred, eps = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([0.0, 0.01, 0.05, 0.3, 0.9, 1.0])
    z = (1 - t)[:, None, None, None] * x + t[:, None, None, None] * eps
    d = t.clamp_min(0.05)[:, None, None, None]
    hand = (((z - x_pred) / d - (z - x) / d) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(fm.stream_loss(x_pred, x, eps, z, t), hand, rtol=1e-5)
    assert torch.equal(fm.stream_loss(x, x, eps, z, t), torch.zeros(6))  # zero at the true target


def test_presets_and_the_ablation_switch():
    b16 = load_config("jit-b16-in256")
    assert (b16.model.family, b16.flow.prediction, b16.flow.loss_space) == ("jit", "x", "v")
    assert b16.flow.time.mean == 0.8 and b16.train.betas == (0.9, 0.95) and b16.sample.cfg_interval == (0.0, 0.9)
    assert load_config("jit-h32-in512").flow.noise_scale == 2.0
    assert load_config("jit-b16-in256", ["flow.prediction=eps"]).flow.prediction == "eps"  # the collapse ablation
    assert load_config(None, ["model.arch=JiT-L/16"]).model.family == "jit"  # the family follows the arch name
