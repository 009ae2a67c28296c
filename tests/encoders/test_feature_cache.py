"""`repflow cache features`: frozen-encoder features cached once, read by REPA/REG training."""

import json

import pytest
import torch

from repflow.cli import main
from repflow.encoders.tiny import TinyViT, TinyViTConfig, save_tiny
from repflow.train.loop import Trainer

from ..conftest import TINY, tiny_config

ARGS = ["--batch-size", "8", "--shard-size", "16", "--workers", "0", "--no-progress"]


def encoder_file(path, seed):
    torch.manual_seed(seed)
    return save_tiny(TinyViT(TinyViTConfig(image_size=16, dim=24, depth=1, heads=2)), path, {})


def overrides(enc, cache="", *extra):
    entry = f"{{name: tiny, path: {enc}" + (f", cache: {cache}" if cache else "") + "}"
    return [*TINY, f"encoders=[{entry}]", "reg.enabled=true", "repa.enabled=true", "data.hflip=true", *extra]


def test_cache_features_then_train_reading_them(tmp_path, capsys):
    enc = encoder_file(tmp_path / "enc.safetensors", 0)
    out = tmp_path / "feats"
    assert main(["cache", "features", "demo-fashion-sit", *overrides(enc), "--out", str(out), "--flip", *ARGS]) == 0
    assert "features of 64 images (+ mirror images) as 16x24" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["meta"]["encoder"]["resolution"] == 16 and manifest["fields"]["cls"]["dtype"] == "float16"

    cached = Trainer(tiny_config(*overrides(enc, out)[len(TINY) :]), tmp_path / "run")
    online = Trainer(tiny_config(*overrides(enc)[len(TINY) :]), tmp_path / "online")
    items = [(5, True), (9, False), (11, True)]
    raw = cached.dataset.get_batch(items)
    assert "features0.patch" in raw.arrays
    got = cached.preparer(raw).features
    want = online.preparer(online.dataset.get_batch(items)).features
    for key in ("0.patch", "0.cls"):  # float16 on disk
        assert torch.allclose(got[key], want[key], atol=2e-2, rtol=1e-2), key
    cached.fit()
    assert cached.step == 4


def test_feature_cache_of_another_encoder_or_resolution_is_refused(tmp_path, capsys):
    enc, other = encoder_file(tmp_path / "a.safetensors", 0), encoder_file(tmp_path / "b.safetensors", 1)
    out = tmp_path / "feats"
    assert main(["cache", "features", "demo-fashion-sit", *overrides(enc), "--out", str(out), "--flip", *ARGS]) == 0
    capsys.readouterr()
    for bad, expected in ((overrides(other, out), "weights_sha256"), (overrides(enc, out, "data.resolution=16"), "")):
        assert main(["train", "demo-fashion-sit", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("repflow: error: the features cache") and expected in err and "\n" not in err, err
        assert "repflow cache features" in err


def test_cache_features_needs_an_encoder(capsys):
    assert main(["cache", "features", "demo-fashion-sit", *TINY, "--out", "/tmp/x"]) == 2
    assert "no frozen encoder" in capsys.readouterr().err


@pytest.mark.parametrize("index", [3])
def test_cache_features_encoder_index_is_checked(tmp_path, capsys, index):
    enc = encoder_file(tmp_path / "enc.safetensors", 0)
    assert main(["cache", "features", "demo-fashion-sit", *overrides(enc), "--encoder", str(index), "--out", "x"]) == 2
    assert "has 1 encoder(s)" in capsys.readouterr().err
