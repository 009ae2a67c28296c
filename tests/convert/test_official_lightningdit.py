"""Official LightningDiT checkpoints <-> repflow: every key mapped, round trips exact, time flipped right.

State dicts are built here with the official names and shapes (random values, or meta tensors at XL/2): no
official code is in the repository (the side-by-side forward against it is in the README)."""

import pytest
import torch

from repflow.convert import export_checkpoint, import_checkpoint, official_lightningdit
from repflow.errors import CheckpointError
from repflow.methods import FlowMethod, MethodEnv
from repflow.models.layers import rope_2d, sincos_pos_embed_2d
from repflow.sample.load import load_run

XL = {"depth": 28, "hidden": 1152, "heads": 16, "patch": 2, "channels": 4, "classes": 1000, "grid": 16}
TINY = {"depth": 2, "hidden": 32, "heads": 2, "patch": 2, "channels": 4, "classes": 10, "grid": 4}
KIND = official_lightningdit.KIND


def official_state_dict(s: dict, device: str = "cpu", seed: int = 0, qk_norm: bool = False) -> dict:
    """What the official ``LightningDiT(use_swiglu, use_rope, use_rmsnorm)`` holds, names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = (lambda *shape: torch.empty(shape, device="meta")) if device == "meta" else \
        (lambda *shape: torch.randn(shape, generator=g) * 0.05)  # fmt: skip
    d, p, c, n = s["hidden"], s["patch"], s["channels"], s["grid"] ** 2
    hd, mlp = d // s["heads"], int(2 / 3 * 4 * d)
    cos, sin = rope_2d(hd, s["grid"])
    sd = {
        "pos_embed": sincos_pos_embed_2d(d, s["grid"], s["grid"])[None] if device == "cpu" else r(1, n, d),
        "feat_rope.freqs_cos": cos if device == "cpu" else r(n, hd), "feat_rope.freqs_sin": sin if device == "cpu"
        else r(n, hd), "x_embedder.proj.weight": r(d, c, p, p), "x_embedder.proj.bias": r(d),
        "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
        "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
        "y_embedder.embedding_table.weight": r(s["classes"] + 1, d), "final_layer.norm_final.weight": r(d),
        "final_layer.linear.weight": r(p * p * c, d), "final_layer.linear.bias": r(p * p * c),
        "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d),
    }  # fmt: skip
    for i in range(s["depth"]):
        sd[f"blocks.{i}.norm1.weight"], sd[f"blocks.{i}.norm2.weight"] = r(d), r(d)
        if qk_norm:
            sd[f"blocks.{i}.attn.q_norm.weight"], sd[f"blocks.{i}.attn.k_norm.weight"] = r(hd), r(hd)
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.w12", (2 * mlp, d)),
                            ("mlp.w3", (d, mlp)), ("adaLN_modulation.1", (6 * d, d))):  # fmt: skip
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = r(*shape), r(shape[0])
    return sd


@pytest.mark.parametrize("qk_norm", [False, True])
def test_every_official_xl2_key_has_its_place(qk_norm):
    sd = official_state_dict(XL, device="meta", qk_norm=qk_norm)
    assert len(sd) == (407 if qk_norm else 351)  # the official model's state_dict, counted
    cfg = official_lightningdit.infer_config(KIND, sd)
    m = cfg.model
    assert (m.family, m.arch, m.depth, m.hidden_size, m.num_heads, m.input_size) == (
        "lightningdit", "LightningDiT-XL/2", 28, 1152, 16, 32)  # fmt: skip
    assert m.qk_norm == ("rmsnorm" if qk_norm else "none") and (m.time_offset, m.time_scale) == (1.0, -1.0)
    model, _, extra = official_lightningdit.from_official(KIND, sd, cfg)
    with torch.device("meta"):
        method = FlowMethod(cfg, MethodEnv())
    assert {k: v.shape for k, v in model.items()} == {k: v.shape for k, v in method.model.state_dict().items()}
    back = official_lightningdit.to_official(KIND, model, {}, extra, cfg)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


def test_a_release_in_va_vae_latents_gets_the_va_vae_recipe_around_it():
    """Their releases are XL/1 on VA-VAE's 16x16x32: the importer puts the vae codec and their VA-VAE sampling
    (CFG in channels 0-2, their interval and shift) around the network."""
    sd = official_state_dict({**XL, "patch": 1, "channels": 32}, device="meta")
    cfg = official_lightningdit.infer_config(KIND, sd, ["codec.path=/weights/va-vae"])
    assert (cfg.model.arch, cfg.model.in_channels, cfg.codec.kind, cfg.codec.path) == (
        "LightningDiT-XL/1", 32, "vae", "/weights/va-vae")  # fmt: skip
    assert (cfg.sample.cfg, cfg.sample.cfg_interval, cfg.sample.cfg_channels) == (10.0, (0.0, 0.9), 3)
    four = official_lightningdit.infer_config(KIND, official_state_dict(XL, device="meta"))
    assert four.codec.kind == "sd_vae"


def test_round_trip_is_exact_and_the_network_runs_in_repflow_time(tmp_path, tiny_vae):
    ema, raw = official_state_dict(TINY, seed=1, qk_norm=True), official_state_dict(TINY, seed=2, qk_norm=True)
    torch.save({"model": raw, "ema": ema, "opt": {}, "config": {"model": {"model_type": "LightningDiT-B/2"}}},
               tmp_path / "official.pt")  # fmt: skip
    import_checkpoint(
        KIND, tmp_path / "official.pt", tmp_path / "run", [f"codec.path={tiny_vae}", "data.resolution=16"]
    )
    export_checkpoint(KIND, tmp_path / "run", tmp_path / "back.pt")
    exported = torch.load(tmp_path / "back.pt", weights_only=True)
    for got, want in ((exported["ema"], ema), (exported["model"], raw)):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    run = load_run(tmp_path / "run")
    s = run.cfg.sample
    assert (s.cfg_channels, s.sampler, tuple(s.cfg_interval)) == (3, "euler", (0.0, 0.89))  # their rule, carried
    # the same network with the official time and sign: v_repflow(x, tau) = -net_official(x, 1 - tau)
    cfg = run.cfg.replace(**{"model.time_offset": 0.0, "model.time_scale": 1.0})
    with torch.no_grad():
        net = FlowMethod.inference_networks(cfg)["model"]
        model, _, _ = official_lightningdit.from_official(KIND, ema, cfg)
        net.load_state_dict(model)
        x, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 3, 9])
        for tau in (0.1, 0.5, 0.9):
            official_time = net({"x": x}, torch.full((3,), 1 - tau), y).pred["x"]
            torch.testing.assert_close(run.denoiser.velocity({"x": x}, tau, y)["x"], official_time)
            assert official_time.abs().max() > 0


def test_ablation_blocks_are_refused_with_one_line():
    sd = official_state_dict(TINY)
    sd["blocks.0.adaLN_modulation.1.weight"] = torch.zeros(4 * 32, 32)
    with pytest.raises(CheckpointError, match="wo_shift"):
        official_lightningdit.infer_config(KIND, sd)
    del sd["blocks.0.mlp.w12.weight"]
    with pytest.raises(CheckpointError, match="use_swiglu"):
        official_lightningdit.infer_config(KIND, sd)
