"""MeanFlow through the one loop: exact resume, REPA/REG composed, every family's second time input, sampling in
1 and 2 jumps from the command line, and its bad inputs as one line."""

import dataclasses
import json
import math

import pytest
import torch

from repflow.cli import main
from repflow.flow.generate import sample_images
from repflow.models import build_model, resolve_arch
from repflow.models.ddt import DDTConfig
from repflow.models.dit import SiTConfig
from repflow.models.dit_dh import DiTDHConfig
from repflow.models.jit import JiTConfig
from repflow.models.lightningdit import LightningDiTConfig
from repflow.runtime.lookup import load_checkpoint
from repflow.sample.load import load_run
from repflow.train.loop import Trainer

from ..conftest import TINY, tiny_config
from ..test_bad_inputs import one_line_error
from ..train.test_distributed import ARGS, assert_close, torchrun
from ..train.test_representation_training import encoder_file, reg_repa  # noqa: F401  (a fixture)
from ..train.test_resume import straight_and_resumed, weights

MF = ("method.kind=meanflow", "method.kappa=0.5", "method.omega=0.8", "sample.sampler=mean", "sample.steps=1")


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def resumes_bit_for_bit(cfg, root) -> Trainer:
    """The run of ``cfg`` straight (``root/a``) and stopped then resumed (``root/b``): equal weights and logged
    losses; returns the straight one."""
    straight, resumed = straight_and_resumed(cfg, root)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in rows(root / "a")] == [r["loss"] for r in rows(root / "b")]
    return straight


def test_meanflow_resumes_bit_for_bit_and_samples_in_one_and_two_jumps(tmp_path, capsys):
    straight = resumes_bit_for_bit(tiny_config(*MF, "train.steps=4", "train.ckpt_every=2"), tmp_path)
    assert straight.cfg.model.interval_input and "t_embedder.interval.mlp.0.weight" in straight.model.state_dict()
    assert {"meanflow_x", "meanflow_x_mse"} <= rows(tmp_path / "a")[-1].keys()
    for steps in ("1", "2"):
        assert main(["sample", str(tmp_path / "a"), "--num-samples", "4", "--steps", steps]) == 0
        captured = capsys.readouterr()
        assert f"(mean, {steps} steps, NFE {steps}," in captured.out and "warning: --steps 1" not in captured.err


def test_meanflow_composes_with_repa_and_reg(tmp_path, encoder_file):  # noqa: F811
    trainer = Trainer(reg_repa(encoder_file, *MF), tmp_path)
    trainer.fit()
    last = rows(tmp_path)[-1]
    assert {"meanflow_x", "meanflow_cls", "repa"} <= last.keys()  # REG's class token: its own average velocity
    assert last["loss"] == pytest.approx(last["meanflow_x"] + 0.03 * last["meanflow_cls"] + 0.5 * last["repa"],
                                         rel=1e-5)  # fmt: skip
    loaded = load_run(str(tmp_path))
    images, nfe = sample_images(loaded.denoiser, loaded.cfg.sample, range(4))
    assert images.shape == (4, 3, 8, 8) and nfe == 1


def test_imf_options_train_through_the_loop_and_sample_in_one_jump(tmp_path):
    cfg = tiny_config(*MF, "method.tangent=model", "method.velocity_weight=1.0", "train.steps=2")
    trainer = Trainer(cfg, tmp_path)
    assert "tangent u(z, t, t | c) (iMF); velocity loss x1 (iMF)" in trainer.method.describe()
    trainer.fit()
    last = rows(tmp_path)[-1]
    assert last["loss"] == pytest.approx(last["meanflow_x"] + last["meanflow_x_v"], rel=1e-5)
    loaded = load_run(str(tmp_path))
    images, nfe = sample_images(loaded.denoiser, loaded.cfg.sample, range(2))
    assert nfe == 1 and torch.isfinite(images).all()


def test_pmf_x_prediction_on_a_jit_network_trains_and_samples_in_one_jump(tmp_path):
    jit = ("model.family=jit", "model.arch=JiT-B/16", "model.patch_size=2", "model.bottleneck=8",
           "model.context_start=1", "flow.prediction=x")  # fmt: skip
    trainer = Trainer(tiny_config(*MF, *jit, "method.tangent=model", "train.steps=2"), tmp_path)
    assert "x-prediction, u = (z - x) / t (pMF)" in trainer.method.describe()
    trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in rows(tmp_path))
    loaded = load_run(str(tmp_path))
    assert loaded.denoiser.prediction == "x"
    images, nfe = sample_images(loaded.denoiser, loaded.cfg.sample, range(2))
    assert nfe == 1 and torch.isfinite(images).all()


FAMILIES = [
    SiTConfig(arch="SiT-T/2", depth=2, hidden_size=32, num_heads=2),
    JiTConfig(arch="JiT-B/16", depth=2, hidden_size=32, num_heads=2, patch_size=2, bottleneck=8, context_start=1),
    *(
        DiTDHConfig(
            arch="DiTDH-T/2",
            depth=2,
            hidden_size=32,
            num_heads=2,
            head_width=32,
            head_heads=2,
            head_depth=1,
            backbone=b,
        )
        for b in ("lightning", "in_context", "sit")
    ),  # fmt: skip
    LightningDiTConfig(arch="LightningDiT-T/2", depth=2, hidden_size=32, num_heads=2),
    DDTConfig(arch="DDT-T/2", depth=2, encoder_depth=1, hidden_size=32, num_heads=2),
]
FAMILY_IDS = ["sit", "jit", "dit_dh-lightning", "dit_dh-in_context", "dit_dh-sit", "lightningdit", "ddt"]


@pytest.mark.parametrize("cfg", FAMILIES, ids=FAMILY_IDS)
def test_every_family_takes_the_interval_as_a_second_time_input(cfg):
    base = dataclasses.replace(cfg, num_classes=3, input_size=8, in_channels=3)
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(base, interval_input=True))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    x, t, y = {"x": torch.randn(2, 3, 8, 8)}, torch.tensor([0.3, 0.9]), torch.tensor([0, 2])
    at = lambda h: net(x, t, y, h=h).pred["x"]  # noqa: E731
    assert torch.equal(net(x, t, y).pred["x"], at(torch.zeros(2)))  # no interval: the instantaneous velocity
    assert not torch.allclose(at(torch.zeros(2)), at(torch.tensor([0.2, 0.5])))
    plain = build_model(resolve_arch(base))
    assert not any("interval" in k for k in plain.state_dict())  # a flow network's weights are unchanged
    with pytest.raises(ValueError, match="no second time input"):
        plain(x, t, y, h=torch.zeros(2))


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", "demo-fashion-sit", *TINY, "train.steps=1", "--out", str(out)]) == 0
    return out


def test_one_step_on_a_flow_run_warns_and_still_runs_the_mean_sampler_is_refused(flow_run, capsys):
    assert main(["sample", str(flow_run), "--num-samples", "2", "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: --steps 1 on a flow model" in err and "method.kind=meanflow" in err
    one_line_error(capsys, ["sample", str(flow_run), "--num-samples", "2", "--sampler", "mean"],
                   "--sampler mean jumps with average velocities: it needs a MeanFlow run")  # fmt: skip


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (("model.num_classes=0",), "fold classifier-free guidance into the target: that needs a class-conditional"),
        (("flow.prediction=eps",), "predicts the average velocity (flow.prediction=v) or pMF's x"),
        (("flow.prediction=x", "flow.path=cosine"), "on the linear path (flow.prediction=x)"),
        (("flow.loss_space=x",), "with its loss in velocity space (flow.loss_space=v)"),
        (("method.kappa=1.0",), "'method.kappa' must lie in [0, 1)"),
        (("method.guidance_interval=[0.8,0.2]",), "needs lo <= hi"),
        (("method.derivative=fd",), "method.derivative"),
        (("train.grad_checkpointing=true",), "does not run under the JVP"),
    ],
)
def test_bad_meanflow_settings_are_one_line(capsys, tmp_path, overrides, needle):
    argv = ["train", "demo-fashion-sit", *TINY, *MF, *overrides, "--out", str(tmp_path / "r")]
    one_line_error(capsys, argv, needle)


def test_init_from_a_flow_run_loads_its_ema_weights_and_lists_the_new_ones(flow_run, tmp_path, capsys):
    argv = ["train", "demo-fashion-sit", *TINY, *MF, "train.steps=1", "--init-from", str(flow_run), "--out",
            str(tmp_path / "mf")]  # fmt: skip
    assert main(argv) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "initialised from" in s)
    new = line.split("new: ")[1].split(", ")
    assert sorted(new) == sorted(f"model.t_embedder.interval.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias"))
    source = load_checkpoint(flow_run).weights("ema-0.9")  # the flow run's sampled weights
    trainer = Trainer(tiny_config(*MF, f"train.init_from={flow_run}"), tmp_path / "mf2")
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items()) and len(source) == len(own) - 4
    assert torch.equal(trainer.ema.state_dict(0.9)["out_x.weight"], source["out_x.weight"])  # EMA starts there too
    resumed = Trainer(tiny_config(*MF, "train.init_from=/nonexistent"), tmp_path / "mf")  # a resume ignores it
    assert resumed.step == 1


@pytest.mark.slow
def test_meanflow_with_two_processes_matches_one(tmp_path):
    args = (*ARGS, *MF)  # the JVP and the guidance call inside DDP; draws sliced from the global batch
    single = Trainer(tiny_config(*args), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "ddp", 4, *args)
    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.state()["world_size"] == 2
    assert_close(ddp.weights("model"), single.model.state_dict())
    assert_close(ddp.weights("ema-0.9"), single.ema.state_dict(0.9))
