"""REG's class token and REPA on the other token families (LightningDiT, DDT, JiT), and the one-line refusal
where a family has no place for the token."""

import dataclasses

import pytest
import torch

from repflow.build import resolve_config
from repflow.config import ConfigError
from repflow.data import build_dataset
from repflow.flow.generate import generate
from repflow.methods import FlowMethod, MethodEnv, TrainBatch

from ..conftest import tiny_config

FAMILIES = {
    "lightningdit": ["model.family=lightningdit", "model.arch=LightningDiT-T/2"],
    "ddt": ["model.family=ddt", "model.arch=DDT-T/2", "model.encoder_depth=1"],
    "jit": ["model.family=jit", "model.arch=JiT-T/2", "model.bottleneck=8", "model.context_tokens=2",
            "model.context_start=1", "flow.prediction=x"],
}  # fmt: skip


def reg_repa(family: str, *extra: str):
    cfg = tiny_config("reg.enabled=true", "repa.enabled=true", "repa.depth=2", "encoders=[{name: tiny}]",
                      *FAMILIES[family], *extra)  # fmt: skip
    cfg = resolve_config(cfg, build_dataset(cfg.data, 4))
    return cfg.replace(reg=dataclasses.replace(cfg.reg, dim=6))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reg_and_repa_train_and_sample_jointly(family):
    cfg = reg_repa(family, "sample.cfg=2.0")
    torch.manual_seed(0)
    method = FlowMethod(cfg, MethodEnv(encoder_dims=[6]))
    assert method.model.num_front_tokens == 1
    patch, cls = torch.randn(4, 16, 6), torch.randn(4, 6)
    batch = TrainBatch(x=torch.randn(4, 3, 8, 8), y=torch.arange(4), features={"0.patch": patch, "0.cls": cls})
    out = method(batch, method.draw(batch, 4, torch.Generator().manual_seed(0)))
    assert {"flow_x", "flow_cls", "repa"} <= set(out.terms)
    out.total.backward()
    assert method.model.stream_in["cls"][0].weight.grad.abs().sum() > 0  # the token reaches the loss
    assert method.objective.terms["repa"].projectors[0][0].weight.grad.abs().sum() > 0
    hidden = method.model({"x": batch.x, "cls": cls}, torch.rand(4), batch.y, return_hidden=(2,)).hidden[2]
    assert hidden.shape[1] == 17  # REPA aligns the class token and the 16 patches (257 at DINOv2-B scale)
    model = method.model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    denoiser = FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"))
    sample = generate(denoiser, cfg.sample, range(4), torch.arange(4))
    assert sample.states["cls"].shape == (4, 6) and torch.isfinite(sample.states["x"]).all()


def test_a_family_without_a_place_for_the_token_says_so_in_one_line():
    cfg = tiny_config("reg.enabled=true", "encoders=[{name: tiny}]", "model.family=dit_dh", "model.arch=DiTDH-T/2",
                      "model.head_width=32", "model.head_heads=2", "model.head_depth=1")  # fmt: skip
    with pytest.raises(ConfigError, match="reg puts a stream token in front of the image; model.family=dit_dh has no "
                       "place for one \\(ddt, jit, lightningdit, sit have\\)"):  # fmt: skip
        resolve_config(cfg, build_dataset(cfg.data, 4))
    learnable = tiny_config("reg.enabled=true", "reg.source=learnable", *FAMILIES["ddt"])
    with pytest.raises(ConfigError, match="reg puts a learned token .* \\(lightningdit, sit have\\)"):
        resolve_config(learnable, build_dataset(learnable.data, 4))
