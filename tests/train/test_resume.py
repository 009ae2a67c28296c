"""Exact resume, gradient accumulation, atomic checkpoints and the NaN guard."""

import json
import textwrap

import pytest
import torch

from repflow.runtime.checkpoint import list_checkpoints
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import NonFiniteLossError, Trainer

from ..conftest import sigkill_when_flagged, tiny_config


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    for d in trainer.ema.decays:
        out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict(d).items()})
    return out


def straight_and_resumed(cfg, root, stop_at: int = 2) -> tuple[Trainer, Trainer]:
    """A run trained straight through (``root/a``), and one stopped after ``stop_at`` and resumed (``root/b``)."""
    straight = Trainer(cfg, root / "a")
    straight.fit()
    Trainer(cfg, root / "b").fit(stop_at=stop_at)
    resumed = Trainer(cfg, root / "b")
    resumed.fit()
    return straight, resumed


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    cfg = tiny_config("train.steps=6", "train.ckpt_every=3", "data.hflip=true", "train.grad_accum=2")
    straight = Trainer(cfg, tmp_path / "a")
    straight.fit()
    first = Trainer(cfg, tmp_path / "b")
    first.fit(stop_at=3)  # "killed" after the step-3 checkpoint
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # what it logged after that checkpoint, torn by the kill
        f.write('{"step": 4, "loss": 9.0}\n{"step": 5, "lo')
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.step == 3
    resumed.fit()
    logged = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]  # fmt: skip
    assert [r["step"] for r in logged[1]] == [r["step"] for r in logged[0]]  # each step once, the stale ones gone
    assert [r["loss"] for r in logged[1]] == [r["loss"] for r in logged[0]]
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    one = Trainer(tiny_config("train.steps=2", "train.grad_clip=0"), tmp_path / "one")
    one.fit()
    acc = Trainer(tiny_config("train.steps=2", "train.grad_clip=0", "train.grad_accum=4"), tmp_path / "acc")
    acc.fit()
    for (k, a), b in zip(one.model.state_dict().items(), acc.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), k


def test_checkpoint_contents_and_safe_loading(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path)
    trainer.fit()
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["ckpt-00000002", "ckpt-00000004"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.path == ckpts[-1]
    assert set(ckpt.weight_names()) == {"model", "ema-0.9"}
    assert ckpt.config.model.num_classes == 4 and ckpt.config.model.input_size == 8  # resolved config
    state = torch.load(ckpt.path / "state.pt", weights_only=True)  # no pickled code inside
    assert state["step"] == 4 and "optimizer" in state and "generator" in state["rng"]
    assert (tmp_path / "samples" / "step-00000004.png").is_file()
    assert (tmp_path / "loss.png").is_file()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import repflow.runtime.checkpoint as ck
    from repflow.train.loop import Trainer
    from tests.conftest import tiny_config

    trainer = Trainer(tiny_config("train.steps=4", "train.ckpt_every=2"), sys.argv[1])
    real = ck.save_file
    def slow_save(tensors, path, *a, **k):
        real(tensors, path, *a, **k)
        if trainer.step == 4:  # second checkpoint: signal the parent, then hang mid-write
            open(sys.argv[2], "w").close()
            time.sleep(60)
    ck.save_file = slow_save
    trainer.fit()
    """
)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    run, flag = tmp_path / "run", tmp_path / "writing"
    sigkill_when_flagged(KILL_SCRIPT, [run, flag], flag, "the checkpoint write")
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002"]
    assert any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # the torn write
    resumed = Trainer(tiny_config("train.steps=4", "train.ckpt_every=2"), run)
    assert resumed.step == 2
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # cleaned up
    resumed.fit()
    assert resumed.step == 4


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    trainer = Trainer(tiny_config("train.steps=6", "train.ckpt_every=2", "train.log_every=1"), tmp_path)
    trainer.fit(stop_at=2)
    with torch.no_grad():
        trainer.model.out_x.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 3.*ckpt-00000002"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002"]


def test_resume_refuses_a_different_architecture(tmp_path):
    Trainer(tiny_config(), tmp_path).fit(stop_at=2)
    from repflow.runtime.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="model.hidden_size"):
        Trainer(tiny_config("model.hidden_size=64"), tmp_path)


# a tiny JiT whose dropout draws from torch's global RNG during training
DROPOUT_JIT = ["model.arch=JiT-T/2", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.bottleneck=8",
               "model.context_tokens=2", "model.context_start=1", "model.dropout=0.5", "flow.prediction=x"]  # fmt: skip


def test_a_model_drawing_from_the_global_rng_resumes_bit_for_bit(tmp_path):
    """JiT's dropout draws from torch's global RNG, which checkpoints save; nothing may draw from it between the
    restore and the first step (the DataLoader iterator used to, for its workers' seed)."""
    straight, resumed = straight_and_resumed(tiny_config(*DROPOUT_JIT), tmp_path)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
