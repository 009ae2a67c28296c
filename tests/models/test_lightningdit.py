"""LightningDiT: the official sizes, the shared blocks, REG's front token."""

import pytest
import torch

from repflow.config import ConfigError, load_config
from repflow.models import build_model
from repflow.models.layers import RMSNorm, RoPEBlock
from repflow.models.lightningdit import LightningDiTConfig


def count(arch: str, input_size: int, channels: int) -> int:
    with torch.device("meta"):
        model = build_model(
            LightningDiTConfig(arch=arch, num_classes=1000, input_size=input_size, in_channels=channels)
        )
    return sum(p.numel() for p in model.parameters())


# the official models/lightningdit.py with the recipe's switches (use_swiglu, use_rope, use_rmsnorm), counted on
# the meta device: its trainable parameters (its frozen pos_embed parameter is a buffer here)
@pytest.mark.parametrize("arch,size,channels,official", [
    ("LightningDiT-B/2", 32, 4, 130_334_992), ("LightningDiT-L/2", 32, 4, 457_858_032),
    ("LightningDiT-XL/2", 32, 4, 674_924_944), ("LightningDiT-XL/1", 16, 32, 674_961_824),
])  # fmt: skip
def test_parameter_counts_are_the_official_ones(arch, size, channels, official):
    assert count(arch, size, channels) == official


def tiny(**kw):
    cfg = dict(arch="LightningDiT-T/2", depth=2, hidden_size=32, num_heads=2, num_classes=5, input_size=8,
               in_channels=4)  # fmt: skip
    return build_model(LightningDiTConfig(**{**cfg, **kw}))


def test_blocks_are_the_shared_ones_and_the_output_starts_at_zero():
    model = tiny(qk_norm="rmsnorm")
    assert all(type(b) is RoPEBlock for b in model.blocks) and isinstance(model.final_norm.norm, RMSNorm)
    assert isinstance(model.blocks[0].attn.q_norm, RMSNorm)
    x = torch.randn(2, 4, 8, 8)
    out = model({"x": x}, torch.rand(2), torch.tensor([1, 4]), return_hidden=(1,))
    assert out.pred["x"].shape == x.shape and torch.count_nonzero(out.pred["x"]) == 0
    assert out.hidden[1].shape == (2, 16, 32)
    with pytest.raises(ValueError, match="RoPE tables are for a 8 px input"):
        model({"x": torch.randn(1, 4, 16, 16)}, torch.rand(1), torch.tensor([0]))


def test_reg_front_token_is_not_rotated_and_gets_its_own_output():
    from repflow.models.lightningdit import LightningDiT

    cfg = LightningDiT.resolve(LightningDiTConfig(arch="LightningDiT-T/2", depth=2, hidden_size=32, num_heads=2,
                                                  num_classes=5, input_size=8, in_channels=4))  # fmt: skip
    model = LightningDiT(cfg, vector_streams={"cls": 6})
    assert model.num_front_tokens == 1 and torch.equal(model.rope_cos[0], torch.ones(16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    states = {"x": torch.randn(2, 4, 8, 8), "cls": torch.randn(2, 6)}
    out = model(states, torch.rand(2), torch.tensor([0, 1]), return_hidden=(2,))
    assert out.pred["cls"].shape == (2, 6) and out.hidden[2].shape == (2, 17, 32)


def test_presets_carry_the_authors_recipe_and_bad_qk_norm_is_one_line():
    cfg = load_config("lightningdit-xl2-in256")
    assert (cfg.model.family, cfg.model.arch, cfg.model.qk_norm) == ("lightningdit", "LightningDiT-XL/2", "none")
    s = cfg.sample
    assert (s.sampler, s.steps, s.cfg_channels, tuple(s.cfg_interval)) == ("euler", 250, 3, (0.0, 0.89))
    assert s.shift == pytest.approx(1 / 0.3) and cfg.velocity_cosine.enabled and cfg.flow.time.kind == "logit_normal"
    with pytest.raises(ConfigError, match="LightningDiT takes none or rmsnorm"):
        load_config(None, ["model.family=lightningdit", "model.qk_norm=layernorm"])
