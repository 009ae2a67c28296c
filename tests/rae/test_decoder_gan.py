"""RAE's decoder GAN as the official stage 1: the DINO ViT-S/8 discriminator (five heads), DiffAugment's order,
fresh clean fakes, spectral-norm modes, LPIPS from the usual files, resume, and repflow 0.2's runs."""

import json

import pytest
import torch
import torch.nn.functional as F

from repflow.config import ConfigError, load_config
from repflow.methods.decoder_losses import diffaug, draw_diffaug, translate, upgrade_gan
from repflow.methods.discriminator import (
    DINO_BLOCKS,
    BatchNormLocal,
    DinoDiscriminator,
    DiscHead,
    EncoderDiscriminator,
    legacy_disc_name,
    load_dino,
)
from repflow.train.loop import Trainer

from .conftest import DECODER, rae_overrides, save_tiny_dino


def dino_decoder(dino_vits8, *extra: str) -> list[str]:
    return rae_overrides(None, *DECODER, f"method.disc_weights={dino_vits8['small']}", *extra)


def reference_tokens(path, images: torch.Tensor) -> list[torch.Tensor]:
    """The patch tokens after every block of the DINO file, computed here by hand: bilinear resize to 224,
    ImageNet normalisation of [0, 1] images, class token + positions, the blocks one by one."""
    import timm

    state = torch.load(path, weights_only=True)
    dim = state["cls_token"].shape[-1]
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, embed_dim=dim, num_heads=1,
                            act_layer="gelu_tanh").eval()  # fmt: skip
    vit.load_state_dict(state)
    x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = vit.patch_embed(((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], 1) + vit.pos_embed
    out = []
    for block in vit.blocks:
        x = block(x)
        out.append(x[:, 1:])
    return out


def test_the_dino_discriminator_has_five_heads_on_the_official_taps(dino_vits8):
    path = dino_vits8["full"]
    disc = DinoDiscriminator(load_dino(str(path)))
    assert len(disc.heads) == 5 and disc.blocks == DINO_BLOCKS == (2, 5, 8, 11)
    images = torch.rand(2, 3, 256, 256) * 2 - 1  # resized to the ViT's 224 px: 28 x 28 tokens per head
    with torch.no_grad():
        logits = disc.eval()(images)
        tokens = reference_tokens(path, images)
    assert logits.shape == (2, 5 * 784)
    expected = [disc.heads[0](tokens[11])] + [disc.heads[i + 1](tokens[b]) for i, b in enumerate((2, 5, 8, 11))]
    for i, want in enumerate(expected):  # head 0: the last block's output (no final norm); then blocks 2, 5, 8, 11
        assert want.shape == (2, 784)
        torch.testing.assert_close(logits[:, 784 * i : 784 * (i + 1)], want, rtol=1e-4, atol=1e-4)
    logits_grey = disc(images[:, :1])  # greyscale is replicated to RGB
    torch.testing.assert_close(logits_grey, disc(images[:, :1].expand(-1, 3, -1, -1)))


def test_a_head_by_hand_per_sample_norms_and_one_power_iteration_per_training_call():
    """RAE's head: SN conv k 1 -> BN -> LReLU, then (SN conv k 9 circular -> BN -> LReLU + x) / sqrt 2, then SN conv
    k 1; BN normalises each sample's channels over its tokens (virtual batch 1); SN divides by u^T W v."""
    torch.manual_seed(0)
    head = DiscHead(6).eval()
    for m in head.modules():
        if isinstance(m, BatchNormLocal):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    tokens = torch.randn(3, 20, 6, dtype=torch.float64)
    head.double()

    def sn(conv):
        w = conv.weight_orig
        return w / (conv.weight_u @ w.flatten(1) @ conv.weight_v)

    def block(seq, x):
        conv, norm = seq[0], seq[1]
        k = conv.kernel_size[0]
        y = F.conv1d(F.pad(x, (k // 2, k // 2), mode="circular"), sn(conv), conv.bias)
        mean, var = y.mean(-1, keepdim=True), y.var(-1, keepdim=True, unbiased=False)
        y = (y - mean) / (var + 1e-6).sqrt() * norm.weight[:, None] + norm.bias[:, None]
        return F.leaky_relu(y, 0.2)

    x = block(head.inp, tokens.transpose(1, 2))
    x = (block(head.res, x) + x) / 2**0.5
    want = F.conv1d(x, sn(head.out), head.out.bias)[:, 0]
    torch.testing.assert_close(head(tokens), want, rtol=1e-12, atol=1e-12)
    other = tokens.clone()
    other[1:] = torch.randn(2, 20, 6, dtype=torch.float64)
    assert torch.equal(head(other)[0], head(tokens)[0])  # per-sample norms: the rest of the batch does not matter
    conv = head.inp[0]
    u, w = conv.weight_u.clone(), conv.weight_orig.detach().flatten(1)
    head.train()(tokens)  # one power iteration, from the stored u: v = W^T u / |.|, u = W v / |.|
    v = F.normalize(w.T @ u, dim=0, eps=1e-12)
    torch.testing.assert_close(conv.weight_u, F.normalize(w @ v, dim=0, eps=1e-12))


def test_dino_weights_in_every_layout_and_the_missing_weights_line(dino_vits8, tmp_path):
    official = load_dino(str(dino_vits8["full"]))
    timm_file = save_tiny_dino(tmp_path / "model.safetensors", fmt="safetensors")  # timm's layout, same keys
    state = torch.load(dino_vits8["full"], weights_only=True)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "full_checkpoint.pth")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        want = official.forward_features(x)
        for other in (timm_file, tmp_path / "full_checkpoint.pth"):
            assert torch.equal(load_dino(str(other)).forward_features(x), want)
    qkv = official.blocks[0].attn.qkv.bias
    assert not qkv[32:64].any() and qkv[:32].any() and qkv[64:].any()  # the key bias zeroed, as RAE does
    assert official.blocks[0].mlp.act.__class__.__name__ == "GELUTanh" and not official.training
    with pytest.raises(ConfigError, match=r"needs the DINO ViT-S/8 weights: download RAE's discs/dino_vit_small_"
                                          r"patch8_224.pth .* set method.disc_weights="):  # fmt: skip
        load_dino("")
    with pytest.raises(ConfigError, match="'nowhere.pth' does not exist: download"):
        load_dino("nowhere.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="is not a DINO ViT weights file"):
        load_dino(str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="blocks 0 .. 11"):
        DinoDiscriminator(official, (2, 12))


def test_a_decoder_run_without_dino_weights_stops_with_one_line(tmp_path, capsys):
    small = ["data.dataset=synthetic", "data.resolution=16", "data.crop=center", "method.size=T", "codec.encoder=tiny",
             "codec.encoder_path=", "codec.decoder_patch=4"]  # fmt: skip
    cfg = load_config("rae-decoder-dinov2b-in256", small)
    assert cfg.method.disc == "dino" and cfg.method.disc_fakes == "clean" and cfg.method.lpips_weight == 1.0
    with pytest.raises(ConfigError, match="method.disc=dino needs the DINO ViT-S/8 weights"):
        Trainer(cfg, tmp_path)
    err = capsys.readouterr().err  # the preset wants LPIPS: one line says it is off and where the files are
    assert err.count("LPIPS is off") == 1 and "vgg16-397923af.pth" in err and "lpips/weights/v0.1/vgg.pth" in err


def test_diffaug_translates_then_colours():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    p = {"ty": torch.tensor([0.0, 0.5]), "tx": torch.tensor([0.99, 0.5]), "brightness": torch.tensor([0.9, 0.5]),
         "saturation": torch.tensor([0.5, 0.25]), "contrast": torch.tensor([0.5, 1.0])}  # fmt: skip
    out = diffaug(x, p)
    # image 0: shift by (-1, +1) (u = 0 -> -round(8 / 8), u -> 1: +1); then brightness +0.4, the rest neutral
    moved = translate(x, torch.tensor([-1, 0]), torch.tensor([1, 0]))
    assert torch.equal(moved[0, :, 1:, :-1], x[0, :, :-1, 1:])
    assert not moved[0, :, 0].any() and not moved[0, ..., -1].any()
    torch.testing.assert_close(out[0], moved[0] + 0.4)  # the zero padding is brightened too: colour came second
    colour_first = translate((x + 0.4)[:1], torch.tensor([-1]), torch.tensor([1]))
    assert (out[0, :, 0] - colour_first[0, :, 0]).abs().min() > 0.39  # the other order leaves the border at 0
    # image 1: no shift (u = 0.5), saturation x 0.5 around the channel mean, contrast x 1.5 around the image mean
    grey = x[1].mean(0, keepdim=True)
    sat = (x[1] - grey) * 0.5 + grey
    torch.testing.assert_close(out[1], (sat - sat.mean()) * 1.5 + sat.mean())
    # the integer shift is uniform on -round(side / 8) .. round(side / 8): u in [k / 5, (k + 1) / 5) -> k - 2 at 16 px
    u = torch.tensor([0.0, 0.199, 0.2, 0.5, 0.799, 0.8, 0.9999])
    shifted = diffaug(torch.arange(16.0).view(1, 1, 1, 16).expand(7, 3, 1, 16).contiguous(), {
        "ty": torch.full((7,), 0.5), "tx": u, "brightness": torch.full((7,), 0.5), "saturation": torch.full((7,), 0.5),
        "contrast": torch.full((7,), 0.5)})  # fmt: skip
    assert shifted[:, 0, 0, 4].tolist() == [2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0]


def test_diffaug_draws_and_keeps_gradients():
    p = draw_diffaug(4, torch.Generator().manual_seed(0), "cpu")
    assert set(p) == {"ty", "tx", "brightness", "saturation", "contrast"} and all(v.shape == (4,) for v in p.values())
    assert all(((v >= 0) & (v < 1)).all() for v in p.values())
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    diffaug(x, p).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_critic_sees_a_fresh_clean_decode_and_the_spectral_norm_modes(tmp_path, dino_vits8, monkeypatch):
    """One step with the GAN on: the decoder's term sees the discriminator in eval mode (no power iteration);
    then the critic, in train mode, sees (fakes first) the 8-bit rounding of decode(z) by the *updated* decoder,
    without the latent noise the decoder's term trained on."""
    gan = ["method.disc_start=0", "method.gan_start=0", "method.diffaug=false"]
    cfg = load_config(None, dino_decoder(dino_vits8, *gan))
    tr = Trainer(cfg, tmp_path)
    method, calls = tr.method, []
    forward = type(method.disc).forward

    def spy(disc, images):
        calls.append((disc.training, images.detach().clone(), disc.heads[0].inp[0].weight_u.clone()))
        return forward(disc, images)

    monkeypatch.setattr(type(method.disc), "forward", spy)
    batches, next_batch = [], tr.next_batch
    monkeypatch.setattr(tr, "next_batch", lambda a: batches.append(next_batch(a)) or batches[-1])
    tr.train_step()
    (batch,) = batches
    (gen_mode, gen_in, u0), (fake_mode, fake_in, u1), (real_mode, real_in, u2) = calls
    assert (gen_mode, fake_mode, real_mode) == (False, True, True)
    assert torch.equal(u0, u1) and not torch.equal(u1, u2)  # one power iteration per critic call, none before
    assert torch.equal(real_in, batch.images)
    with torch.no_grad():
        clean = method.decoder.images(batch.x, method.encoder).clamp(-1, 1)  # the decoder after its update
    assert torch.equal(fake_in, ((clean + 1) * 127.5).round() / 127.5 - 1)
    assert not torch.allclose(gen_in, clean, atol=1e-3)  # the decoder's term: the noise-augmented latent


def test_noisy_fakes_when_asked(tmp_path, dino_vits8, monkeypatch):
    cfg = load_config(None, dino_decoder(dino_vits8, "method.disc_start=0", "method.gan_weight=0.5",
                                         "method.gan_start=5", "method.disc_fakes=noisy"))  # fmt: skip
    tr = Trainer(cfg, tmp_path)
    seen, reconstruct = [], tr.method.reconstruct
    monkeypatch.setattr(tr.method, "reconstruct", lambda z, draw=None: seen.append(draw) or reconstruct(z, draw))
    tr.train_step()
    assert len(seen) == 2 and all(d is not None for d in seen)  # the decoder's term and the critic: both noisy


def test_repflow_02_runs_keep_their_discriminator():
    old = {"kind": "rae_decoder", "lpips": "", "lpips_weight": 1.0, "gan_weight": 0.75, "disc_start": 1, "gan_start": 2,
           "disc_lr": 2e-4, "disc_blocks": [], "max_adaptive_weight": 1e4, "diffaug": True}  # fmt: skip
    assert upgrade_gan(old, "noisy") == {**old, "disc": "encoder", "disc_fakes": "noisy"}
    new = {"kind": "rae_decoder", "gan_weight": 0.5}  # a user's config: the defaults of today
    assert upgrade_gan(new, "noisy") == new
    cfg = load_config(None, [f"method.{k}={json.dumps(v)}" for k, v in old.items()] + ["codec.kind=rae"])
    assert cfg.method.disc == "encoder" and cfg.method.disc_fakes == "noisy"
    dsd = load_config(None, ["method.kind=dsd", "model.family=dsd", "model.arch=DSD-T/4",
                             *[f"method.{k}={json.dumps(v)}" for k, v in old.items() if k != "kind"]])  # fmt: skip
    assert dsd.method.disc == "encoder" and dsd.method.disc_fakes == "clean"
    # repflow 0.2 saved parametrised spectral norms: their names map onto today's hook, and load
    from torch.nn.utils.parametrizations import spectral_norm

    old_head = torch.nn.Sequential(spectral_norm(torch.nn.Conv1d(8, 8, 1)))
    names = {f"disc.heads.0.inp.{k}": v for k, v in old_head.state_dict().items()}
    today = {f"disc.heads.0.inp.0.{k}" for k in ("bias", "weight_orig", "weight_u", "weight_v")}
    assert {legacy_disc_name(k) for k in names} == today
    other = "decoder.x.parametrizations.weight.original"
    assert legacy_disc_name(other) == other


def test_the_encoder_discriminator_of_repflow_02(tmp_path):
    cfg = load_config(None, rae_overrides(None, *DECODER, "method.disc=encoder", "train.steps=2"))
    tr = Trainer(cfg, tmp_path)
    assert isinstance(tr.method.disc, EncoderDiscriminator) and len(tr.method.disc.heads) == 4
    tr.fit()
    assert tr.method.disc(torch.rand(2, 3, 16, 16)).shape == (2, 4 * tr.method.encoder.num_patches)
