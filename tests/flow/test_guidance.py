import torch

from repflow.flow.guidance import classifier_free


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
    guided = classifier_free(fake_velocity(calls), y, null_label=9, scales={"x": 1.0, "cls": 1.0})
    out = guided(s, 0.5)
    ref = fake_velocity([])(s, 0.5, y)
    assert all(torch.equal(out[k], ref[k]) for k in out)
    assert calls == [4]  # no unconditional pass


def test_batched_guidance_equals_separate_passes():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    null = torch.full_like(y, 9)
    scales = {"x": 2.5, "cls": 1.7}
    guided = classifier_free(fake_velocity([]), y, 9, scales)
    out = guided(s, 0.4)
    cond = fake_velocity([])(s, 0.4, y)
    uncond = fake_velocity([])(s, 0.4, null)
    for k, w in scales.items():
        assert torch.allclose(out[k], uncond[k] + w * (cond[k] - uncond[k]))


def test_guidance_only_inside_the_interval():
    s, y = state(), torch.tensor([0, 1, 2, 3])
    calls = []
    guided = classifier_free(fake_velocity(calls), y, 9, {"x": 3.0, "cls": 3.0}, interval=(0.0, 0.7))
    inside, outside = guided(s, 0.5), guided(s, 0.9)
    assert calls == [8, 4]  # batched pass inside, conditional only outside
    cond = fake_velocity([])(s, 0.9, y)
    assert torch.equal(outside["x"], cond["x"])
    assert not torch.equal(inside["x"], fake_velocity([])(s, 0.5, y)["x"])
