"""Evaluation during training (train.eval_every): logged where the losses are, equal to a later `repflow eval`
of the checkpoint, invisible to training (bit-identical weights), resumed when interrupted."""

import json

import pytest
import torch

from repflow.cli import main
from repflow.config import ConfigError
from repflow.eval import online
from repflow.train.logging import loss_panels
from repflow.train.loop import Trainer

from ..conftest import tiny_config
from ..train.test_resume import DROPOUT_JIT, weights

EVAL = ["train.eval_every=2", "train.eval.num_samples=6", "train.eval.ref_count=12"]
# JiT's dropout draws from the global RNG during training: an evaluation that moved it would change the weights
JIT = DROPOUT_JIT


def trained(run_dir, *overrides, stop_at=None) -> Trainer:
    cfg = tiny_config(*overrides)
    trainer = Trainer(cfg, run_dir, hooks=online.training_hooks(cfg))
    trainer.fit(stop_at=stop_at)
    return trainer


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_online_value_is_logged_and_equals_a_later_repflow_eval(tmp_path, fake_inception_env, capsys):
    run = tmp_path / "run"
    trained(run, *EVAL, "train.eval.cfg=2.0", "train.eval.steps=3", "train.eval.cfg_interval=[0,0.7]")
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "evaluation every 2 steps and at the last: fid of 6 samples (euler 3 steps, cfg 2 on [0, 0.7]" in out
    assert "step 2: eval took" in out
    logged = {r["step"]: r for r in rows(run)}
    assert set(logged) == {1, 2, 3, 4}  # one row per step: the evaluation joined its step's row
    assert "eval/fid" in logged[2] and "eval/fid" in logged[4] and "loss" in logged[2] and "eval/fid" not in logged[3]
    assert "eval/fid" in loss_panels(list(logged.values()))  # a panel of loss.png
    folder = run / "eval" / "online" / "ckpt-00000002"
    assert not list(folder.glob("*.png"))  # measured, then dropped (train.eval.keep_samples=false)
    assert json.loads((folder / "eval.json").read_text())["online"]["step"] == 2
    argv = ["eval", str(run / "checkpoints" / "ckpt-00000002"), "--num-samples", "6", "--metrics", "fid",
            "--ref-count", "12", "--cfg", "2", "--sampling-steps", "3", "--cfg-interval", "0,0.7",
            "--samples-dir", str(tmp_path / "later"), "--json", str(tmp_path / "later.json")]  # fmt: skip
    assert main(argv) == 0
    later = json.loads((tmp_path / "later.json").read_text())["metrics"]["fid"]
    assert later == logged[2]["eval/fid"]  # the same images and the same measurement, to the last bit
    assert main([*argv[:-4], "--seed", "1", "--samples-dir", str(tmp_path / "other")]) == 0  # other samples
    assert json.loads((tmp_path / "other" / "eval.json").read_text())["metrics"]["fid"] != later


def test_online_kid_and_dinov2_space_equal_a_later_repflow_eval(tmp_path, fake_inception_env, dinov2_dir):
    run = tmp_path / "run"
    trained(run, *EVAL, "train.steps=2", "train.eval.metrics=[kid,fd_dinov2@28]", "train.eval.kid_subsets=5",
            "train.eval.kid_subset_size=4", f"train.eval.encoder_paths=[dinov2={dinov2_dir}]")  # fmt: skip
    logged = {k.split("/", 1)[1]: v for k, v in rows(run)[-1].items() if k.startswith("eval/")}
    assert set(logged) == {"kid", "kid_std", "fd_dinov2@28"} and logged["fd_dinov2@28"] > 0
    record = json.loads((run / "eval" / "online" / "ckpt-00000002" / "eval.json").read_text())
    assert set(record["extractors"]) == {"inception", "dinov2-vitl14@28"} and record["kid_subsets"] == 5
    assert set(record["reference"]["cache"]) == {"inception", "dinov2-vitl14@28"}
    argv = ["eval", str(run / "checkpoints" / "ckpt-00000002"), "--num-samples", "6", "--ref-count", "12",
            "--metrics", "kid,fd_dinov2@28", "--encoder-path", f"dinov2={dinov2_dir}", "--kid-subsets", "5",
            "--kid-subset-size", "4", "--samples-dir", str(tmp_path / "l"),
            "--json", str(tmp_path / "l.json")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "l.json").read_text())["metrics"] == logged  # to the last bit


def test_online_evaluation_leaves_training_bit_identical(tmp_path, fake_inception_env):
    plain = trained(tmp_path / "plain", *JIT)
    evaluated = trained(tmp_path / "evaluated", *JIT, *EVAL)
    assert any("eval/fid" in r for r in rows(tmp_path / "evaluated"))
    a, b = weights(plain), weights(evaluated)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rng = [torch.load(p / "checkpoints/ckpt-00000004/state.pt", weights_only=True)["rng"]["torch"]
           for p in (tmp_path / "plain", tmp_path / "evaluated")]  # fmt: skip
    assert torch.equal(rng[0], rng[1])  # the global RNG a resumed run restores is the same too


def test_resumed_across_an_interrupted_evaluation_equals_an_uninterrupted_run(tmp_path, fake_inception_env,
                                                                              monkeypatch):  # fmt: skip
    straight = trained(tmp_path / "a", *JIT, *EVAL, "train.ckpt_every=3")
    real = online.measure_samples

    def killed(samples, *args, **kwargs):  # the job dies after sampling, while measuring
        raise KeyboardInterrupt

    monkeypatch.setattr(online, "measure_samples", killed)
    with pytest.raises(KeyboardInterrupt):
        trained(tmp_path / "b", *JIT, *EVAL, "train.ckpt_every=3")
    folder = tmp_path / "b" / "eval" / "online" / "ckpt-00000002"
    made = sorted(p.name for p in folder.glob("*.png"))
    assert len(made) == 6  # the samples written before the interruption are there
    monkeypatch.setattr(online, "measure_samples", real)
    generated = []
    real_sample_run = online.sample_run
    monkeypatch.setattr(online, "sample_run", lambda *a, **k: generated.append(r := real_sample_run(*a, **k)) or r)
    resumed = trained(tmp_path / "b", *JIT, *EVAL, "train.ckpt_every=3")
    assert generated[0].made.count == 0  # the step-2 evaluation finished from the images already there
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    speedless = [[{k: v for k, v in r.items() if k != "img_per_s"} for r in rows(tmp_path / n)] for n in "ab"]
    assert speedless[0] == speedless[1]  # the same losses and evaluations, each step once


def test_a_finished_evaluation_is_not_redone_on_resume(tmp_path, fake_inception_env, capsys):
    trained(tmp_path, *EVAL, stop_at=2)
    capsys.readouterr()
    trained(tmp_path, *EVAL)
    out = capsys.readouterr().out
    assert "step 2: evaluating" not in out and "step 4: evaluating" in out
    assert [r["step"] for r in rows(tmp_path) if "eval/fid" in r] == [2, 4]


@pytest.mark.parametrize("overrides,message", [
    (["method.kind=simclr"], "does not generate images"),
    (["train.eval.metrics=[fid,fdd]"], "config key 'train.eval.metrics': unknown metric 'fdd'; choose from fid, sfid"),
    (["train.eval.reference=/nowhere/ref.npz"], "does not exist"),
    (["train.eval.metrics=[fid,fd_dinoo]"], "config key 'train.eval.metrics': unknown feature space 'dinoo'"),
    (["train.eval.metrics=[fd_dinov2]", "train.eval.encoder_paths=[dinoo=/w.pth]"],
     "config key 'train.eval.encoder_paths': unknown feature space 'dinoo'"),
])  # fmt: skip
def test_what_cannot_be_evaluated_stops_at_start_up(tmp_path, fake_inception_env, overrides, message):
    cfg = tiny_config(*EVAL, *overrides)
    with pytest.raises((ConfigError, FileNotFoundError)) as err:
        Trainer(cfg, tmp_path, hooks=online.training_hooks(cfg))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("train.eval.cfg_interval=[0.7,0.2]", "train.eval.cfg_interval' needs [] or [lo, hi] with lo <= hi"),
    ("train.eval.ema=0.5", "train.eval.ema' is 0.5, which is not one of train.ema_decays"),
    ("train.eval.num_samples=0", "train.eval.num_samples' must be positive"),
    ("train.eval.sampler=rk4", "train.eval.sampler' must be \"\" (sample.sampler) or one of euler, heun"),
    ("train.eval.metrics=[]", "train.eval.metrics' names no metric"),
    ("train.eval.encoder_paths=[dinov2]", "train.eval.encoder_paths' needs NAME=PATH items"),
    ("train.eval.kid_subset_size=1", "train.eval.kid_subset_size' must be >= 2"),
])  # fmt: skip
def test_eval_settings_are_checked_in_the_schema(override, message):
    with pytest.raises(ConfigError) as err:
        tiny_config(*EVAL, override)
    assert message in str(err.value)


def test_a_trainer_without_the_hook_says_it_does_not_evaluate(tmp_path, capsys):
    Trainer(tiny_config(*EVAL, "train.steps=0"), tmp_path)
    assert "train.eval_every is set but this Trainer has no evaluation hook" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_share_the_samples_and_log_what_one_process_measures(tmp_path, fake_inception_env):
    from ..train.test_distributed import torchrun

    torchrun(tmp_path / "ddp", 4, *EVAL)  # each rank samples its indices; rank 0 measures and logs
    logged = {r["step"]: r for r in rows(tmp_path / "ddp")}
    ckpt = tmp_path / "ddp" / "checkpoints" / "ckpt-00000004"
    argv = ["eval", str(ckpt), "--num-samples", "6", "--metrics", "fid", "--ref-count", "12", "--samples-dir",
            str(tmp_path / "one"), "--json", str(tmp_path / "one.json")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "one.json").read_text())["metrics"]["fid"] == logged[4]["eval/fid"]
