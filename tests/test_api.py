"""The Python API a notebook uses: train from a preset, load the run, sample chosen classes, evaluate."""

import pytest
import torch

import repflow

from .conftest import TINY
from .eval.conftest import fake_inception_env, fake_inception_file  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    result = repflow.fit("demo-fashion-sit", [*TINY, "train.steps=4", "train.ema_decays=[0.9]"], out=out)
    assert result.steps == 4 and result.last_checkpoint is not None
    return out


def test_load_and_sample_classes_seeds_and_batches(run):
    model = repflow.load(run, device="cpu")
    assert model.num_classes == 4 and model.ema == 0.9
    images = model.sample(classes=[3, 1], per_class=2, seed=5, steps=2)
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    again = model.sample(classes=[3, 1], per_class=2, seed=5, steps=2, batch_size=1)
    assert torch.equal(images, again)  # per-sample seeds: the batch size does not matter
    tail = model.sample(classes=[1, 1], indices=[2, 3], seed=5, steps=2)
    assert torch.equal(tail, images[2:])  # sample i of a seed is the same image in any call
    assert not torch.equal(model.sample(classes=[3, 1], per_class=2, seed=6, steps=2), images)
    pils = model.sample(num=2, steps=2, as_pil=True)
    assert len(pils) == 2 and pils[0].size == (8, 8)
    with pytest.raises(ValueError, match=r"classes \[7\] do not exist; the model has classes 0..3"):
        model.sample(classes=[7])
    with pytest.raises(ValueError, match="say how many images"):
        model.sample()


def test_autoguidance_with_another_checkpoint(run):
    strong = repflow.load(run, device="cpu")
    weak = repflow.load(run, ema=0, device="cpu")  # the raw weights stand in for a weaker model
    plain = strong.sample(num=4, steps=2, cfg=1.0)
    guided = strong.sample(num=4, steps=2, cfg=2.0, guide=weak)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    assert torch.equal(strong.sample(num=4, steps=2, cfg=1.0, guide=weak), plain)  # scale 1: the model alone


def test_evaluate_a_run_and_list_presets(run, fake_inception_env):  # noqa: F811
    scores = repflow.evaluate(run, num_samples=8, ref_count=16, metrics="fid", steps=2)
    assert set(scores) == {"fid"} and scores["fid"] > 0
    assert "demo-fashion-reg" in repflow.presets()
    with pytest.raises(ValueError, match="apply to a run"):
        repflow.evaluate(run / "samples", steps=2)


def test_class_names_any_case_or_separator_and_named_sampling_options(run, tmp_path, monkeypatch):
    from repflow.sample.runs import resolve_classes

    model = repflow.load(run, device="cpu")
    assert model.class_names == ["class0", "class1", "class2", "class3"]  # the synthetic data's names
    by_index = model.sample(classes=[3, 1], per_class=2, seed=5, steps=2)
    assert torch.equal(model.sample(classes=["CLASS_3", "Class-1"], per_class=2, seed=5, steps=2), by_index)
    names = ["Sneaker", "Ankle boot", "bag", "Bag"]
    assert resolve_classes("sneaker,ankle_boot,ANKLE-BOOT,Bag", names, 4) == [0, 1, 1, 3]  # exact match first
    with pytest.raises(ValueError, match="unknown class 'BAG'"):  # two names fold to it: ambiguous
        resolve_classes("BAG", names, 4)
    # REG's class-token scale, the time shift and AutoGuidance's scale are named options, checked as the CLI's
    import repflow.flow.generate as generate

    seen = []
    real = generate.sample_images
    monkeypatch.setattr(generate, "sample_images", lambda d, opts, *a, **k: seen.append(opts) or real(d, opts, *a, **k))
    model.sample(num=2, steps=2, cfg=1.5, cfg_cls=1.0, shift=3.0, guide_scale=2.0)
    assert (seen[0].cfg_cls, seen[0].shift, seen[0].guide_scale) == (1.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="'sample.shift' must be -1"):
        model.sample(num=2, shift=0.0)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        model.sample(num=-2)
    grid = repflow.save_grid(model.sample(num=4, steps=2, as_pil=True), tmp_path / "grid.png", nrow=2)
    from PIL import Image

    assert Image.open(grid).size == (2 * (8 + 2) + 2,) * 2  # 2 x 2 images of 8 px, 2 px gaps
