import pytest
import torch

from repflow.config import CFG_RULES
from repflow.flow.guidance import Guide, classifier_free, guidance_active, guided
from repflow.flow.solvers import heun
from repflow.flow.timesteps import time_grid


def fake_velocity(calls):
    """A conditional 'network': the label shifts the output; records batch sizes."""

    def velocity(state, t, y):
        calls.append(state["x"].shape[0])
        shift = y.float()[:, None] if y is not None else 0.0
        return {"x": state["x"] * t + shift, "cls": state["cls"] * 2 + shift}

    return velocity


def state():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(4, 3, generator=g), "cls": torch.randn(4, 2, generator=g)}


def test_scale_one_equals_conditional_model():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    calls = []
    combined = classifier_free(fake_velocity(calls), y, null_label=9, scales={"x": 1.0, "cls": 1.0})
    out = combined(s, 0.5, 0.5)
    ref = fake_velocity([])(s, 0.5, y)
    assert all(torch.equal(out[k], ref[k]) for k in out)
    assert calls == [4]  # no unconditional pass


def test_batched_guidance_equals_separate_passes():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    null = torch.full_like(y, 9)
    scales = {"x": 2.5, "cls": 1.7}
    combined = classifier_free(fake_velocity([]), y, 9, scales)
    out = combined(s, 0.4, 0.4)
    cond = fake_velocity([])(s, 0.4, y)
    uncond = fake_velocity([])(s, 0.4, null)
    for k, w in scales.items():
        assert torch.allclose(out[k], uncond[k] + w * (cond[k] - uncond[k]))


def test_guidance_only_inside_the_interval_decided_by_the_step_start():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    calls = []
    combined = classifier_free(fake_velocity(calls), y, 9, {"x": 3.0, "cls": 3.0}, interval=(0.0, 0.7))
    inside, outside = combined(s, 0.5, 0.5), combined(s, 0.9, 0.9)
    assert calls == [8, 4]  # batched pass inside, conditional only outside
    cond = fake_velocity([])(s, 0.9, y)
    assert torch.equal(outside["x"], cond["x"])
    assert not torch.equal(inside["x"], fake_velocity([])(s, 0.5, y)["x"])
    # a corrector evaluated at t = 0.65 inside a step that started at 0.75 is not guided (official REPA/REG)
    calls.clear()
    corrector = combined(s, 0.65, 0.75)
    assert calls == [4] and torch.equal(corrector["x"], fake_velocity([])(s, 0.65, y)["x"])


def test_autoguidance_uses_the_guide_network_with_the_same_labels():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    main_calls, guide_calls = [], []
    main, weak = fake_velocity(main_calls), fake_velocity(guide_calls)

    def weaker(state, t, labels):  # a different network: half the main one's output
        return {k: 0.5 * v for k, v in weak(state, t, labels).items()}

    out = guided(main, y, Guide(weaker), {"x": 2.0, "cls": 2.0})(s, 0.5, 0.5)
    assert main_calls == [4] and guide_calls == [4]  # two calls, each on the batch with the real labels
    c, g = main(s, 0.5, y), weaker(s, 0.5, y)
    assert all(torch.allclose(out[k], g[k] + 2.0 * (c[k] - g[k])) for k in out)


# -- the interval rule of each family --------------------------------------------------------------------------


def test_the_two_rules_at_their_bounds():
    step, strict = (lambda t, t_step, iv=(0.0, 0.9), r=r: guidance_active(r, iv, t, t_step) for r in CFG_RULES)
    assert step(0.5, 0.9) and step(0.9, 0.9) and step(0.0, 0.0)  # inclusive, at the step's start
    assert not step(0.85, 0.95)  # a corrector inside the interval, in a step that started outside
    assert strict(0.85, 0.95) and not strict(0.95, 0.85)  # each evaluation at its own time
    assert not strict(0.9, 0.9) and not strict(1 - 5 / 50, 1.0) and strict(0.9 - 1e-6, 1.0)  # strict at hi
    assert not strict(0.0, 0.0) and strict(1e-6, 1e-6)  # and at lo = 0
    assert 1 - 0.7 != 0.3 and not strict(1 - 0.7, 1.0, (0.3, 0.9))  # a time rounded off its bound is on it
    # JiT's (low == 0) case: its high end (our hi = 1) keeps t = 1, the first evaluation
    assert strict(1.0, 1.0, (0.5, 1.0)) and not strict(0.5, 0.6, (0.5, 1.0)) and strict(0.5 + 1e-6, 0.6, (0.5, 1.0))
    with pytest.raises(ValueError, match="unknown guidance rule 'jit'; choose from step, evaluation_strict"):
        classifier_free(fake_velocity([]), torch.tensor([0]), 9, {"x": 2.0}, rule="jit")


def labelled_field(x, t, y):
    """A velocity (in repflow's time) whose conditional and null-label outputs differ and depend on x and t."""
    return -x * (1 + t) + (y.double()[:, None] - 4.5) * (1 + t * t)


def official_jit_heun(z, labels, steps, w, low, high):
    """The official JiT sampler written out in its own time (s = 1 is data, ``z = s x + (1 - s) e``, velocity
    ``dz/ds = -v``): Heun with its guidance mask ``(s < high) & ((low == 0) | (s > low))`` at every evaluation,
    a final Euler step; one network call per branch."""

    def forward_sample(z, s):
        cond, uncond = -labelled_field(z, 1 - s, labels), -labelled_field(z, 1 - s, torch.full_like(labels, 9))
        scale = w if (s < high) and ((low == 0) or (s > low)) else 1.0
        return uncond + scale * (cond - uncond)

    s = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps - 1):
        u = forward_sample(z, s[i])
        z_euler = z + (s[i + 1] - s[i]) * u
        z = z + (s[i + 1] - s[i]) * 0.5 * (u + forward_sample(z_euler, s[i + 1]))
    return z + (s[-1] - s[-2]) * forward_sample(z, s[-2])


def repa_heun(z, labels, steps, w, lo, hi):
    """REPA/REG's sampler written out (t = 1 noise): whether to guide is decided at the step's start t_cur,
    inclusive, and applies to the corrector too."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()

    def f(z, tau, guide):
        cond, uncond = labelled_field(z, tau, labels), labelled_field(z, tau, torch.full_like(labels, 9))
        return uncond + (w if guide else 1.0) * (cond - uncond)

    for i in range(steps):
        guide = lo <= t[i] <= hi
        d = f(z, t[i], guide)
        if i == steps - 1:
            return z + (t[i + 1] - t[i]) * d
        z_next = z + (t[i + 1] - t[i]) * d
        z = z + (t[i + 1] - t[i]) * 0.5 * (d + f(z_next, t[i + 1], guide))


@pytest.mark.parametrize("official", [(0.1, 1.0), (0.0, 0.5), (0.25, 0.75)])
def test_each_rule_matches_its_official_sampler(official):
    """50 Heun steps (the JiT evaluation), JiT's interval (low, high) in its time = (1 - high, 1 - low) here: a
    grid point lands on each bound (s = 0.1 is step 5), and the steps around it straddle the bound."""
    low, high = official
    lo, hi = 1 - high, 1 - low
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    calls = []

    def network(state, t, labels):
        calls.append(len(labels))
        return {"x": labelled_field(state["x"], t, labels)}

    def ours(rule):
        return heun(classifier_free(network, y, 9, {"x": 2.9}, (lo, hi), rule), {"x": z}, time_grid(50)).state["x"]

    strict, step = ours("evaluation_strict"), ours("step")
    assert torch.allclose(strict, official_jit_heun(z, y, 50, 2.9, low, high), rtol=0, atol=1e-12)
    assert torch.allclose(step, repa_heun(z, y, 50, 2.9, lo, hi), rtol=0, atol=1e-12)
    assert (strict - step).abs().max() > 1e-3  # the rules differ where a step straddles a bound
    assert set(calls) == {12, 6}  # a guided evaluation is one call of twice the batch


def test_a_heun_step_straddling_the_bound():
    """A Heun step from t = 0.95 to 0.85 with the interval (0, 0.9): REPA's rule guides neither of its evaluations
    (the step starts outside), JiT's guides the corrector (it is evaluated inside); a guided evaluation is one
    call on twice the batch."""
    seen = []

    def network(state, t, labels):
        seen.append((t, len(labels)))
        return {"x": labelled_field(state["x"], t, labels)}

    z, y = torch.ones(2, 1, dtype=torch.float64), torch.tensor([0, 1])
    for rule in CFG_RULES:
        heun(classifier_free(network, y, 9, {"x": 3.0}, (0.0, 0.9), rule), {"x": z}, [0.95, 0.85, 0.0])
    step, strict = seen[:3], seen[3:]  # predictor at 0.95, corrector at 0.85, the last (Euler) step at 0.85
    assert step == [(0.95, 2), (0.85, 2), (0.85, 4)]
    assert strict == [(0.95, 2), (0.85, 4), (0.85, 4)]
