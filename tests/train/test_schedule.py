"""Learning-rate schedules: the defaults give repflow 0.2's factor; warmup -> hold -> decay -> final gives the
official RAE stage 1, RAE stage 2 and RAEv2 schedules at every boundary; the loop applies the factor per step."""

import math

import pytest

from repflow.config import ConfigError, TrainConfig
from repflow.train.loop import Trainer
from repflow.train.optim import lr_factor

from ..conftest import tiny_config


def factor_of_repflow_0_2(cfg: TrainConfig):
    """``lr_factor`` before hold_steps / decay_end existed, as it was."""
    final = cfg.lr_final / cfg.lr if cfg.lr > 0 else 0.0
    warmup = max(cfg.warmup_steps, 0)
    decay_steps = max(cfg.steps - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min((step - warmup) / decay_steps, 1.0)
        if cfg.schedule == "linear":
            return 1.0 + (final - 1.0) * progress
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup,lr,lr_final", [(0, 1e-4, 0.0), (7, 2e-4, 2e-5), (50, 1e-4, 1e-6), (3, 0.0, 0.0)])
def test_the_defaults_give_the_factor_of_repflow_0_2(schedule, warmup, lr, lr_final):
    cfg = TrainConfig(steps=40, schedule=schedule, warmup_steps=warmup, lr=lr, lr_final=lr_final)
    new, old = lr_factor(cfg), factor_of_repflow_0_2(cfg)
    assert [new(s) for s in range(cfg.steps)] == [old(s) for s in range(cfg.steps)]  # exactly, every trained step


def official(step: int, warmup: int, decay_end: int, final_ratio: float, from_zero: bool, kind: str) -> float:
    """``lr_lambda`` of ``build_scheduler`` in RAE's and RAEv2's src/utils/optim_utils.py (the same in both), at
    the LambdaLR's count of steps taken: the lr of 0-based step ``step``."""
    decay_end = max(decay_end, warmup)
    total_decay_steps = max(decay_end - warmup, 1)
    if step < warmup:
        return (step + 1) / warmup if from_zero else 1.0
    if step >= decay_end:
        return final_ratio
    progress = (step - warmup) / total_decay_steps
    if kind == "linear":
        return 1.0 - (1.0 - final_ratio) * progress
    return final_ratio + (1.0 - final_ratio) * (0.5 * (1.0 + math.cos(math.pi * progress)))


EPOCH = 13  # steps per epoch: small and odd, so that epoch boundaries are not round numbers
# name: (official: warmup_epochs, decay_end_epoch, warmup_from_zero, type, epochs), repflow's train section
SCHEDULES = {
    "RAE stage 2 (DiT^DH)": ((40, 800, False, "linear", 800),
                             dict(schedule="linear", hold_steps=40 * EPOCH, decay_end=800 * EPOCH, steps=800 * EPOCH)),
    "RAEv2 stage 2": ((25, 50, False, "linear", 80),
                      dict(schedule="linear", hold_steps=25 * EPOCH, decay_end=50 * EPOCH, steps=80 * EPOCH)),
    "RAE stage 1 (decoder)": ((1, 16, True, "cosine", 16),
                              dict(schedule="cosine", warmup_steps=EPOCH, decay_end=16 * EPOCH, steps=16 * EPOCH)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_official_schedules_at_every_boundary(name):
    (warmup_epochs, end_epoch, from_zero, kind, epochs), ours = SCHEDULES[name]
    cfg = TrainConfig(lr=2e-4, lr_final=2e-5, **ours)
    factor = lr_factor(cfg)
    w, e, n = warmup_epochs * EPOCH, end_epoch * EPOCH, epochs * EPOCH
    boundaries = sorted({0, 1, w - 1, w, w + 1, (w + e) // 2, e - 1, e, e + 1, n - 1} & set(range(n)))
    for step in boundaries:
        assert factor(step) == official(step, w, e, 2e-5 / 2e-4, from_zero, kind), (name, step)
    # and by hand: the ramp or hold, the middle of the decay, lr_final from decay_end on
    assert factor(w - 1) == factor(w) == 1.0 and factor(e) == factor(max(e, n - 1)) == 2e-5 / 2e-4
    assert factor(0) == (1 / EPOCH if from_zero else 1.0)
    assert factor(w + (e - w) / 2) == pytest.approx(0.55, abs=1e-15)  # 1 - 0.9 / 2; cosine: 0.1 + 0.9 (1 + 0) / 2
    assert factor(w + (e - w) / 4) == pytest.approx(0.775 if kind == "linear" else 0.1 + 0.45 * (1 + 0.5**0.5))


def test_the_loop_uses_the_factor_of_the_step_it_takes(tmp_path):
    schedule = ("train.schedule=linear", "train.warmup_steps=2", "train.hold_steps=1", "train.decay_end=4")
    cfg = tiny_config("train.steps=6", "train.ckpt_every=6", "train.sample_num=0", "train.lr_final=1e-4", *schedule)
    trainer = Trainer(cfg, tmp_path)
    lrs = []
    for _ in range(6):
        trainer.train_step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    # warmup 1/2, 2/2; hold; decay from 1 at step 3 to 0.1 at step 4; then 0.1
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4], rel=1e-12)


def test_a_decay_end_before_the_hold_ends_fails_in_one_line():
    with pytest.raises(ConfigError) as err:
        tiny_config("train.warmup_steps=10", "train.hold_steps=20", "train.decay_end=25")
    message = str(err.value)
    assert message == ("config key 'train.decay_end' must be 0 (the last step) or >= train.warmup_steps + "
                       "train.hold_steps = 30, got 25")  # fmt: skip
    for bad in ("train.hold_steps=-1", "train.decay_end=-5"):
        with pytest.raises(ConfigError, match="must be >= 0"):
            tiny_config(bad)
