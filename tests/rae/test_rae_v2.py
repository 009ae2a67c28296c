"""RAE as its authors built it, and RAEv2: the multi-layer DINOv3 latent through the codec (and `repflow rae
stats`), the old `codec.layers` key, the encoder's precision, the official statistics files, and decoders given
as hub ids from the local Hugging Face cache."""

import pytest
import torch
import torch.nn.functional as F

from repflow.build import codec_for
from repflow.cli import main
from repflow.codecs.rae import RAECodecConfig, load_stats
from repflow.config import ConfigError, from_yaml, load_config, to_yaml
from repflow.data import build_dataset
from repflow.data.transforms import uint8_to_model
from repflow.errors import CheckpointError

from ..conftest import TINY
from ..encoders.conftest import TINY_DINO3, dinov3_to_official, dinov3_to_transformers, rope_periods, timm_dinov3
from ..encoders.test_dinov3 import block_outputs, normalise
from .conftest import rae_overrides

IMAGES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def dinov3(tmp_path_factory):
    """A tiny random DINOv3 as an official torch.hub file, and the same weights in transformers (the oracle)."""
    state = {k: v.contiguous() for k, v in timm_dinov3(1).state_dict().items()}
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    torch.save(dinov3_to_official(state, rope_periods(32)), path)
    return path, dinov3_to_transformers(state, TINY_DINO3["depth"])


def v2(path, *extra: str) -> list[str]:
    """16 px RGB images, a 4 x 4 latent (decoder patch 4) of the tiny DINOv3 (4 x 16 = 64 px inputs)."""
    return [*TINY, "data.resolution=16", "codec.kind=rae", "codec.decoder_patch=4", "codec.encoder=dinov3-test",
            f"codec.encoder_path={path}", *extra]  # fmt: skip


def hand_latent(hf, images, blocks, token_mean):
    """mean_k LN(block_k) (+ the deepest one's token mean), from transformers' blocks, DINOv3's resize."""
    x = F.interpolate((images + 1) / 2, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    outs, _ = block_outputs(hf, normalise(x * 2 - 1))
    normed = [F.layer_norm(outs[b][:, 5:], (64,), eps=1e-5) for b in blocks]
    z = torch.stack(normed).mean(0) + (normed[-1].mean(1, keepdim=True) if token_mean else 0)
    return z.transpose(1, 2).reshape(len(images), 64, 4, 4)  # (B, C, h, w), token n at (n // 4, n % 4)


def test_codec_gives_rae_v2s_latent_and_names_it(dinov3):
    path, hf = dinov3
    k2 = codec_for(load_config(None, v2(path, "codec.layer_indices=[1,3]", "codec.token_mean=true")))
    assert k2.model_shape(3, 16) == (64, 4, 4)
    torch.testing.assert_close(k2.raw(IMAGES), hand_latent(hf, IMAGES, [1, 3], True), atol=3e-5, rtol=0)
    k1 = codec_for(load_config(None, v2(path)))  # RAE, RAEv2's K1: the last block, no token mean
    torch.testing.assert_close(k1.raw(IMAGES), hand_latent(hf, IMAGES, [3], False), atol=3e-5, rtol=0)
    assert k2.identity()["layer_indices"] == [1, 3] and k2.identity()["token_mean"] is True
    assert k1.identity()["layers"] == 1 and "layer_indices" not in k1.identity()  # as repflow 0.2: caches stay valid
    last = codec_for(load_config(None, v2(path, "codec.layer_indices=[3]")))
    last.model_shape(3, 16)
    assert last.identity() == k1.identity()  # [3] of 4 blocks is [-1]
    deep = codec_for(load_config(None, v2(path, "codec.layer_indices=[9]")))
    with pytest.raises(ValueError, match="has 4 blocks"):
        deep.model_shape(3, 16)  # refused when the run starts, not at the first batch


def test_old_layers_key_means_the_last_k_blocks(dinov3, tmp_path):
    path, hf = dinov3
    cfg = load_config(None, v2(path, "codec.layers=2"))
    assert cfg.codec.layer_indices == (-2, -1) and cfg.codec.token_mean is False
    torch.testing.assert_close(codec_for(cfg).raw(IMAGES), hand_latent(hf, IMAGES, [2, 3], False), atol=3e-5, rtol=0)
    stored = to_yaml(load_config(None, v2(path))).replace("  layer_indices:\n  - -1\n", "  layers: 3\n")
    stored = stored.replace("precision: fp32", "precision: auto")  # a config repflow 0.2 wrote (every field)
    assert "layers: 3" in stored
    old = from_yaml(stored)
    assert old.codec.layer_indices == (-3, -2, -1) and old.codec.precision == "auto"  # its encoding is kept
    refused = {"codec.layers=0": "codec.layers", "codec.layer_indices=[3,1]": "increasing",
           "codec.layer_indices=[-1,2]": "all >= 0", "codec.layer_indices=[]": "at least one"}  # fmt: skip
    for override, why in refused.items():
        with pytest.raises(ConfigError, match=why):
            load_config(None, v2(path, override))


def test_the_encoder_runs_in_the_codecs_precision(dinov3, monkeypatch):
    import repflow.runtime.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: True)  # bf16 autocast on this CPU too
    path, _ = dinov3
    assert RAECodecConfig().precision == "fp32"  # the official code encodes in fp32
    for asked, inside in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("auto", torch.float32)):  # auto: CPU
        codec = codec_for(load_config(None, v2(path, f"codec.precision={asked}")))
        seen: list[torch.dtype] = []
        proj = codec.encoder(16).network.blocks[0].attn.proj
        hook = proj.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        z = codec.raw(IMAGES)
        hook.remove()
        assert seen == [inside] and z.dtype == torch.float32, asked


class NotATensor:
    pass


def test_official_statistics_files_normalise_as_the_official_code(dinov3, tmp_path):
    path, _ = dinov3
    z = codec_for(load_config(None, v2(path))).raw(IMAGES)
    g = torch.Generator().manual_seed(3)
    mean, var = torch.randn(64, 4, 4, generator=g), torch.rand(64, 4, 4, generator=g) + 0.01
    official = (z - mean) / torch.sqrt(var + 1e-5)  # RAE / RAEv2 encode()
    for name, stats in (("stat.pt", {"mean": mean, "var": var}), ("b.pt", {"mean": mean[None], "var": var[None]})):
        torch.save(stats, tmp_path / name)  # RAE's stat.pt / RAEv2's stats.pt (a (1, C, h, w) variant too)
        codec = codec_for(load_config(None, v2(path, f"codec.stats={tmp_path / name}")))
        assert codec.model_shape(3, 16) == (64, 4, 4)
        torch.testing.assert_close(codec.encode(IMAGES), official, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(codec.denormalise(codec.encode(IMAGES)), z, atol=1e-5, rtol=1e-6)
    bad = {"keys.pt": ({"mean": mean}, r"holds \['mean'\]"),
           "flat.pt": ({"mean": mean[0], "var": var[0]}, r"\(4, 4\)"),
           "pair.pt": ({"mean": mean, "var": var[:2]}, "one shape"),
           "neg.pt": ({"mean": mean, "var": -var}, "negative"),
           "code.pt": ({"mean": mean, "var": NotATensor()}, "needs code to be unpickled .*NotATensor")}  # fmt: skip
    for name, (stats, why) in bad.items():
        torch.save(stats, tmp_path / name)
        with pytest.raises((ValueError, CheckpointError), match=why):  # a file needing code: CheckpointError
            load_stats(tmp_path / name)
    torch.save({"mean": mean[:, :2, :2], "var": var[:, :2, :2]}, tmp_path / "small.pt")
    with pytest.raises(ConfigError, match=r"\(64, 2, 2\) statistics but the latent is \(64, 4, 4\)"):
        codec_for(load_config(None, v2(path, f"codec.stats={tmp_path / 'small.pt'}"))).model_shape(3, 16)


def test_rae_stats_streams_rae_v2s_latent_exactly(dinov3, tmp_path, capsys):
    path, _ = dinov3
    over = v2(path, "data.synthetic_size=5", "codec.layer_indices=[1,3]", "codec.token_mean=true")
    out = tmp_path / "stats.safetensors"
    assert main(["rae", "stats", "demo-fashion-sit", *over, "--out", str(out), "--batch-size", "2", "--no-flip"]) == 0
    mean, var, meta = load_stats(out)
    cfg = load_config(None, over)
    data = build_dataset(cfg.data, 4)
    every = codec_for(cfg).raw(uint8_to_model(data.get_batch([(i, False) for i in range(5)]).images)).double()
    torch.testing.assert_close(mean.double(), every.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(var.double(), every.var(0, unbiased=False), atol=1e-6, rtol=0)
    assert meta["codec"]["layer_indices"] == [1, 3] and meta["codec"]["token_mean"] is True
    assert main(["rae", "stats", "demo-fashion-sit", *over, "--out", str(tmp_path / "s.pt")]) == 2
    assert "written as .safetensors" in capsys.readouterr().err


def test_a_decoder_hub_id_resolves_through_the_local_cache(dino_dir, tmp_path, monkeypatch):
    from repflow._compat import require

    diffusers = require("diffusers")
    torch.manual_seed(0)
    rae = diffusers.AutoencoderRAE(encoder_type="dinov2", encoder_hidden_size=64, encoder_patch_size=14,
                                   encoder_num_hidden_layers=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                   decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=4,
                                   encoder_input_size=56, num_channels=3)  # fmt: skip
    repo = tmp_path / "hub" / "models--nyu-visionx--RAE-tiny"  # the Hugging Face cache layout
    snapshot = repo / "snapshots" / "0123abcd"
    rae.save_pretrained(str(snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    z = torch.randn(2, 64, 4, 4)
    by_id = codec_for(load_config(None, rae_overrides(dino_dir, "codec.decoder=nyu-visionx/RAE-tiny")))
    by_path = codec_for(load_config(None, rae_overrides(dino_dir, f"codec.decoder={snapshot}")))
    for codec in (by_id, by_path):
        codec.model_shape(3, 16)
    assert torch.equal(by_id.decode(z), by_path.decode(z))
    missing = codec_for(load_config(None, rae_overrides(dino_dir, "codec.decoder=nyu-visionx/RAE-absent")))
    missing.model_shape(3, 16)
    with pytest.raises(FileNotFoundError, match=r"`hf download nyu-visionx/RAE-absent --local-dir DIR`"):
        missing.decode(z)
