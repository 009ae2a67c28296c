"""iMF's guidance conditioning and velocity head through the one loop: every family takes (w, t_lo, t_hi) through
its embedding only, exact resume, `repflow sample --cfg W` feeding w to one network call, bad settings as one
line."""

import dataclasses

import pytest
import torch

from repflow.cli import main
from repflow.flow.generate import sample_images
from repflow.models import build_model, resolve_arch
from repflow.models.time_embedding import GuidanceEmbedder
from repflow.runtime.lookup import load_checkpoint
from repflow.sample.load import load_run
from repflow.train.loop import Trainer

from ..conftest import TINY, tiny_config
from ..test_bad_inputs import one_line_error
from ..train.test_distributed import ARGS, assert_close, torchrun
from .test_meanflow import FAMILIES, FAMILY_IDS, MF, resumes_bit_for_bit, rows

IMF = ("method.kind=meanflow", "method.guidance_conditioning=true", "method.tangent=model",
       "method.velocity_weight=1.0", "model.velocity_head=1", "sample.sampler=mean", "sample.steps=1",
       "sample.cfg=3.0", "sample.cfg_interval=[0.2,0.8]")  # fmt: skip
JIT = ("model.family=jit", "model.arch=JiT-B/16", "model.patch_size=2", "model.bottleneck=8", "model.context_start=1")


@pytest.mark.parametrize("cfg", FAMILIES, ids=FAMILY_IDS)
def test_every_family_takes_the_guidance_through_its_embedding_only(cfg):
    base = dataclasses.replace(cfg, num_classes=3, input_size=8, in_channels=3, interval_input=True)
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(base, guidance_input=True))
    (embedder,) = [m for m in net.modules() if isinstance(m, GuidanceEmbedder)]
    built = {k: v.clone() for k, v in embedder.state_dict().items()}  # the family's initialisation of it
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    embedder.load_state_dict(built)  # the rest random, so that nothing else hides a difference
    plain = build_model(resolve_arch(base))
    loaded = plain.load_state_dict(net.state_dict(), strict=False)  # the same weights, less the guidance's
    assert not loaded.missing_keys and all("t_embedder.guidance." in k for k in loaded.unexpected_keys)
    x, t, y, h = (
        {"x": torch.randn(2, 3, 8, 8)},
        torch.tensor([0.3, 0.9]),
        torch.tensor([0, 2]),
        torch.tensor([0.2, 0.5]),
    )
    g = torch.tensor([[4.0, 0.2, 0.7], [1.5, 0.4, 0.6]])
    at = lambda guidance: net(x, t, y, h=h, guidance=guidance).pred["x"]  # noqa: E731
    assert torch.equal(at(g), plain(x, t, y, h=h).pred["x"])  # as built: the unconditioned network, exactly
    with torch.no_grad():
        for p in embedder.parameters():
            p.normal_(0, 0.1)
    assert not torch.allclose(at(g), at(torch.tensor([[1.0, 0.0, 1.0]] * 2)))  # trained: w changes the output
    assert torch.equal(net(x, t, y, h=h).pred["x"], at(torch.tensor([[1.0, 0.0, 1.0]] * 2)))  # none: w = 1 on [0, 1]
    with pytest.raises(ValueError, match="takes no guidance input"):
        plain(x, t, y, h=h, guidance=g)


def test_imf_resumes_bit_for_bit_and_samples_any_w_in_one_call(tmp_path, capsys):
    straight = resumes_bit_for_bit(tiny_config(*IMF, "train.steps=4", "train.ckpt_every=2"), tmp_path)
    assert straight.cfg.model.guidance_input and "velocity_out.weight" in straight.model.state_dict()
    last = rows(tmp_path / "a")[-1]
    assert last["loss"] == pytest.approx(last["meanflow_x"] + last["meanflow_x_v"], rel=1e-5)
    # sampling: w and the interval go into the network, one call per jump (no conditional/null pair)
    loaded = load_run(str(tmp_path / "a"))
    net, den = loaded.denoiser.network, loaded.denoiser
    assert den.guidance == (3.0, 0.2, 0.8) and den.guidance_scales(loaded.cfg.sample) == {"x": 1.0}
    state, y = {"x": torch.randn(2, 3, 8, 8)}, torch.tensor([0, 1])
    for w in (1.0, 4.0):
        opts = dataclasses.replace(loaded.cfg.sample, cfg=w, cfg_interval=(0.3, 0.6))
        got = den.for_options(opts).average_velocity(state, 1.0, 0.0, y)["x"]
        with torch.no_grad():
            want = net(state, torch.ones(2), y, h=torch.ones(2), guidance=torch.tensor([[w, 0.3, 0.6]] * 2)).pred["x"]
        assert torch.equal(got, want)
        images, nfe = sample_images(den, opts, range(2))
        assert nfe == 1 and images.shape == (2, 3, 8, 8)
    assert main(["sample", str(tmp_path / "a"), "--num-samples", "2", "--cfg", "5", "--cfg-interval", "0.4,0.65"]) == 0
    assert "(mean, 1 steps, NFE 1, cfg 5.0)" in capsys.readouterr().out
    one_line_error(capsys, ["sample", str(tmp_path / "a"), "--num-samples", "2", "--cfg", "0.5"],
                   "--cfg 0.5: this network was trained on guidance scales w >= 1")  # fmt: skip


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (("method.guidance_max=0.5",), "'method.guidance_max' must be >= 1"),
        (
            ("method.guidance_start_range=[-0.1,0.5]",),
            "'method.guidance_start_range' has a value that must lie in [0, 1]",
        ),
        (("method.guidance_end_range=[0.5,1.2]",), "'method.guidance_end_range' has a value that must lie in [0, 1]"),
        (("method.guidance_end_range=[0.9,0.6]",), "needs lo <= hi"),
        (("method.kappa=0.5",), "draws w per sample: it replaces method.omega=1, method.kappa=0.5"),
        (("sample.cfg=0.5",), "sample.cfg=0.5: a guidance-conditioned run was trained on w >= 1"),
        (("model.num_classes=0",), "guidance_conditioning learns classifier-free guidance"),
        (("method.velocity_weight=0",), "model.velocity_head=1 is trained by the velocity loss"),
        (("model.family=ddt", "model.arch=DDT-T/2", "model.encoder_depth=1"), "model.family=ddt has no velocity head"),
        (JIT, "model.velocity_head=1 must leave the blocks up to the in-context tokens' (block 2 of 2) shared"),
    ],
)
def test_bad_imf_settings_are_one_line(capsys, tmp_path, overrides, needle):
    argv = ["train", "demo-fashion-sit", *TINY, *IMF, *overrides, "--out", str(tmp_path / "r")]
    one_line_error(capsys, argv, needle)


def test_a_velocity_head_on_a_flow_matching_run_is_one_line(capsys, tmp_path):
    flow = ["train", "demo-fashion-sit", *TINY, "model.velocity_head=1", "--out", str(tmp_path / "f")]
    one_line_error(capsys, flow, "method.kind=flow would leave it untrained")


@pytest.mark.parametrize("cfg", [c for c in FAMILIES if c.family in ("sit", "jit", "lightningdit")],
                         ids=["sit", "jit", "lightningdit"])  # fmt: skip
def test_a_velocity_head_holding_the_last_blocks_weights_predicts_what_the_network_predicts(cfg):
    """The head branches off after block depth - k with the same condition (and RoPE, in-context tokens): with a
    copy of the last k blocks and of the output layer it gives the network's own prediction, and adding it
    changes nothing the network predicts."""
    base = dataclasses.replace(cfg, depth=4, num_classes=3, input_size=8, in_channels=3, interval_input=True,
                               guidance_input=True)  # fmt: skip
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(base, velocity_head=2))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    plain = build_model(resolve_arch(base))
    loaded = plain.load_state_dict(net.state_dict(), strict=False)
    assert not loaded.missing_keys and all(k.startswith("velocity_") for k in loaded.unexpected_keys)
    x, t, y = {"x": torch.randn(2, 3, 8, 8)}, torch.tensor([0.3, 0.9]), torch.tensor([0, 2])
    kw = {"h": torch.tensor([0.2, 0.5]), "guidance": torch.tensor([[4.0, 0.2, 0.7], [1.5, 0.4, 0.6]])}
    out = net(x, t, y, **kw)
    assert torch.equal(out.pred["x"], plain(x, t, y, **kw).pred["x"]) and not plain(x, t, y, **kw).velocity
    assert not torch.allclose(out.velocity["x"], out.pred["x"])
    renames = {
        "blocks.2.": "velocity_blocks.0.",
        "blocks.3.": "velocity_blocks.1.",
        "final_norm.": "velocity_norm.",
        "norm_final.": "velocity_norm.",
        "final_modulation.": "velocity_modulation.",
        "out_x.": "velocity_out.",
    }
    state = net.state_dict()
    for key, value in plain.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = value
    net.load_state_dict(state)
    out = net(x, t, y, **kw)
    assert torch.allclose(out.velocity["x"], out.pred["x"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", [(), (*JIT, "model.context_start=0")], ids=["sit", "jit"])
def test_a_velocity_head_on_a_flow_network_without_guidance_trains(tmp_path, family):
    """The velocity head without the guidance conditioning (MeanFlow's fixed omega, kappa): its loss is the
    head's, and the guidance call reads the head too."""
    trainer = Trainer(tiny_config(*MF, *family, "method.velocity_weight=0.5", "model.velocity_head=1",
                                  "train.steps=2"), tmp_path)  # fmt: skip
    assert "a velocity head of 1 blocks (iMF)" in trainer.method.describe()
    trainer.fit()
    last = rows(tmp_path)[-1]
    assert last["loss"] == pytest.approx(last["meanflow_x"] + 0.5 * last["meanflow_x_v"], rel=1e-5)


@pytest.mark.slow
def test_imf_with_two_processes_matches_one(tmp_path):
    args = (*ARGS, *IMF)  # w and its interval drawn for the global batch, each process its slice
    single = Trainer(tiny_config(*args), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "ddp", 4, *args)
    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.state()["world_size"] == 2
    assert_close(ddp.weights("model"), single.model.state_dict())
    assert_close(ddp.weights("ema-0.9"), single.ema.state_dict(0.9))
