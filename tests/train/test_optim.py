"""train.optimizer=muon: which tensors Muon takes, one Muon step against the algorithm written out in float64, the
AdamW part equal to a plain AdamW, training and bit-for-bit resume through the real loop, and bad values."""

import math

import pytest
import torch
from torch import nn

from repflow.config import Config, ConfigError, TrainConfig
from repflow.runtime.checkpoint import list_checkpoints
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import Trainer
from repflow.train.optim import MuonAdamW, build_optimizer, fused_adamw, parts

from ..conftest import tiny_config
from ..methods import toy_gan  # noqa: F401  (registers the two-phase toy method)
from .test_distributed import torchrun
from .test_resume import straight_and_resumed

CPU = torch.device("cpu")
KELLER = (3.4445, -4.7750, 2.0315)  # torch's default coefficients


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)  # 4-D kernel + bias
        self.table = nn.Embedding(5, 4)  # a label table: 2-D
        self.linear = nn.Linear(4, 6)  # 2-D weight + bias
        self.norm = nn.LayerNorm(6)
        self.tokens = nn.Parameter(torch.zeros(1, 3, 4))  # learned tokens, 3-D


def split(opt: MuonAdamW, model: nn.Module) -> list[list[list[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[[names[id(p)] for p in g["params"]] for g in part.param_groups] for part in opt.parts]


def test_muon_takes_the_2d_weights_and_adamw_the_rest():
    model = Toy()
    tables = [model.table.weight]
    cfg = TrainConfig(optimizer="muon", weight_decay=0.1)
    opt = build_optimizer(list(model.parameters()), cfg, CPU, tables)
    assert [type(p) for p in opt.parts] == [torch.optim.Muon, torch.optim.AdamW]
    assert split(opt, model) == [
        [["table.weight", "linear.weight"]],  # RAEv2's split: every 2-D tensor, the label table included
        [["tokens", "conv.weight"], ["conv.bias", "linear.bias", "norm.weight", "norm.bias"]],
    ]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]  # AdamW decays kernels, not biases
    opt = build_optimizer(list(model.parameters()), TrainConfig(optimizer="muon", muon_embeddings=False), CPU, tables)
    assert split(opt, model)[0] == [["linear.weight"]] and "table.weight" in split(opt, model)[1][0]
    only_matrices = build_optimizer([model.linear.weight], cfg, CPU)  # no AdamW part without other tensors
    assert [type(p) for p in only_matrices.parts] == [torch.optim.Muon]
    adamw = build_optimizer(list(model.parameters()), TrainConfig(weight_decay=0.1), CPU, tables)  # as before
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 2
    assert [len(g["params"]) for g in adamw.param_groups] == [4, 4]


def newton_schulz(u: torch.Tensor, coefficients: tuple[float, float, float], steps: int) -> torch.Tensor:
    """Muon's orthogonalisation in float64: X = U / |U|_F (on the wide side), then X <- a X + (b A + c A^2) X
    with A = X X^T, ``steps`` times."""
    tall = u.shape[0] > u.shape[1]
    x = u.T if tall else u
    x = x / x.norm()
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


# torch runs the iteration in bf16 (8 significant bits, rounding 2^-9 relative): 5 steps of 3 products each, with
# |b| + |c| ~ 7 amplifying, leave errors of ~1e-2 on entries up to 0.8 (at most 0.017 measured on these
# matrices). The wrong variants checked below (no Nesterov, a step less, other coefficients) move entries by 0.13+.
TOL = 0.03


@pytest.mark.parametrize("coefficients,steps", [(KELLER, 5), ((2.0, -1.5, 0.5), 3)])
def test_one_muon_step_matches_the_algorithm_written_out(coefficients, steps):
    mu, lr, wd = 0.9, 0.1, 0.3
    g = torch.Generator().manual_seed(0)
    w0, g1, g2 = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    w = nn.Parameter(w0.float())
    cfg = TrainConfig(optimizer="muon", lr=lr, weight_decay=wd, muon_momentum=mu, muon_ns_coefficients=coefficients,
                      muon_ns_steps=steps)  # fmt: skip
    opt = build_optimizer([w], cfg, CPU)
    lr_adjusted = lr * 0.2 * math.sqrt(max(6, 4))  # match_rms_adamw (RAEv2's "rms_norm")

    w.grad = g1.float()
    opt.step()
    buffer = (1 - mu) * g1  # torch's buffer is the average mu B + (1 - mu) g (Muon's sum B = mu B + g, times 1 - mu)
    assert torch.allclose(opt.parts[0].state[w]["momentum_buffer"].double(), buffer, rtol=1e-6, atol=0)
    update = (1 - mu) * g1 + mu * buffer  # Nesterov; a scalar factor does not change the orthogonalised matrix
    w1 = w0.float().double() * (1 - lr * wd) - lr_adjusted * newton_schulz(update, coefficients, steps)
    assert (w.detach().double() - w1).abs().max() < lr_adjusted * TOL

    w_before = w.detach().double().clone()
    w.grad = g2.float()
    opt.step()
    buffer = mu * buffer + (1 - mu) * g2
    assert torch.allclose(opt.parts[0].state[w]["momentum_buffer"].double(), buffer, rtol=1e-6, atol=1e-7)
    update = (1 - mu) * g2 + mu * buffer
    o = -(w.detach().double() - w_before * (1 - lr * wd)) / lr_adjusted  # what torch applied
    assert (o - newton_schulz(update, coefficients, steps)).abs().max() < TOL
    # the test can fail: the variants a mistake would give are far outside the tolerance
    assert (o - newton_schulz(buffer, coefficients, steps)).abs().max() > 3 * TOL  # without Nesterov
    assert (o - newton_schulz(update, coefficients, steps - 1)).abs().max() > 3 * TOL
    other = (3.0, -3.2, 1.2) if coefficients == KELLER else KELLER
    assert (o - newton_schulz(update, other, steps)).abs().max() > 3 * TOL


@pytest.mark.parametrize("bf16_fast", [False, True])
def test_newton_schulz_runs_in_fp32_on_a_cpu_where_bf16_is_slow(monkeypatch, bf16_fast):
    import torch.optim._muon as torch_muon

    import repflow.train.optim as optim

    monkeypatch.setattr(optim, "cpu_bf16_is_fast", lambda: bf16_fast)
    torchs_own = torch_muon._zeropower_via_newtonschulz
    lr = 0.1
    w0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    w = nn.Parameter(w0.clone())
    opt = build_optimizer([w], TrainConfig(optimizer="muon", lr=lr, weight_decay=0.0, muon_adjust_lr="original"), CPU)
    w.grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    opt.step()
    o = -(w.detach().double() - w0.double()) / (lr * math.sqrt(6 / 4))
    err = (o - newton_schulz(0.05 * w.grad.double(), KELLER, 5)).abs().max()  # Nesterov's first update: 0.05 g
    assert err > 1e-3 if bf16_fast else err < 1e-5  # torch's bf16 iteration, or the same iteration in fp32
    assert torch_muon._zeropower_via_newtonschulz is torchs_own  # torch's function is back after the step


def test_original_lr_adjustment_and_the_adamw_part_equal_to_a_plain_adamw():
    lr, mu = 0.1, 0.95
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    twin = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer="muon", lr=lr, adamw_lr=0.02, muon_momentum=mu, muon_adjust_lr="original",
                      betas=(0.8, 0.9), adam_eps=1e-6, weight_decay=0.1)  # fmt: skip
    opt = build_optimizer(list(model.parameters()), cfg, CPU)
    assert [g["lr"] for g in opt.param_groups] == [lr, 0.02]  # the schedule multiplies each group's own lr
    rest = [twin[0].bias, twin[1].weight, twin[1].bias]
    plain = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}], lr=0.02, betas=(0.8, 0.9), eps=1e-6,
                              fused=fused_adamw(CPU))  # the same kernel as the phase's AdamW  # fmt: skip
    w0 = model[0].weight.detach().double().clone()
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        for p, q, grad in zip(model.parameters(), twin.parameters(), grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        plain.step()
        if i == 0:  # Keller's adjustment sqrt(max(1, rows / cols)), here sqrt(6 / 4)
            o = -(model[0].weight.detach().double() - w0 * (1 - lr * 0.1)) / (lr * math.sqrt(6 / 4))
            assert (o - newton_schulz(grads[0].double(), KELLER, 5)).abs().max() < TOL
    for name in ("0.bias", "1.weight", "1.bias"):  # bit for bit: the AdamW part is torch's AdamW, unchanged
        assert torch.equal(model.get_parameter(name), twin.get_parameter(name)), name


def muon_run(*overrides: str) -> Config:
    return tiny_config("train.optimizer=muon", "train.steps=4", "train.ckpt_every=2", *overrides)


def everything(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.method.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict(0.9).items()})
    names = {id(p): n for n, p in trainer.method.named_parameters()}
    for phase, opt in trainer.state.optimizers.items():
        for part in parts(opt):
            for p, s in part.state.items():
                out.update({f"{phase}.{type(part).__name__}.{names[id(p)]}.{k}": v.clone() for k, v in s.items()})
    return out


def test_a_muon_run_trains_and_resumes_bit_for_bit(tmp_path):
    cfg = muon_run("data.hflip=true", "train.grad_accum=2", "train.schedule=linear", "train.hold_steps=1",
                   "train.adamw_lr=3e-3")  # fmt: skip
    straight = Trainer(cfg, tmp_path / "a")
    before = {k: v.clone() for k, v in straight.model.state_dict().items()}
    result = straight.fit()
    assert math.isfinite(result.final_loss)
    muon, adamw = straight.optimizer.parts
    names = {id(p): n for n, p in straight.method.named_parameters()}
    assert {names[id(p)] for p in muon.state} == {n for n, p in straight.method.named_parameters() if p.ndim == 2}
    assert "model.y_embedder.table.weight" in {names[id(p)] for p in muon.state}
    assert all(not torch.equal(before[k], v) for k, v in straight.model.state_dict().items() if v.ndim == 2)
    Trainer(cfg, tmp_path / "b").fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b")
    assert resumed.step == 2
    resumed.fit()
    a, b = everything(straight), everything(resumed)
    assert a.keys() == b.keys() and any(".momentum_buffer" in k for k in a) and any(".exp_avg_sq" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the last step's lrs: Muon's train.lr, AdamW's train.adamw_lr, both on the schedule (step 3 of 4: 1/3 left)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([1e-3 / 3, 3e-3 / 3, 3e-3 / 3])


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_a_two_phase_method_resumes_bit_for_bit_from_before_its_critic_starts(tmp_path, optimizer):
    """Both phases (a GAN's generator and its critic) get the optimiser; a checkpoint written before the critic's
    phase starts holds no critic state, and the resumed critic starts as fresh as the uninterrupted one."""
    cfg = muon_run(
        "method.kind=toy_gan", "method.critic_start=3", "train.grad_clip=0.5", f"train.optimizer={optimizer}"
    )
    straight, resumed = straight_and_resumed(cfg, tmp_path)
    a, b = everything(straight), everything(resumed)
    assert a.keys() == b.keys() and any(k.startswith("critic.") for k in a)
    if optimizer == "muon":
        assert {k.split(".")[1] for k in a if k.startswith(("generator.", "critic."))} == {"Muon", "AdamW"}
    for k in a:
        assert torch.equal(a[k], b[k]), k


def kept_states(trainer: Trainer) -> list[set[str]]:
    """Per part of the first phase's optimiser: the parameters it has a state for."""
    names = {id(p): n for n, p in trainer.method.named_parameters()}
    return [{names[id(p)] for p in part.state} for part in parts(trainer.optimizer)]


def test_resume_applies_new_muon_settings_and_a_changed_optimizer_starts_afresh(tmp_path):
    """Muon's state for what Muon steps, AdamW's for the rest: a parameter that changed optimiser starts afresh."""
    Trainer(tiny_config("train.steps=6", "train.ckpt_every=1"), tmp_path).fit(stop_at=2)  # AdamW
    names = {n: p.ndim for n, p in Trainer(tiny_config(), tmp_path / "x").method.named_parameters()}
    matrices, rest = {n for n, d in names.items() if d == 2}, {n for n, d in names.items() if d != 2}
    table = "model.y_embedder.table.weight"
    switched = Trainer(muon_run("train.steps=6", "train.ckpt_every=1"), tmp_path)  # continued with Muon
    assert switched.step == 2 and "train.optimizer: adamw -> muon" in switched.notices
    assert kept_states(switched) == [set(), rest]  # no AdamW moments as Muon momentum; the biases keep theirs
    switched.fit(stop_at=3)
    settings = ("train.muon_momentum=0.5", "train.muon_ns_steps=3", "train.muon_embeddings=false")
    changed = Trainer(muon_run("train.steps=6", "train.ckpt_every=1", *settings), tmp_path)
    assert changed.step == 3 and kept_states(changed) == [matrices - {table}, rest]  # the table moved to AdamW
    muon_group = changed.optimizer.param_groups[0]
    assert (muon_group["momentum"], muon_group["ns_steps"]) == (0.5, 3)  # from the config, not the checkpoint
    changed.fit(stop_at=4)
    back = Trainer(tiny_config("train.steps=6"), tmp_path)  # and back to AdamW
    assert isinstance(back.optimizer, torch.optim.AdamW) and kept_states(back) == [rest | {table}]
    back.fit()


def test_a_checkpoint_of_another_torchs_muon_resumes(tmp_path):
    """torch versions name Muon's group keys differently (some have ``use_addmm``): the current ones are taken."""
    Trainer(muon_run(), tmp_path).fit(stop_at=2)
    path = list_checkpoints(tmp_path)[-1] / "state.pt"
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["main"]["param_groups"]:
        if "momentum" in group:  # Muon's group
            del group["adjust_lr_fn"]
            group["use_addmm"] = True
    torch.save(state, path)
    resumed = Trainer(muon_run(), tmp_path)
    assert resumed.optimizer.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    resumed.fit()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.optimizer=sgd", "config key 'train.optimizer' must be one of"),
        ("train.muon_momentum=1.0", "config key 'train.muon_momentum' must lie in [0, 1), got 1.0"),
        ("train.muon_ns_steps=0", "config key 'train.muon_ns_steps' must lie in [1, 99], got 0"),
        ("train.muon_ns_steps=100", "config key 'train.muon_ns_steps' must lie in [1, 99], got 100"),
        ("train.muon_ns_coefficients=[1.0,2.0]", "config key 'train.muon_ns_coefficients' expects 3 values"),
        ("train.adamw_lr=-0.5", "config key 'train.adamw_lr' must be -1 (train.lr) or >= 0, got -0.5"),
        ("train.muon_adjust_lr=rms_norm", "config key 'train.muon_adjust_lr' must be one of"),
        ("train.parallel=fsdp", "'train.optimizer' is muon, which does not run under train.parallel=fsdp"),
    ],
)
def test_bad_muon_settings_fail_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        tiny_config("train.optimizer=muon", override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_torch_without_muon_is_said_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError) as err:
        Trainer(muon_run(), tmp_path)
    assert "train.optimizer=muon needs torch.optim.Muon (torch >= 2.9)" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_muon_under_ddp_matches_one_process_and_resumes_in_one(tmp_path):
    args = ("train.optimizer=muon", "train.steps=4", "train.ckpt_every=2", "train.grad_clip=0.5")
    single = Trainer(tiny_config(*args), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "ddp", 4, *args)
    ddp = load_checkpoint(tmp_path / "ddp").weights("model")
    torchrun(tmp_path / "mixed", 2, *args)  # two processes for half the run, one process for the rest
    resumed = Trainer(tiny_config(*args), tmp_path / "mixed")
    assert resumed.step == 2 and resumed.optimizer.parts[0].state
    resumed.fit()
    # Muon rounds its input to bf16 (on a CPU too where bf16 is fast, AVX-512 BF16 or AMX; fp32 elsewhere:
    # optim.py): gradients that differ in the 7th digit (two processes sum in another order) can round apart,
    # moving update entries by bf16 steps (measured: <= 0.10 of lr_adjusted after 4 steps). A rank stepping on its
    # half of the batch alone moves out_x's first update by 0.41 of lr_adjusted (measured), so a quarter of a step
    # tells the two apart. The resumed run's last two steps sum in one process where the 2-process run summed in
    # two: the same bound.
    assert_within_a_quarter_step(resumed.model.state_dict(), ddp)
    assert_within_a_quarter_step(single.model.state_dict(), ddp)


def assert_within_a_quarter_step(a: dict, b: dict, lr: float = 1e-3) -> None:
    """Muon's matrices within a quarter of one update (lr x 0.2 x sqrt(max dim), torch's match_rms_adamw);
    the others (biases, norms, the patch convolution: AdamW's) to 1e-5."""
    assert a.keys() == b.keys()
    for k, v in a.items():
        atol = 0.25 * lr * 0.2 * math.sqrt(max(v.shape)) if v.ndim == 2 else 1e-5
        assert torch.allclose(v, b[k], atol=atol, rtol=1e-4), k
