"""iREPA: the conv projector and the spatial z-score of the target, as options of the REPA term."""

import pytest
import torch
from torch import nn

from repflow.build import resolve_config
from repflow.config import ConfigError
from repflow.data import build_dataset
from repflow.methods import FlowMethod, MethodEnv, TrainBatch
from repflow.methods.repa import GridConv, RepaTerm, spatial_zscore
from repflow.models.dit import ModelOutput

from ..conftest import tiny_config


def test_spatial_zscore_matches_a_hand_computation_in_float64():
    torch.manual_seed(0)
    feat = torch.randn(2, 5, 3, dtype=torch.float64) * 3 + 1
    alpha = 0.6
    out = spatial_zscore(feat, alpha)
    for b in range(2):
        for d in range(3):
            col = [feat[b, n, d].item() for n in range(5)]
            mean = sum(col) / 5
            std = (sum((v - mean) ** 2 for v in col) / 4) ** 0.5  # unbiased, as torch.std and the official code
            for n in range(5):
                assert out[b, n, d].item() == pytest.approx((col[n] - alpha * mean) / (std + 1e-6), rel=1e-12)
    full = spatial_zscore(feat, 1.0)  # alpha 1: zero mean, unit std over the tokens (up to eps)
    torch.testing.assert_close(full.mean(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(full.std(1), torch.ones(2, 3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_conv_projector_is_a_convolution_over_the_row_major_token_grid():
    torch.manual_seed(0)
    conv = GridConv(4, 2, kernel=3).double()
    tokens = torch.randn(1, 9, 4, dtype=torch.float64)  # a 3x3 grid, token = 3 * row + col
    out = conv(tokens)
    w, bias = conv.conv.weight, conv.conv.bias  # (2, 4, 3, 3)

    def by_hand(row: int, col: int) -> torch.Tensor:
        acc = bias.clone()
        for i in range(3):
            for j in range(3):
                r, c = row + i - 1, col + j - 1
                if 0 <= r < 3 and 0 <= c < 3:  # zero padding outside the grid
                    acc = acc + w[:, :, i, j] @ tokens[0, 3 * r + c]
        return acc

    for row, col in [(0, 0), (1, 1), (2, 1)]:
        torch.testing.assert_close(out[0, 3 * row + col], by_hand(row, col), atol=1e-12, rtol=0)
    one = GridConv(4, 2, kernel=1).double()  # kernel 1 is a per-token linear map
    torch.testing.assert_close(one(tokens), tokens @ one.conv.weight[:, :, 0, 0].T + one.conv.bias)
    with pytest.raises(ValueError, match="square token grid"):
        conv(torch.randn(1, 6, 4, dtype=torch.float64))


def test_irepa_loss_is_minus_one_at_the_normalised_target_and_differs_from_repa_on_raw_features():
    term = RepaTerm(hidden_size=8, encoder_dims=[8], depth=1, projector="conv", kernel=1, zscore_alpha=0.6)
    term.projectors = nn.ModuleList([nn.Identity()])
    feat = torch.randn(2, 16, 8) + 2.0  # a large common mean: what the z-score removes
    batch = TrainBatch(x=torch.zeros(2, 1), y=None, features={"0.patch": feat})
    aligned = type("S", (), {"output": ModelOutput(pred={}, hidden={1: spatial_zscore(feat, 0.6)})})()
    assert term.loss(batch, aligned)["repa"][0].item() == pytest.approx(-1.0)
    raw = type("S", (), {"output": ModelOutput(pred={}, hidden={1: feat})})()
    assert term.loss(batch, raw)["repa"][0].item() > -0.99  # the raw features are not the target any more


def test_irepa_defaults_follow_the_branch_and_conv_refuses_reg():
    pixel = tiny_config(
        "repa.enabled=true", "repa.projector=conv", "repa.spatial_norm=zscore", "encoders=[{name: tiny}]"
    )
    cfg = resolve_config(pixel, build_dataset(pixel.data, 4))
    assert (cfg.repa.projector_kernel, cfg.repa.zscore_alpha) == (3, 0.8)  # iREPA's jit/ (pixel) defaults
    latent = RepaTerm.resolve_static(tiny_config("codec.kind=sd_vae", "repa.enabled=true", "repa.projector=conv"))
    assert (latent.repa.projector_kernel, latent.repa.zscore_alpha) == (1, 0.6)  # iREPA's ldm/ (latent) defaults
    chosen = RepaTerm.resolve_static(tiny_config("repa.enabled=true", "repa.projector_kernel=5", "repa.zscore_alpha=1"))
    assert (chosen.repa.projector_kernel, chosen.repa.zscore_alpha) == (5, 1.0)
    with pytest.raises(ConfigError, match="repa.projector=conv projects the image grid"):
        RepaTerm.resolve_static(tiny_config("repa.enabled=true", "repa.projector=conv", "reg.enabled=true"))
    with pytest.raises(ConfigError, match="projector_kernel"):
        tiny_config("repa.projector_kernel=2")


def test_irepa_trains_through_the_flow_method():
    cfg = tiny_config("repa.enabled=true", "repa.projector=conv", "repa.spatial_norm=zscore", "encoders=[{name: tiny}]")
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    method = FlowMethod(cfg, MethodEnv(encoder_dims=[6]))
    batch = TrainBatch(x=torch.randn(4, 3, 8, 8), y=torch.arange(4), features={"0.patch": torch.randn(4, 16, 6)})
    out = method(batch, method.draw(batch, 4, torch.Generator().manual_seed(0)))
    out.total.backward()
    conv = method.objective.terms["repa"].projectors[0].conv
    assert conv.kernel_size == (3, 3) and conv.weight.grad.abs().sum() > 0


FAMILIES = {
    "sit": [],
    "lightningdit": ["model.family=lightningdit", "model.arch=LightningDiT-T/2"],
    "ddt": ["model.family=ddt", "model.arch=DDT-T/2", "model.encoder_depth=1"],
    "jit": ["model.family=jit", "model.arch=JiT-T/2", "model.bottleneck=8", "model.context_tokens=2",
            "model.context_start=1", "flow.prediction=x"],
    "dit_dh": ["model.family=dit_dh", "model.arch=DiTDH-T/2", "model.head_width=32", "model.head_heads=2",
               "model.head_depth=1"],
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_irepa_works_wherever_repa_works(family):
    cfg = tiny_config("repa.enabled=true", "repa.depth=2", "repa.projector=conv", "repa.spatial_norm=zscore",
                      "encoders=[{name: tiny}]", *FAMILIES[family])  # fmt: skip
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    method = FlowMethod(cfg, MethodEnv(encoder_dims=[6]))
    batch = TrainBatch(x=torch.randn(4, 3, 8, 8), y=torch.arange(4), features={"0.patch": torch.randn(4, 64, 6)})
    out = method(batch, method.draw(batch, 4, torch.Generator().manual_seed(0)))  # 8x8 encoder grid -> 4x4 tokens
    out.total.backward()
    assert (
        torch.isfinite(out.terms["repa"])
        and method.objective.terms["repa"].projectors[0].conv.weight.grad.abs().sum() > 0
    )
