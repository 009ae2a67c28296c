"""DSD: the gradient routing its fixes promise, the EMA target, effective rank, exact resume, sampling and eval."""

import json
import math

import pytest
import torch

from repflow.config import ConfigError, load_config
from repflow.methods.erank import effective_rank
from repflow.models.dsd_net import count_parameters
from repflow.train.loop import Trainer

from ..conftest import TINY

DSD = ["method.kind=dsd", "model.family=dsd", "model.arch=DSD-T/4", "model.depth=2", "model.hidden_size=32",
       "model.num_heads=2", "model.latent_channels=8", "train.grad_clip=0"]  # fmt: skip
NAIVE = ["method.stop_gradient=false", "method.predict_clean=false", "method.ema_target=false",
         "method.strong_augment=false"]  # fmt: skip


def trainer(tmp_path, *extra: str, trained: bool = False) -> Trainer:
    """A tiny DSD run; ``trained``: its zero-initialised layers filled at random, so every path carries gradient
    (at initialisation the diffusion head's output does not depend on its input)."""
    tr = Trainer(load_config(None, [*TINY, *DSD, *extra]), tmp_path)
    if trained:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in tr.method.model.parameters():
                if not p.any():
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return tr


def one_step(tr: Trainer):
    """The loss of one step of ``tr`` on its first batch, with that step's draw."""
    batch = tr.next_batch(0)
    draw = tr.method.draw(batch, len(batch), torch.Generator().manual_seed(3))
    return tr.method(batch, draw)


def test_effective_rank_of_matrices_of_known_rank():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 5, generator=g, dtype=torch.float64))
    assert effective_rank(q).item() == pytest.approx(5.0, abs=1e-9)  # equal singular values: the rank
    assert effective_rank(7.0 * q).item() == pytest.approx(5.0, abs=1e-9)  # scale-invariant
    rank1 = torch.randn(100, 1, generator=g) @ torch.randn(1, 16, generator=g)
    assert effective_rank(rank1).item() == pytest.approx(1.0, abs=1e-6)  # a collapsed latent
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0]))).item() == pytest.approx(2.0)
    p = torch.tensor([3.0, 1.0]) / 4  # diag(3, 1): exp of the entropy of (3/4, 1/4)
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))).item() == pytest.approx(math.exp(-(p * p.log()).sum()))
    gauss = effective_rank(torch.randn(4096, 16, generator=g)).item()
    assert 15.0 < gauss < 16.0
    assert math.isnan(effective_rank(torch.zeros(8, 4)).item())


def test_stop_gradient_stops_the_target_branch(tmp_path, monkeypatch):
    """With the target from the online weak view (no EMA), only the strong view's latent may carry the
    diffusion loss's gradient when stop_gradient is on; switched off, the target branch gets one too."""
    for stop, expect_grad in ((True, False), (False, True)):
        tr = trainer(tmp_path / str(stop), "method.ema_target=false", f"method.stop_gradient={stop}",
                     "method.recon_weight=0", "method.velocity_weight=0", trained=True)  # fmt: skip
        net, seen = tr.method.model, []
        encode = net.encode

        def spy(*args, encode=encode, seen=seen, **kwargs):
            z, hidden = encode(*args, **kwargs)
            z.retain_grad()
            seen.append(z)
            return z, hidden

        monkeypatch.setattr(net, "encode", spy)
        one_step(tr).total.backward()
        weak, strong = seen  # the weak view is encoded first, then the masked one
        assert strong.grad is not None and strong.grad.abs().sum() > 0
        got = weak.grad is not None and weak.grad.abs().sum() > 0
        assert got == expect_grad, f"stop_gradient={stop}"


def test_the_velocity_head_is_detached_from_the_trunk(tmp_path):
    grads = {}
    for weight in (0.0, 1.0):
        tr = trainer(tmp_path / str(weight), f"method.velocity_weight={weight}", trained=True)
        torch.manual_seed(0)
        one_step(tr).total.backward()
        grads[weight] = {k: p.grad.clone() for k, p in tr.method.model.named_parameters() if p.grad is not None}
    velocity_head = [k for k in grads[1.0] if k.startswith("velocity_")]
    assert velocity_head and all(grads[1.0][k].abs().sum() > 0 for k in velocity_head)
    trunk = [k for k in grads[0.0] if not k.startswith("velocity_")]
    assert trunk and all(torch.equal(grads[0.0][k], grads[1.0][k]) for k in trunk)  # bit for bit


def test_the_ema_target_follows_its_rule_after_each_step(tmp_path):
    tr = trainer(tmp_path, "method.target_momentum=0.9")
    target, online = tr.method.target, tr.method.model
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters(), strict=True))
    assert not any(p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    tr.train_step()  # an optimiser step, then after_step
    for old, new, p in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p, rtol=0, atol=1e-7)
    assert any(not torch.equal(old, new) for old, new in zip(before, target.parameters(), strict=True))


def test_resume_is_exact_with_the_target_network_and_the_naive_switches(tmp_path):
    for name, extra in (("dsd", []), ("naive", NAIVE)):
        straight = trainer(tmp_path / name / "a", *extra)
        straight.fit()
        trainer(tmp_path / name / "b", *extra).fit(stop_at=2)
        resumed = trainer(tmp_path / name / "b", *extra)
        resumed.fit()
        a, b = straight.method.state_dict(), resumed.method.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert any(k.startswith("target.") for k in a) == (name == "dsd")


def test_erank_is_logged_plotted_and_warned_about(tmp_path, capsys):
    tr = trainer(tmp_path, *NAIVE, "method.erank_warning=100", "method.erank_images=16")
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(1.0 <= r["erank"] <= 8.0 for r in rows)  # at most the 8 latent channels
    out = capsys.readouterr()
    assert (out.out + out.err).count("the latent's effective rank fell to") == 1  # said once
    assert "naive: no fixes" in out.out
    assert (tmp_path / "loss.png").is_file()


def test_the_trunk_total_leaves_out_the_detached_velocity_head_and_gets_the_second_panel(tmp_path):
    from repflow.train.logging import loss_panels

    for weight in (2.0, 0.0):
        tr = trainer(tmp_path / str(weight), f"method.velocity_weight={weight}", "train.steps=2", trained=True)
        out = one_step(tr)
        assert out.terms["loss_trunk"].item() == pytest.approx((out.total - weight * out.terms["velocity"]).item())
        assert not out.terms["loss_trunk"].requires_grad  # logged only: the loop optimises the total
        if weight == 0:
            assert out.terms["loss_trunk"].item() == pytest.approx(out.total.item())
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "0.0" / "metrics.jsonl").read_text().splitlines()]
    assert list(loss_panels(rows))[:3] == ["loss", "loss_trunk", "erank"]  # the totals first, then the monitor


def test_dsd_samples_through_the_samplers_and_reconstructs_through_eval(tmp_path, capsys):
    from repflow.cli import main
    from repflow.sample.load import load_run

    trainer(tmp_path / "run").fit()
    assert (tmp_path / "run" / "samples" / "step-00000004.png").is_file()  # a sample grid, decoded
    run = load_run(tmp_path / "run")
    assert run.reconstruct is not None and run.denoiser.shapes["x"] == (8, 2, 2)
    assert main(["sample", str(tmp_path / "run"), "--num-samples", "3", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("0*.png"))) == 3
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert run.reconstruct(images).shape == images.shape
    capsys.readouterr()


def test_bad_combinations_are_refused_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="method.kind=dsd trains model.family=dsd"):
        Trainer(load_config(None, [*TINY, "method.kind=dsd"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="model.family=dsd is trained by method.kind=dsd"):
        Trainer(load_config(None, [*TINY, "model.family=dsd", "model.arch=DSD-T/4"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="needs a frozen encoder"):
        trainer(tmp_path / "c", "method.align_weight=0.5")


def test_parameter_counts_near_the_papers_family():
    """42M / 118M / 205M (the paper's sizes; the layouts are repflow's guesses) at 256 px, patch 16, C = 32."""
    for arch, paper in (("DSD-S/16", 42e6), ("DSD-M/16", 118e6), ("DSD-B/16", 205e6)):
        assert count_parameters(arch) == pytest.approx(paper, rel=0.02), arch


def test_the_gan_term_with_a_frozen_encoder_discriminator_trains_and_resumes(tmp_path):
    gan = ["encoders=[{name: tiny}]", "method.gan_weight=0.5", "method.disc_start=1", "method.gan_start=2",
           "method.disc=encoder"]  # fmt: skip
    straight = trainer(tmp_path / "a", *gan)
    assert [p.name for p in straight.method.phases()] == ["main", "disc"]
    straight.fit()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert "d_hinge_disc" not in rows[0] and "d_hinge_disc" in rows[1]  # the critic from step 1 (0-indexed)
    assert "adaptive_weight" not in rows[1] and rows[2]["adaptive_weight"] > 0  # the GAN term from step 2
    trainer(tmp_path / "b", *gan).fit(stop_at=2)
    resumed = trainer(tmp_path / "b", *gan)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert any(k.startswith("disc.") for k in a) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="needs a frozen encoder"):
        trainer(tmp_path / "c", "method.gan_weight=0.5", "method.disc=encoder")
    with pytest.raises(ConfigError, match="method.disc=dino needs the DINO ViT-S/8 weights: download"):
        trainer(tmp_path / "d", "method.gan_weight=0.5")  # RAE's discriminator by default: no silent fallback


def test_the_gan_with_rae_s_dino_discriminator_sees_fresh_clean_decodes(tmp_path, monkeypatch):
    from ..rae.conftest import save_tiny_dino

    dino = save_tiny_dino(tmp_path / "dino.pth", img_size=32)
    tr = trainer(tmp_path / "run", "method.gan_weight=0.5", f"method.disc_weights={dino}", "method.diffaug=false")
    assert len(tr.method.disc.heads) == 5 and not tr.method.needs_encoders(tr.cfg)
    inputs, batches, forward, next_batch = [], [], type(tr.method.disc).forward, tr.next_batch
    monkeypatch.setattr(type(tr.method.disc), "forward", lambda d, x: inputs.append(x.detach()) or forward(d, x))
    monkeypatch.setattr(tr, "next_batch", lambda a: batches.append(next_batch(a)) or batches[-1])
    tr.train_step()
    _, fake, real = inputs  # the generator's term, then the critic: fakes first
    with torch.no_grad():  # the online network after the main phase's update, the clean latent, 8-bit rounding
        clean = tr.method.model.decode(tr.method.model.encode(batches[0].x)[0]).clamp(-1, 1)
    assert torch.equal(fake, ((clean + 1) * 127.5).round() / 127.5 - 1) and torch.equal(real, batches[0].x)


def test_without_predict_clean_the_velocity_target_is_that_of_the_path_z_t_lies_on(tmp_path, monkeypatch):
    """z_t is built from z1 (the online latent of the masked view): its velocity is eps - z1. repflow 0.2 paired
    it with the *target* network's latent z2 of the other view (eps - z2), a velocity of no path through z_t."""
    tr = trainer(tmp_path, "method.predict_clean=false", trained=True)
    net, seen = tr.method.model, {}
    encode, denoise = net.encode, net.denoise
    keep = lambda *a, **k: seen.setdefault("z", []).append(encode(*a, **k)) or seen["z"][-1]  # noqa: E731
    monkeypatch.setattr(net, "encode", keep)
    monkeypatch.setattr(net, "denoise", lambda *a, **k: seen.setdefault("out", denoise(*a, **k)))
    batch = tr.next_batch(0)
    draw = tr.method.draw(batch, len(batch), torch.Generator().manual_seed(3))
    terms = tr.method(batch, draw).terms
    (_, _), (z1, _) = seen["z"][:2]  # the weak view, then the masked one
    pred, eps, t = seen["out"].pred, draw["eps"], draw["t"].view(-1, 1, 1)
    torch.testing.assert_close(tr.method.path.interpolate(z1, eps, draw["t"]), (1 - t) * z1 + t * eps)
    torch.testing.assert_close(terms["dsd"], (pred - (eps - z1)).pow(2).mean())
    with torch.no_grad():
        z2, _ = tr.method.target.encode(batch.x)
    assert (terms["dsd"] - (pred - (eps - z2)).pow(2).mean()).abs() > 1e-3  # what the old code computed


def test_the_imagenet_presets_switch_on_the_whole_recipe():
    for size in ("s", "m", "b"):
        m = load_config(f"dsd-{size}16-in256").method
        assert min(m.lpips_weight, m.gan_weight, m.align_weight, m.deep_weight, m.cls_weight) > 0, size
        assert m.disc == "dino" and m.disc_fakes == "clean" and 0 < m.disc_start < m.gan_start
