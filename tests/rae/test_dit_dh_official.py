"""The official DiT^DH of RAE and RAEv2: layouts, importers, parameter counts, internal guidance, the RAE grid.

Official state dicts are written here by hand with the names and shapes of the authors' modules (RAE's
``DiTwDDTHead``, RAEv2's ``DiTwDDTHeadIG``); no official code is in the repository. Side-by-side numbers against
their code (forward, loss, samplers) are in the README."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from repflow.cli import main
from repflow.config import ConfigError, load_config, replace
from repflow.convert import official_rae
from repflow.errors import CheckpointError
from repflow.flow.loss import FlowDraw
from repflow.flow.timesteps import shift_time, time_grid
from repflow.methods import FlowMethod
from repflow.methods.flow import build_flow_matching, build_flow_network
from repflow.models import build_model
from repflow.models.dit_dh import DiTDHConfig, count_parameters
from repflow.models.flops import forward_flops
from repflow.models.layers import rope_2d
from repflow.runtime.lookup import load_checkpoint

XL = {"enc": 1152, "dec": 2048, "depth": 28, "head": 2, "heads": 16, "head_heads": 16, "channels": 768, "grid": 16}
S = {**XL, "enc": 384, "depth": 12, "heads": 6}
XLP = {**XL, "enc": 1440, "heads": 20, "channels": 1024}  # RAEv2's
TINY = {"enc": 32, "dec": 64, "depth": 3, "head": 2, "heads": 2, "head_heads": 4, "channels": 16, "grid": 4}


def official_state_dict(kind: str, s: dict, meta: bool = False, seed: int = 0, classes: int = 1000) -> dict:
    """The names and shapes of the authors' stage-2 model (RAE: use_rmsnorm, use_swiglu, use_rope, use_pos_embed,
    no QK-norm; RAEv2: 4 time + 8 class tokens, QK-norm everywhere, the internal output)."""
    g = torch.Generator().manual_seed(seed)
    r = (lambda *shape: torch.empty(shape, device="meta")) if meta else \
        (lambda *shape: torch.randn(shape, generator=g) * 0.2)  # fmt: skip
    d, w, c, n = s["enc"], s["dec"], s["channels"], s["grid"] ** 2
    v2 = kind == "official-raev2"
    sd = {"s_embedder.proj.weight": r(d, c, 1, 1), "s_embedder.proj.bias": r(d),
          "x_embedder.proj.weight": r(w, c, 1, 1), "x_embedder.proj.bias": r(w),
          "s_projector.weight": r(w, d), "s_projector.bias": r(w), "t_embedder.W": r(256),
          "t_embedder.mlp.0.weight": r(d, 512), "t_embedder.mlp.0.bias": r(d),
          "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d)}  # fmt: skip
    finals = [("final_layer", w)] + ([("base_final_layer", d)] if v2 else [])
    for name, width in finals:
        norm = "norm" if v2 else "norm_final"
        ada = "adaln_modulation" if v2 else "adaLN_modulation"
        sd |= {f"{name}.{norm}.weight": r(width), f"{name}.linear.weight": r(c, width), f"{name}.linear.bias": r(c),
               f"{name}.{ada}.1.weight": r(2 * width, width), f"{name}.{ada}.1.bias": r(2 * width)}  # fmt: skip
    if v2:
        sd |= {"t_embedder.learnable_tokens": r(4, d), "ctx_embedder.embedding_table.weight": r(classes + 1, d),
               "ctx_embedder.learnable_tokens": r(8, d)}  # fmt: skip
    else:
        sd |= {"y_embedder.embedding_table.weight": r(classes + 1, d), "pos_embed": r(1, n, d)}
    for i in range(s["depth"] + s["head"]):
        x, heads = (d, s["heads"]) if i < s["depth"] else (w, s["head_heads"])
        f, b = int(2 / 3 * int(x * 4.0)), f"blocks.{i}."
        sd |= {b + "norm1.weight": r(x), b + "norm2.weight": r(x), b + "attn.proj.weight": r(x, x),
               b + "attn.proj.bias": r(x), b + "mlp.w3.weight": r(x, f), b + "mlp.w3.bias": r(x)}  # fmt: skip
        if v2:
            sd |= {b + f"attn.{p}.{k}": r(x, x) if k == "weight" else r(x) for p in "qkv" for k in ("weight", "bias")}
            sd |= {b + f"mlp.w{j}.weight": r(f, x) for j in (1, 2)} | {b + f"mlp.w{j}.bias": r(f) for j in (1, 2)}
            sd |= {b + "attn.q_norm.weight": r(x // heads), b + "attn.k_norm.weight": r(x // heads)}
        else:
            sd |= {b + "attn.qkv.weight": r(3 * x, x), b + "attn.qkv.bias": r(3 * x), b + "mlp.w12.weight": r(2 * f, x),
                   b + "mlp.w12.bias": r(2 * f)}  # fmt: skip
        if i >= s["depth"] or not v2:
            ada = "adaln_modulation" if v2 else "adaLN_modulation"
            sd |= {b + f"{ada}.1.weight": r(6 * x, x), b + f"{ada}.1.bias": r(6 * x)}
    names = ("enc_rope", "dec_rope") if v2 else ("enc_feat_rope", "dec_feat_rope")
    for name, x, heads, back in ((names[0], d, s["heads"], 12 if v2 else 0), (names[1], w, s["head_heads"], 0)):
        sd[f"{name}.freqs_cos"], sd[f"{name}.freqs_sin"] = rope_2d(x // heads, s["grid"], back=back)
    return sd


def test_parameter_counts_equal_the_official_models():
    # counted by instantiating the authors' modules (RAE DiTwDDTHead at a4d18c4, RAEv2 DiTwDDTHeadIG at 8a0d238)
    assert count_parameters("DiTDH-XL/1") == 838_675_796
    assert count_parameters("DiTDH-S/1") == 196_455_764
    v2 = {"backbone": "in_context", "qk_norm": "rmsnorm", "head_qk_norm": True, "internal_depth": 8}
    assert count_parameters("DiTDH-XL+/1", in_channels=1024, **v2) == 875_216_500
    assert count_parameters("DiTDH-XL/1", backbone="sit") == 837_978_196  # repflow 0.2's SiT-block backbone


@pytest.mark.parametrize("kind,dims,keys", [("official-rae", XL, 382), ("official-rae", S, 190),
                                            ("official-raev2", XLP, 572)])  # fmt: skip
def test_every_official_key_maps_to_the_inferred_model_and_back(kind, dims, keys):
    sd = official_state_dict(kind, dims, meta=True)
    assert len(sd) == keys  # the authors' state_dict() has this many entries
    cfg = official_rae.infer_config(kind, sd)
    m = cfg.model
    assert (m.depth, m.hidden_size, m.num_heads, m.head_width, m.head_heads, m.in_channels, m.input_size) == (
        dims["depth"],
        dims["enc"],
        dims["heads"],
        dims["dec"],
        dims["head_heads"],
        dims["channels"],
        dims["grid"],
    )
    model, objective, extra = official_rae.from_official(kind, sd, cfg)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_flow_network(cfg).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.items()} == expected  # every parameter, nothing left over
    assert not objective and len(extra) == 4  # the RoPE tables, recomputed by repflow
    back = official_rae.to_official(kind, model, objective, extra, cfg)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("kind", official_rae.KINDS)
def test_import_samples_and_export_round_trip_exactly(tmp_path, kind):
    sd = official_state_dict(kind, TINY, classes=5)
    raw = {k: v + 1 for k, v in sd.items() if "rope" not in k} | {k: v for k, v in sd.items() if "rope" in k}
    torch.save({"step": 11, "epoch": 1, "model": raw, "ema": sd}, tmp_path / "official.pt")
    overrides = ["flow.time.shift_base_dim=64", "sample.steps=3", "sample.batch_size=2"]
    assert main(["convert", kind, str(tmp_path / "official.pt"), *overrides, "--out", str(tmp_path / "run")]) == 0
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state()["step"] == 11 and ckpt.config.flow.time.shift == pytest.approx(2.0)  # sqrt(16*4*4 / 64)
    net = build_flow_network(ckpt.config)
    net.load_state_dict(ckpt.weights("ema-0.9995"))
    out = net({"x": torch.randn(2, 16, 4, 4)}, torch.rand(2), torch.tensor([0, 4]))
    assert torch.isfinite(out.pred["x"]).all() and out.pred["x"].abs().sum() > 0
    assert (kind == "official-raev2") == bool(out.shallow)  # RAEv2's internal output
    assert main(["convert", "--to", kind, str(tmp_path / "run"), "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for name, original in (("ema", sd), ("model", raw)):
        assert set(back[name]) == set(original)
        assert all(torch.equal(back[name][k], original[k]) for k in original), name


def test_bad_official_files_get_one_line(tmp_path, capsys):
    sd = official_state_dict("official-rae", TINY, classes=5)
    cases = {
        "reg": ({k: v for k, v in sd.items() if not k.startswith("s_embedder")}, "it has no s_embedder.proj.weight"),
        "shape": ({**sd, "blocks.1.attn.proj.weight": torch.zeros(32, 31)}, "blocks.1.attn.proj.weight has shape"),
        "nan": ({**sd, "blocks.4.mlp.w3.bias": torch.full((64,), float("nan"))}, "holds NaN or infinite values"),
        "key": ({**sd, "decoder.weight": torch.zeros(3)}, "key 'decoder.weight' has no place in repflow"),
        "grid": ({**sd, "enc_feat_rope.freqs_cos": torch.ones(16, 16)}, "is not the RoPE table of a 4x4 grid"),
    }
    for name, (bad, message) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        assert main(["convert", "official-rae", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)
        assert not (tmp_path / name / "checkpoints").exists()  # nothing half-imported
    with pytest.raises(CheckpointError, match="it has no t_embedder.learnable_tokens"):
        official_rae.infer_config("official-raev2", sd)  # an RAE file given as RAEv2


def test_rope_tables_are_the_official_formula_bit_for_bit():
    """EVA's VisionRotaryEmbeddingFast as RAE builds it (dim = head_dim / 2, float32), written out."""
    head_dim, grid = 72, 16
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * grid
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (grid, dim)
    full = torch.cat([f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)], dim=-1)
    cos, sin = rope_2d(head_dim, grid)
    assert torch.equal(cos, full.cos().view(-1, head_dim)) and torch.equal(sin, full.sin().view(-1, head_dim))
    cos, sin = rope_2d(head_dim, grid, back=12)  # RAEv2: condition tokens after the image, unrotated
    assert torch.equal(cos[-12:], torch.ones(12, head_dim)) and torch.equal(sin[-12:], torch.zeros(12, head_dim))


def tiny(**fields) -> DiTDHConfig:
    base = {"arch": "DiTDH-T/1", "depth": 3, "hidden_size": 32, "num_heads": 2, "head_width": 64, "head_heads": 4,
            "num_classes": 5, "input_size": 4, "in_channels": 16}  # fmt: skip
    return DiTDHConfig(**{**base, **fields})


@pytest.mark.parametrize("backbone", ["lightning", "in_context", "sit"])
def test_backbones_start_at_zero_expose_hidden_states_and_checkpoint_the_same_gradients(backbone):
    torch.manual_seed(0)
    model = build_model(tiny(backbone=backbone, internal_depth=2, qk_norm="rmsnorm" if backbone != "sit" else "none"))
    x, t, y = torch.randn(2, 16, 4, 4), torch.rand(2), torch.tensor([1, 5])  # 5: the null label
    out = model({"x": x}, t, y, return_hidden=(1, 3))
    assert torch.count_nonzero(out.pred["x"]) == 0 and torch.count_nonzero(out.shallow["x"]) == 0
    assert out.hidden[1].shape == out.hidden[3].shape == (2, 16, 32)  # image tokens only
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    grads = []
    for checkpointing in (False, True):
        model.grad_checkpointing = model.backbone.grad_checkpointing = checkpointing
        model.zero_grad()
        out = model({"x": x}, t, y)
        (out.pred["x"].square().mean() + out.shallow["x"].square().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_the_fixed_embeddings_are_trained_as_the_official_code_does_unless_frozen():
    learned = build_model(tiny())
    assert learned.backbone.pos_embed.requires_grad and learned.backbone.t_embedder.W.requires_grad
    frozen = build_model(tiny(learn_fixed_embeddings=False))
    assert not frozen.backbone.pos_embed.requires_grad and not frozen.backbone.t_embedder.W.requires_grad


def test_internal_output_loss_and_internal_guidance():
    cfg = load_config(None, ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.backbone=in_context",
                             "model.depth=3", "model.hidden_size=32", "model.num_heads=2", "model.head_width=64",
                             "model.head_heads=4", "model.internal_depth=2", "model.num_classes=5",
                             "model.input_size=4", "model.in_channels=16", "flow.prediction=x",
                             "flow.internal_weight=0.5"])  # fmt: skip
    torch.manual_seed(0)
    net = build_flow_network(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, eps, t = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4), torch.tensor([0.02, 0.5, 0.9])
    fm = build_flow_matching(cfg, 5)
    loss, sample = fm(net, {"x": x}, torch.tensor([0, 1, 2]), draw=FlowDraw(t, {"x": eps}, torch.zeros(3, dtype=bool)))
    x_t = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * eps
    clip = t.clamp_min(0.05).view(-1, 1, 1, 1)
    by_hand = ((x_t - sample.output.shallow["x"]) / clip - (x_t - x) / clip).square().mean()  # v-loss of x-pred
    assert loss.terms["flow_x_internal"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.total.item() == pytest.approx(loss.terms["flow_x"].item() + 0.5 * by_hand.item(), rel=1e-5)

    den = FlowMethod.denoiser(cfg, {"model": net}, torch.device("cpu"))
    state, y = {"x": x_t}, torch.tensor([0, 1, 2])
    out = net(state, torch.full((3,), 0.5), y)
    v_full, v_weak = ((x_t - out.pred["x"]) / 0.5), ((x_t - out.shallow["x"]) / 0.5)
    guided = den.for_options(replace(cfg.sample, internal_guidance=1.78, internal_interval=(0.1, 1.0)))
    assert torch.allclose(guided.velocity(state, 0.5, y)["x"], v_weak + 1.78 * (v_full - v_weak), atol=1e-5)
    assert torch.allclose(den.velocity(state, 0.5, y)["x"], v_full, atol=1e-6)  # scale 1: no guidance
    outside = guided.velocity(state, 0.05, y)["x"]  # t below the interval: the full output alone
    assert torch.allclose(outside, den.velocity(state, 0.05, y)["x"])
    plain = FlowMethod.denoiser(cfg.replace(**{"model.internal_depth": 0}), {"model": build_flow_network(
        cfg.replace(**{"model.internal_depth": 0}))}, torch.device("cpu"))  # fmt: skip
    with pytest.raises(ValueError, match="internal guidance needs a network with an internal output"):
        plain.for_options(replace(cfg.sample, internal_guidance=2.0)).velocity(state, 0.5, y)


def test_the_official_rae_grid():
    s = math.sqrt(16 * 16 * 768 / 4096)
    grid = time_grid(50, s, "rae")
    assert len(grid) == 50  # 50 points, 49 Euler steps, as their "num_steps: 50"
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(shift_time(torch.tensor(0.001, dtype=torch.float64), s).item())
    assert grid[-1] == pytest.approx(0.00689, abs=1e-5)
    unshifted = time_grid(50, 1.0, "rae")
    assert unshifted == pytest.approx([1 - 0.999 * i / 49 for i in range(50)])
    with pytest.raises(
        ConfigError, match="sample.grid=rae is a grid of the euler, heun, dpmpp_2m samplers, not of sde"
    ):
        load_config(None, ["sample.grid=rae", "sample.sampler=sde"])


@pytest.mark.parametrize("fields", [{"backbone": "lightning"}, {"backbone": "sit"},
                                    {"backbone": "in_context", "internal_depth": 2, "head_qk_norm": True}])  # fmt: skip
def test_flop_counts_of_every_backbone_agree_with_torch(fields):
    model = build_model(tiny(**fields))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model({"x": torch.randn(3, 16, 4, 4)}, torch.rand(3), torch.tensor([0, 1, 2]))
    assert forward_flops(model, batch=3) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_raev2_repa_variant_is_a_linear_map_and_an_mse():
    from repflow.methods.repa import RepaTerm

    term = RepaTerm(32, [12], depth=1, projector="linear", loss="mse")
    assert isinstance(term.projectors[0], torch.nn.Linear)
    h, target = torch.randn(2, 16, 32), torch.randn(2, 16, 12)
    by_hand = (term.projectors[0](h) - target).square().mean()
    assert term.distance(term.projectors[0](h), target).item() == pytest.approx(by_hand.item(), rel=1e-6)
