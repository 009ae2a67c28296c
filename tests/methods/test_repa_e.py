"""REPA-E: gradient routing (stop-gradient), the latent batch norm, checkpoints and exact resume with both
networks, the tuned VAE's export, and bad input."""

import json

import pytest
import torch

from repflow.config import ConfigError, load_config
from repflow.methods.latent_norm import LatentBatchNorm
from repflow.train.loop import Trainer

from ..conftest import colour_folder, latent_overrides, save_tiny_vae

SMALL = ["method.kind=repa_e", "codec.kind=vae", "repa.enabled=true", "repa.projector_dim=16",
         "encoders=[{name: tiny}]", "method.disc_layers=1", "method.disc_width=8", "train.batch_size=4"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("repa_e")
    save_tiny_vae(root / "vae")
    colour_folder(root / "data", per_class=4)
    return root


def repa_e_config(files, *extra: str):
    return load_config(None, latent_overrides(files / "vae", files / "data", *SMALL, *extra))


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


def test_latent_norm_is_batchnorm2d_of_the_official_sit():
    """BatchNorm2d(eps=1e-4, momentum=0.1, affine=False): batch statistics in train mode (moving the running
    ones, unbiased variance), running ones in eval mode; float64, two batches."""
    torch.manual_seed(0)
    ours, ref = LatentBatchNorm(3).double(), torch.nn.BatchNorm2d(3, eps=1e-4, momentum=0.1, affine=False).double()
    ours.set_statistics(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([4.0, 0.25, 1.0]))
    ref.running_mean.copy_(ours.running_mean)
    ref.running_var.copy_(ours.running_var)
    for _ in range(2):
        z = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3 + 1
        torch.testing.assert_close(ours(z, batch_statistics=True), ref.train()(z), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_mean.data, ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_var.data, ref.running_var, rtol=1e-12, atol=1e-12)
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(z), ref.eval()(z), rtol=1e-12, atol=1e-12)
    ours(z).sum().backward()  # differentiable with running statistics: the REPA gradient's way into the VAE
    torch.testing.assert_close(z.grad, (1 / (ref.running_var + 1e-4).sqrt()).view(1, 3, 1, 1).expand_as(z))


def test_diffusion_loss_leaves_the_vae_gradient_zero_and_repa_does_not(files, tmp_path):
    cfg = repa_e_config(files, "method.l1_weight=0", "method.kl_weight=0", "method.gan_weight=0")
    trainer = Trainer(cfg, tmp_path / "run")
    method = trainer.method
    batch = trainer.fixed_batch(4)
    draw = method.draw(batch, 4, torch.Generator().manual_seed(1))
    method.zero_grad(set_to_none=True)
    vae_step = method(batch, draw, "vae")  # REPA alone: the other terms are weighted 0
    torch.testing.assert_close(vae_step.total, 1.5 * vae_step.terms["align"])
    vae_step.total.backward()
    encoder = {n: g for n, g in grads(method.vae).items() if n.startswith(("encoder.", "quant_conv."))}
    decoder = {n: g for n, g in grads(method.vae).items() if n.startswith(("decoder.", "post_quant_conv."))}
    assert all(g is not None for g in encoder.values()) and any(g.abs().max() > 0 for g in encoder.values())
    assert all(g is None or not g.any() for g in decoder.values())  # REPA reads the latent only
    method.zero_grad(set_to_none=True)
    sit_step = method(batch, draw, "main")  # the diffusion loss (+ REPA of the SiT) on the detached latent
    sit_step.terms["flow_x"].backward(retain_graph=True)
    assert all(g is None for g in grads(method.vae).values())
    assert any(g is not None and g.abs().max() > 0 for g in grads(method.model).values())
    sit_step.total.backward()
    assert all(g is None for g in grads(method.vae).values())


def test_both_networks_bn_statistics_and_critic_resume_bit_for_bit(files, tmp_path):
    cfg = repa_e_config(files, "train.grad_accum=2")
    straight = Trainer(cfg, tmp_path / "a")
    start = straight.method.latent_norm.running_mean.detach().clone()
    straight.fit()
    Trainer(cfg, tmp_path / "b").fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.step == 2
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert {"vae", "latent_norm", "disc", "model", "objective"} == {k.split(".")[0] for k in a}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("model", "latent_norm"):
        for d in straight.state.ema[name].decays:
            ea, eb = straight.state.ema[name].state_dict(d), resumed.state.ema[name].state_dict(d)
            assert all(torch.equal(ea[k], eb[k]) for k in ea), name
    for phase in ("vae", "disc", "main"):
        sa = straight.state.optimizers[phase].state_dict()["state"]
        sb = resumed.state.optimizers[phase].state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert not torch.equal(a["latent_norm.running_mean"], start)  # the statistics moved, and were saved
    ckpt = tmp_path / "b" / "checkpoints" / "ckpt-00000004"
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "latent_norm.safetensors"))
    assert torch.equal(saved["running_var"], a["latent_norm.running_var"])
    assert (ckpt / "latent_norm-ema-0.9.safetensors").is_file() and (ckpt / "disc.safetensors").is_file()


def test_export_loads_in_diffusers_and_serves_as_a_frozen_codec(files, tmp_path):
    from repflow._compat import require
    from repflow.cli import main
    from repflow.codecs.vae import VAECodec

    cfg = repa_e_config(files, "train.steps=2")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert main(["export", str(tmp_path / "run"), "--vae", str(tmp_path / "e2e")]) == 0
    vae = require("diffusers").AutoencoderKL.from_pretrained(str(tmp_path / "e2e"))
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():  # both in eval mode (diffusers' train mode differs by ~4e-7 on the same weights)
        assert torch.equal(vae.decode(z).sample, trainer.method.vae.eval().decode(z).sample)
    norm = LatentBatchNorm(4)
    norm.load_state_dict(trainer.state.ema["latent_norm"].state_dict(0.9))
    config = json.loads((tmp_path / "e2e" / "config.json").read_text())
    mean, std = norm.mean_std()
    assert config["latents_mean"] == mean.tolist() and config["latents_std"] == std.tolist()
    codec = VAECodec(str(tmp_path / "e2e"))  # frozen, as any method's codec
    with torch.no_grad():
        torch.testing.assert_close(codec.normalise(z), norm(z), rtol=1e-6, atol=1e-6)
    from repflow.sample.load import load_run

    loaded = load_run(tmp_path / "run")  # `repflow eval RUN --reconstruct` measures the tuned VAE, not the codec's
    x = trainer.fixed_batch(2).x
    with torch.no_grad():
        tuned = trainer.method.vae.eval().decode(trainer.method.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        original = VAECodec(str(files / "vae"))
        assert torch.equal(loaded.reconstruct(x), tuned)
        assert loaded.codec.vae is loaded.networks["vae"]  # the API's codec is the tuned VAE too
        torch.testing.assert_close(loaded.codec.normalise(z), norm(z), rtol=1e-6, atol=1e-6)
        assert not torch.equal(tuned, original.decode(original.encode(x)))
    explicit = load_run(tmp_path / "run", ema=0.9)  # the VAE kept no EMA copy: its raw weights, no error
    assert explicit.ema == 0.9 and explicit.networks["vae"] is not None
    frozen = load_config(None, latent_overrides(tmp_path / "e2e", files / "data", "codec.kind=vae", "train.steps=1"))
    assert Trainer(frozen, tmp_path / "sit").fit().steps == 1


def test_bad_input_is_refused_in_one_line(files, tmp_path):
    from repflow.cli import main

    dc = tmp_path / "dc"
    dc.mkdir()
    dc_config = {"_class_name": "AutoencoderDC", "latent_channels": 4, "in_channels": 3,
                 "encoder_block_out_channels": [8, 16], "scaling_factor": 1.0}  # fmt: skip
    (dc / "config.json").write_text(json.dumps(dc_config))
    cases = {
        "tunes a diffusers AutoencoderKL": [f"codec.path={dc}"],
        "takes 3-channel images": ["data.channels=1"],  # the VAE's channels against the data's: before any step
        "set repa.enabled=true": ["repa.enabled=false"],
        "unset codec.cache": ["codec.cache=/nowhere"],
        "needs images of at least 24 px": ["method.disc_layers=3"],
    }
    for words, extra in cases.items():
        with pytest.raises(ConfigError, match=words) as err:
            Trainer(repa_e_config(files, *extra), tmp_path / f"run-{len(extra[0])}")
        assert "\n" not in str(err.value)
    torch.save({"main.0.weight": torch.zeros(8, 1, 4, 4)}, tmp_path / "disc.pt")
    with pytest.raises(ConfigError, match="not a PatchGAN"):
        Trainer(repa_e_config(files, f"method.disc_weights={tmp_path / 'disc.pt'}"), tmp_path / "run-disc")
    flow = load_config(None, latent_overrides(files / "vae", files / "data", "codec.kind=vae", "train.steps=1"))
    Trainer(flow, tmp_path / "flow").fit()
    assert main(["export", str(tmp_path / "flow"), "--vae", str(tmp_path / "out")]) == 2


def test_from_scratch_with_a_packaged_architecture(tmp_path):
    """vae_init=scratch needs only a config.json: the Fashion demo's, shipped with repflow."""
    small = ["data.dataset=synthetic", "data.synthetic_size=16", "train.steps=1", "train.batch_size=4",
             "model.depth=1", "repa.depth=1", "model.hidden_size=24", "repa.projector_dim=16", "train.sample_num=0",
             "data.workers=0", "data.resolution=16", "train.precision=fp32",
             "method.disc_layers=1"]  # fmt: skip
    cfg = load_config("demo-fashion-repa-e", small)
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.cfg.model.in_channels == 4 and trainer.cfg.model.input_size == 4
    assert torch.equal(trainer.method.latent_norm.running_var.data, torch.ones(4))
    assert trainer.fit().steps == 1


@pytest.mark.parametrize("official_range", [True, False])
def test_lpips_term_sees_the_official_input_range(files, tmp_path, official_range):
    """The official LPIPS maps [0, 1] inputs by x * 2 - 1 but receives [-1, 1] images: it compares 2x - 1."""
    from repflow.methods.lpips import load_lpips, save_lpips, vgg16_features

    torch.manual_seed(0)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    path = save_lpips(vgg, lin, tmp_path / "lpips.safetensors")
    cfg = repa_e_config(
        files, f"method.lpips={path}", f"method.lpips_official_range={official_range}", "data.resolution=16"
    )  # VGG16 pools 4 times before relu5_3
    trainer = Trainer(cfg, tmp_path / "run")
    batch = trainer.fixed_batch(4)
    method = trainer.method
    out = method(batch, method.draw(batch, 4, torch.Generator().manual_seed(1)), "vae")
    _, x_hat = method._held[id(batch)]
    x, lpips = batch.x, load_lpips(path)
    want = lpips(2 * x - 1, 2 * x_hat - 1) if official_range else lpips(x, x_hat)
    torch.testing.assert_close(out.terms["lpips"], want.mean())


@pytest.mark.slow
def test_two_processes_match_one_with_the_latent_statistics_reduced_over_both(files, tmp_path):
    """DDP (gloo, 2 processes) against one process with the same global batch: the latent batch norm's
    statistics are the global batch's (SyncBatchNorm's), so VAE, SiT and BN agree. No critic here: its
    BatchNorm2d is per process, as the official code leaves it."""
    from safetensors.torch import load_file

    from ..train.test_distributed import torchrun

    extra = [*latent_overrides(files / "vae", files / "data", *SMALL), "method.gan_weight=0", "train.steps=2"]
    single = Trainer(load_config(None, extra), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "ddp", 2, *extra)
    ckpt = tmp_path / "ddp" / "checkpoints" / "ckpt-00000002"
    for name in ("vae", "model", "latent_norm"):
        theirs, ours = load_file(str(ckpt / f"{name}.safetensors")), getattr(single.method, name).state_dict()
        for k in ours:
            torch.testing.assert_close(theirs[k], ours[k], atol=1e-5, rtol=1e-4, msg=f"{name}.{k}")
