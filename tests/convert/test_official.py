"""Official SiT / REPA / REG checkpoints <-> repflow: every key mapped, round trips exact, time flipped right.

State dicts are built here with the official names and shapes (random values, or meta tensors at XL/2):
no official code is in the repository."""

import argparse
import math

import pytest
import torch

from repflow.cli import main
from repflow.convert import export_checkpoint, import_checkpoint, official_sit
from repflow.errors import CheckpointError
from repflow.methods import FlowMethod, MethodEnv
from repflow.models.layers import sincos_pos_embed_2d
from repflow.runtime.lookup import load_checkpoint
from repflow.sample.load import load_run

XL = {"depth": 28, "hidden": 1152, "patch": 2, "channels": 4, "classes": 1000, "grid": 16, "z": 768, "proj": 2048}
TINY = {"depth": 2, "hidden": 32, "patch": 2, "channels": 4, "classes": 10, "grid": 4, "z": 12, "proj": 24}


def official_state_dict(kind: str, s: dict, device: str = "cpu", seed: int = 0) -> dict:
    """What the official ``SiT(...)`` of REG / REPA / SiT (learn_sigma) holds, names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = (lambda *shape: torch.empty(shape, device="meta")) if device == "meta" else \
        (lambda *shape: torch.randn(shape, generator=g) * 0.02)  # fmt: skip
    d, p, c = s["hidden"], s["patch"], s["channels"]
    front = 1 if kind == "official-reg" else 0
    out = 2 * c if kind == "official-sit" else c
    pos = sincos_pos_embed_2d(d, s["grid"], s["grid"])
    table = torch.cat([torch.zeros(front, d), pos])[None] if device == "cpu" else r(1, front + s["grid"] ** 2, d)
    sd = {
        "pos_embed": table,
        "x_embedder.proj.weight": r(d, c, p, p), "x_embedder.proj.bias": r(d),
        "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
        "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
        "y_embedder.embedding_table.weight": r(s["classes"] + 1, d),
        "final_layer.linear.weight": r(p * p * out, d), "final_layer.linear.bias": r(p * p * out),
        "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d),
    }  # fmt: skip
    for i in range(s["depth"]):
        for name, shape in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.fc1", (4 * d, d)),
                            ("mlp.fc2", (d, 4 * d)), ("adaLN_modulation.1", (6 * d, d))):  # fmt: skip
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = r(*shape), r(shape[0])
    if kind != "official-sit":
        q = s["proj"]
        for j, (fan_in, fan_out) in enumerate(((d, q), (q, q), (q, s["z"]))):
            sd[f"projectors.0.{2 * j}.weight"], sd[f"projectors.0.{2 * j}.bias"] = r(fan_out, fan_in), r(fan_out)
    if kind == "official-reg":
        sd.update({"cls_projectors2.weight": r(d, s["z"]), "cls_projectors2.bias": r(d), "wg_norm.weight": r(d),
                   "wg_norm.bias": r(d), "final_layer.linear_cls.weight": r(s["z"], d),
                   "final_layer.linear_cls.bias": r(s["z"])})  # fmt: skip
    return sd


@pytest.mark.parametrize("kind", official_sit.KINDS)
def test_every_official_xl2_key_has_its_place(kind):
    sd = official_state_dict(kind, XL, device="meta")
    assert len(sd) == {"official-sit": 292, "official-repa": 298, "official-reg": 304}[kind]  # the official counts
    cfg = official_sit.infer_config(kind, sd)
    assert (cfg.model.depth, cfg.model.hidden_size, cfg.model.num_heads, cfg.model.input_size) == (28, 1152, 16, 32)
    model, objective, extra = official_sit.from_official(kind, sd, cfg)
    with torch.device("meta"):
        method = FlowMethod(cfg, MethodEnv(encoder_dims=[768] if kind != "official-sit" else []))
    want = {k: v.shape for k, v in method.model.state_dict().items()}
    assert {k: v.shape for k, v in model.items()} == want  # nothing missing, nothing left over
    assert {k: v.shape for k, v in objective.items()} == {k: v.shape for k, v in method.objective.state_dict().items()}
    back = official_sit.to_official(kind, model, objective, extra, cfg)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


@pytest.mark.parametrize("kind", official_sit.KINDS)
def test_round_trip_is_exact_for_every_tensor(kind, tmp_path):
    ema, raw = official_state_dict(kind, TINY, seed=1), official_state_dict(kind, TINY, seed=2)
    ema["pos_embed"] = ema["pos_embed"] + 1e-4 * torch.randn_like(ema["pos_embed"])  # an official EMA drifts
    file = tmp_path / "official.pt"
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": argparse.Namespace(model="SiT-XL/2"), "steps": 7}, file)
    ckpt = import_checkpoint(kind, file, tmp_path / "run")
    assert ckpt.name == "ckpt-00000007" and load_checkpoint(tmp_path / "run").state()["step"] == 7
    back = tmp_path / "back.pt"
    export_checkpoint(kind, tmp_path / "run", back)
    exported = torch.load(back, weights_only=True)
    pairs = [(exported["ema"], ema), (exported["model"], raw)] if kind == "official-reg" else [(exported, ema)]
    for got, want in pairs:
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_imported_sit_is_the_official_network_in_repflow_time(tmp_path):
    """SiT's t = 1 is data: v_repflow(x, tau) = -net(x, 1 - tau) on the first C of its 2C output channels."""
    sd = official_state_dict("official-sit", TINY, seed=3)
    torch.save(sd, tmp_path / "sit.pt")
    cfg = official_sit.infer_config("official-sit", sd)
    import_checkpoint("official-sit", tmp_path / "sit.pt", tmp_path / "run", ["codec.kind=pixel"])
    run = load_run(tmp_path / "run")
    assert run.cfg.model.time_offset == 1.0 and run.cfg.model.time_scale == -1.0
    # the official network, written with repflow's layers: same blocks, time as given, 2C outputs
    plain = cfg.replace(**{"model.time_offset": 0.0, "model.time_scale": 1.0, "model.in_channels": 4})
    with torch.no_grad():
        net = FlowMethod.inference_networks(plain)["model"]
        model, _, extra = official_sit.from_official("official-sit", sd, cfg)
        net.load_state_dict(model)
        net.out_x.weight.neg_()  # undo the folded sign: the raw official output
        net.out_x.bias.neg_()
        x, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 3, 9])
        for tau in (0.1, 0.5, 0.9):
            official = net({"x": x}, torch.full((3,), 1 - tau), y).pred["x"]  # SiT's time: 1 - tau
            torch.testing.assert_close(run.denoiser.velocity({"x": x}, tau, y)["x"], -official)


def test_files_needing_unpickling_code_are_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"ema": {"x": torch.zeros(1)}, "hook": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"needs code to be unpickled \(print\) and is refused"):
        import_checkpoint("official-repa", tmp_path / "evil.pt", tmp_path / "run")
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="no place in repflow"):
        sd = official_state_dict("official-sit", TINY)
        sd["extra.weight"] = torch.zeros(1)
        torch.save(sd, tmp_path / "odd.pt")
        import_checkpoint("official-sit", tmp_path / "odd.pt", tmp_path / "run2")


def test_cli_import_sample_and_export(tmp_path, capsys):
    sd = official_state_dict("official-reg", TINY, seed=4)
    torch.save({"ema": sd}, tmp_path / "reg.pt")
    assert main(["convert", "official-reg", str(tmp_path / "reg.pt"), "codec.kind=pixel", "data.resolution=8",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    run = load_run(tmp_path / "run")
    assert run.cfg.reg.cls_guidance == "official" and run.cfg.reg.dim == 12 and math.isclose(run.cfg.sample.cfg, 2.3)
    assert main(["sample", str(tmp_path / "run"), "--num-samples", "2", "--steps", "3", "--sampler", "euler"]) == 0
    assert main(["convert", "--to", "official-reg", str(tmp_path / "run"), "--out", str(tmp_path / "b.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["ema"]["wg_norm.bias"], sd["wg_norm.bias"])
    assert main(["convert", "official-xyz", "f.pt", "--out", str(tmp_path / "x")]) == 2
    assert "FORMAT is one of official-sit, official-repa, official-reg" in capsys.readouterr().err


def official_jit_state_dict(depth=2, d=32, heads=2, p=4, c=3, bottleneck=8, classes=10, grid=4, ctx=3, seed=0):
    """What the official JiT ``Denoiser`` holds: keys prefixed ``net.``, the frozen pos_embed included."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(shape, generator=g) * 0.02  # noqa: E731
    f = int(int(4 * d) * 2 / 3)
    sd = {"pos_embed": sincos_pos_embed_2d(d, grid, grid)[None], "in_context_posemb": r(1, ctx, d),
          "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d), "t_embedder.mlp.2.weight": r(d, d),
          "t_embedder.mlp.2.bias": r(d), "y_embedder.embedding_table.weight": r(classes + 1, d),
          "x_embedder.proj1.weight": r(bottleneck, c, p, p), "x_embedder.proj2.weight": r(d, bottleneck, 1, 1),
          "x_embedder.proj2.bias": r(d), "final_layer.norm_final.weight": r(d),
          "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d),
          "final_layer.linear.weight": r(p * p * c, d), "final_layer.linear.bias": r(p * p * c)}  # fmt: skip
    for i in range(depth):
        for name, shape in (("norm1.weight", (d,)), ("norm2.weight", (d,)), ("attn.q_norm.weight", (d // heads,)),
                            ("attn.k_norm.weight", (d // heads,)), ("attn.qkv.weight", (3 * d, d)),
                            ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
                            ("mlp.w12.weight", (2 * f, d)), ("mlp.w12.bias", (2 * f,)), ("mlp.w3.weight", (d, f)),
                            ("mlp.w3.bias", (d,)), ("adaLN_modulation.1.weight", (6 * d, d)),
                            ("adaLN_modulation.1.bias", (6 * d,))):  # fmt: skip
            sd[f"blocks.{i}.{name}"] = r(*shape)
    return {f"net.{k}": v for k, v in sd.items()}


def test_official_jit_round_trip_and_time_flip(tmp_path):
    ema1, ema2, raw = (official_jit_state_dict(seed=s) for s in (1, 2, 3))
    torch.save({"model": raw, "model_ema1": ema1, "model_ema2": ema2, "args": argparse.Namespace(epoch=600),
                "epoch": 600}, tmp_path / "jit.pth")  # fmt: skip
    import_checkpoint("official-jit", tmp_path / "jit.pth", tmp_path / "run", ["model.num_heads=2"])  # pixels
    run = load_run(tmp_path / "run")
    assert run.cfg.model.family == "jit" and run.cfg.model.time_offset == 1.0 and run.cfg.flow.prediction == "x"
    assert run.cfg.train.ema_decays == (0.9999, 0.9996) and run.ema == 0.9999
    assert run.cfg.sample.cfg_rule == "evaluation_strict" and run.cfg.sample.cfg_interval == (0.0, 0.9)  # JiT's rule
    export_checkpoint("official-jit", tmp_path / "run", tmp_path / "back.pth")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    for key, want in (("model", raw), ("model_ema1", ema1), ("model_ema2", ema2)):
        assert back[key].keys() == want.keys() and all(torch.equal(back[key][k], want[k]) for k in want), key
    # JiT's t = 1 is clean: the network sees 1 - t, and an x-prediction needs no sign change
    model = run.model
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    emb = model.t_embedder(torch.tensor([0.25, 0.25]))
    model.t_embedder.time_offset, model.t_embedder.time_scale = 0.0, 1.0
    assert torch.allclose(emb, model.t_embedder(torch.tensor([0.75, 0.75])))
    assert x.shape == model({"x": x}, torch.rand(2), y).pred["x"].shape
