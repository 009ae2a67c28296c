import pytest
import torch

from repflow.models import ARCHS, build_model
from repflow.models import SiTConfig as ModelConfig
from repflow.models.presets import arch_dims


def tiny_model(**kw):
    cfg = dict(arch="SiT-T/2", depth=2, hidden_size=32, num_heads=2, num_classes=4, input_size=8, in_channels=3)
    cfg.update(kw)
    streams = cfg.pop("streams", None)
    return build_model(ModelConfig(**cfg), vector_streams=streams)


def count_params(arch: str, **kw) -> int:
    cfg = ModelConfig(arch=arch, num_classes=1000, input_size=32, in_channels=4, **kw)
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,expected", [("SiT-B/2", 130e6), ("SiT-XL/2", 675e6), ("SiT-L/2", 458e6)])
def test_preset_parameter_counts(arch, expected):
    # SiT paper: B/2 130M, L/2 458M, XL/2 675M (256 px, 32x32x4 latents, 1000 classes)
    assert count_params(arch) == pytest.approx(expected, rel=0.01)


def test_reg_adds_about_two_million_parameters_at_xl():
    cfg = ModelConfig(arch="SiT-XL/2", num_classes=1000, input_size=32, in_channels=4)
    with torch.device("meta"):
        base = sum(p.numel() for p in build_model(cfg).parameters())
        reg = sum(p.numel() for p in build_model(cfg, vector_streams={"cls": 768}).parameters())
    assert 1.5e6 < reg - base < 2.5e6  # Linear(768->1152) + LayerNorm + Linear(1152->768)


def test_arch_table_and_errors():
    assert arch_dims("SiT-XL/2") == {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}
    assert "SiT-S/4" in ARCHS and "DiT-B/8" in ARCHS
    with pytest.raises(ValueError, match="did you mean"):
        arch_dims("SiT-XXL/2")


def test_fresh_model_outputs_zero_adaln_zero():
    model = tiny_model(streams={"cls": 6})
    x = {"x": torch.randn(3, 3, 8, 8), "cls": torch.randn(3, 6)}
    out = model(x, torch.rand(3), torch.tensor([0, 1, 2]))
    assert torch.count_nonzero(out.pred["x"]) == 0 and torch.count_nonzero(out.pred["cls"]) == 0
    assert out.pred["x"].shape == (3, 3, 8, 8) and out.pred["cls"].shape == (3, 6)


def perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("size,channels,patch", [(8, 3, 2), (16, 4, 4), (12, 1, 2), (32, 3, 8)])
def test_any_input_size_and_channel_count(size, channels, patch):
    model = perturbed(tiny_model(input_size=size, in_channels=channels, patch_size=patch))
    x = torch.randn(2, channels, size, size)
    out = model({"x": x}, torch.rand(2), torch.tensor([1, 3]))
    assert out.pred["x"].shape == x.shape


def test_unpatchify_inverts_patch_order():
    from repflow.models.layers import unpatchify

    x = torch.randn(2, 3, 8, 8)
    p = 2
    tokens = x.reshape(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)  # (n, h, w, p, q, c)
    assert torch.equal(unpatchify(tokens, 4, 4, p, 3), x)


def test_hidden_states_and_extra_front_token():
    model = perturbed(tiny_model(depth=3, streams={"cls": 6}))
    x = {"x": torch.randn(2, 3, 8, 8), "cls": torch.randn(2, 6)}
    out = model(x, torch.rand(2), torch.tensor([0, 1]), return_hidden=(1, 3))
    assert sorted(out.hidden) == [1, 3]
    assert out.hidden[1].shape == (2, 1 + 16, 32)  # the class token is token 0
    with pytest.raises(ValueError, match="blocks \\[5\\]"):
        model(x, torch.rand(2), None, return_hidden=(5,))


def test_class_token_enters_first_block_without_position_embedding():
    model = perturbed(tiny_model(streams={"cls": 6}))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(tokens=args[0]))
    x = {"x": torch.randn(2, 3, 8, 8), "cls": torch.randn(2, 6)}
    model(x, torch.rand(2), torch.tensor([0, 1]))
    tokens = seen["tokens"]  # (B, 1 + N, D)
    assert torch.allclose(tokens[:, 0], model.stream_in["cls"](x["cls"]))
    patches = model.x_embedder(x["x"]).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens[:, 1:], patches + model.pos_embed)


def test_qk_norm_and_unconditional_and_grad_checkpointing():
    model = perturbed(tiny_model(qk_norm=True, num_classes=0))
    assert model.y_embedder is None
    x = torch.randn(2, 3, 8, 8)
    ref = model({"x": x}, torch.rand(2, generator=torch.Generator().manual_seed(0)))
    model.grad_checkpointing = True
    model.train()
    out = model({"x": x}, torch.rand(2, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(ref.pred["x"], out.pred["x"], atol=1e-6)
    out.pred["x"].sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_null_label_is_the_extra_row():
    model = tiny_model(num_classes=4, class_dropout=0.1)
    assert model.null_label == 4 and model.y_embedder.table.num_embeddings == 5
    assert tiny_model(num_classes=4, class_dropout=0.0).y_embedder.table.num_embeddings == 4
