"""Official DDT checkpoints <-> repflow: every key mapped, round trips exact, time and layouts right.

State dicts are built here with the official names and shapes (random values, or meta tensors at XL/2): no
official code is in the repository (the side-by-side forward against it is in the README)."""

import torch

from repflow.convert import export_checkpoint, import_checkpoint, official_ddt
from repflow.methods import FlowMethod, MethodEnv
from repflow.sample.load import load_run

XL = {"depth": 28, "hidden": 1152, "heads": 16, "patch": 2, "classes": 1000, "z": 768}
TINY = {"depth": 3, "hidden": 32, "heads": 2, "patch": 2, "classes": 10, "z": 12}
KIND = official_ddt.KIND


def official_state_dict(s: dict, device: str = "cpu", seed: int = 0) -> dict:
    """What the official ``DDT(...)`` holds (names and shapes), and its REPA trainer's ``proj`` as ``proj.*``."""
    g = torch.Generator().manual_seed(seed)
    r = (lambda *shape: torch.empty(shape, device="meta")) if device == "meta" else \
        (lambda *shape: torch.randn(shape, generator=g) * 0.05)  # fmt: skip
    d, v, hd, mlp = s["hidden"], 4 * s["patch"] ** 2, s["hidden"] // s["heads"], int(2 * 4 * s["hidden"] / 3)
    sd = {
        "x_embedder.proj.weight": r(d, v), "x_embedder.proj.bias": r(d), "s_embedder.proj.weight": r(d, v),
        "s_embedder.proj.bias": r(d), "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
        "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
        "y_embedder.embedding_table.weight": r(s["classes"] + 1, d), "final_layer.linear.weight": r(v, d),
        "final_layer.linear.bias": r(v), "final_layer.adaLN_modulation.0.weight": r(2 * d, d),
        "final_layer.adaLN_modulation.0.bias": r(2 * d),
    }  # fmt: skip
    for i in range(s["depth"]):
        for name, shape in (
            ("norm1.weight", (d,)),
            ("norm2.weight", (d,)),
            ("attn.qkv.weight", (3 * d, d)),
            ("attn.q_norm.weight", (hd,)),
            ("attn.k_norm.weight", (hd,)),
            ("attn.proj.weight", (d, d)),
            ("attn.proj.bias", (d,)),
            ("mlp.w1.weight", (mlp, d)),
            ("mlp.w3.weight", (mlp, d)),
            ("mlp.w2.weight", (d, mlp)),
            ("adaLN_modulation.0.weight", (6 * d, d)),
            ("adaLN_modulation.0.bias", (6 * d,)),
        ):
            sd[f"blocks.{i}.{name}"] = r(*shape)  # fmt: skip
    for j, (fan_in, fan_out) in enumerate(((d, d), (d, d), (d, s["z"]))):
        sd[f"proj.0.{2 * j}.weight"], sd[f"proj.0.{2 * j}.bias"] = r(fan_out, fan_in), r(fan_out)
    return sd


def test_every_official_xl2_key_has_its_place():
    sd = official_state_dict(XL, device="meta")
    assert len(sd) == 349 + 6  # the official denoiser's state_dict, counted, and the REPA projector
    cfg = official_ddt.infer_config(KIND, sd)
    m = cfg.model
    assert (m.family, m.arch, m.depth, m.encoder_depth, m.num_heads, m.patch_size, m.input_size) == (
        "ddt", "DDT-XL/2", 28, 22, 16, 2, 32)  # fmt: skip
    assert (m.time_offset, m.time_scale, cfg.repa.depth, cfg.repa.projector_dim) == (1.0, -1.0, 8, 1152)
    model, objective, _ = official_ddt.from_official(KIND, sd, cfg)
    with torch.device("meta"):
        method = FlowMethod(cfg, MethodEnv(encoder_dims=[768]))
    assert {k: v.shape for k, v in model.items()} == {k: v.shape for k, v in method.model.state_dict().items()}
    assert {k: v.shape for k, v in objective.items()} == {k: v.shape for k, v in method.objective.state_dict().items()}
    back = official_ddt.to_official(KIND, model, objective, {}, cfg)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


def test_round_trip_is_exact_and_the_network_runs_in_repflow_time(tmp_path, tiny_vae):
    ema, raw = official_state_dict(TINY, seed=1), official_state_dict(TINY, seed=2)
    lightning = official_ddt.lightning_checkpoint(ema, raw, step=5)
    torch.save(lightning, tmp_path / "official.ckpt")
    overrides = [f"codec.path={tiny_vae}", "data.resolution=16", "model.input_size=8", "model.encoder_depth=2",
                 "encoders=[{name: tiny}]"]  # fmt: skip
    import_checkpoint(KIND, tmp_path / "official.ckpt", tmp_path / "run", overrides)
    export_checkpoint(KIND, tmp_path / "run", tmp_path / "back.ckpt")
    exported = torch.load(tmp_path / "back.ckpt", weights_only=True)
    want = official_ddt.lightning_checkpoint({k: v for k, v in ema.items() if not k.startswith("proj.")}, raw, 5)
    assert exported["global_step"] == 5 and exported["state_dict"].keys() == want["state_dict"].keys()
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in want["state_dict"].items())
    run = load_run(tmp_path / "run")
    assert run.cfg.sample.cfg_rule == "evaluation_strict" and tuple(run.cfg.sample.cfg_interval) == (0.0, 0.7)
    # their network, written out here: unfold patches, Linear embeddings, fold in (c, i, j) order, their time
    net = run.denoiser.network
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 10])
    for tau in (0.2, 0.8):
        v = run.denoiser.velocity({"x": x}, tau, y)["x"]
        assert v.abs().max() > 0
        s = net.encode({"x": x}, torch.full((2,), tau), y)
        patches = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2)  # (B, N, C p p), their embedding
        emb = patches @ ema["x_embedder.proj.weight"].T + ema["x_embedder.proj.bias"]
        torch.testing.assert_close(net.x_embedder(x).flatten(2).transpose(1, 2), emb)
        tokens = net.final_norm(net._run(net.blocks[2:], net.x_embedder(x).flatten(2).transpose(1, 2), s, 3, set(),
                                         {}), s)  # fmt: skip
        theirs = tokens @ ema["final_layer.linear.weight"].T + ema["final_layer.linear.bias"]
        folded = torch.nn.functional.fold(theirs.transpose(1, 2), (8, 8), 2, stride=2)
        torch.testing.assert_close(v, -folded)  # their velocity points the other way
