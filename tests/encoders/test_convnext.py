"""ConvNeXt V2 (FD-loss's / RAEv2's ConvNeXt space): timm's real architecture at a tiny width, loaded by path."""

import pytest
import torch
from safetensors.torch import save_file

from repflow._compat import require
from repflow.config import EncoderConfig
from repflow.encoders import EncoderSpec, build_encoder, register_encoder

TINY = {"depths": (1, 1, 1, 1), "dims": (8, 8, 16, 16)}
register_encoder(EncoderSpec("convnextv2-test", "convnext", 16, 32, timm_name="convnextv2_atto", timm_kwargs=TINY))


def test_global_vector_is_the_mean_of_the_last_feature_map(tmp_path):
    timm = require("timm")
    torch.manual_seed(0)
    net = timm.create_model("convnextv2_atto", pretrained=False, num_classes=0, **TINY).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    file = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(file))
    enc = build_encoder(EncoderConfig(name="convnextv2-test", path=str(file)), 64)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    out = enc(images)
    with torch.no_grad():
        fmap = net.forward_features(enc.preprocess(images))  # (2, 16, 2, 2): before the head's norm
    assert out.patch.shape == (2, 4, 16) and torch.allclose(out.cls, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert not torch.allclose(out.cls, net.forward_head(fmap, pre_logits=True), atol=1e-3)  # not the head's norm
    with pytest.raises(ValueError, match="do not fit encoder convnextv2-test"):
        save_file({"stem.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        build_encoder(EncoderConfig(name="convnextv2-test", path=str(tmp_path / "bad.safetensors")), 64)
