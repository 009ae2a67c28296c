import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from repflow.build import resolve_config
from repflow.codecs import build_codec
from repflow.data import build_dataset
from repflow.methods import FlowMethod
from repflow.models import build_model
from repflow.runtime.distributed import DistInfo
from repflow.runtime.images import save_pngs
from repflow.sample import sharded
from repflow.sample.sharded import generate_sharded, sample_path, sampling_manifest, shard_indices

from ..conftest import tiny_config


@pytest.fixture
def setup():
    cfg = tiny_config()
    cfg = resolve_config(cfg, build_dataset(cfg.data, num_classes_hint=4))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # the zero-initialised output head would make every sample identical
        model.out_x.weight.normal_(std=0.5)
    return cfg, FlowMethod.denoiser(cfg, {"model": model}, torch.device("cpu"), build_codec("pixel"))


def _read(folder, n):
    return np.stack([np.asarray(Image.open(sample_path(folder, i))) for i in range(n)])


def test_shards_partition_the_indices():
    parts = [shard_indices(10, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    with pytest.raises(ValueError, match="outside"):
        shard_indices(10, 3, 3)


def test_save_pngs_writes_the_names_sharded_generation_checks(tmp_path):
    save_pngs(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), tmp_path, [7, 123456])
    assert sample_path(tmp_path, 7).is_file() and sample_path(tmp_path, 123456).is_file()


def test_two_processes_equal_one_and_restart_skips_finished(setup, tmp_path, monkeypatch):
    cfg, denoiser = setup
    opts = cfg.sample
    manifest = sampling_manifest("ckpt", 0.9, opts, cfg.model.num_classes)
    one = tmp_path / "one"
    assert generate_sharded(denoiser, one, 6, opts, manifest, progress=False).count == 6
    monkeypatch.setattr(sharded, "barrier", lambda dist: None)  # simulate ranks one after another
    two = tmp_path / "two"
    made = [generate_sharded(denoiser, two, 6, opts, manifest, DistInfo(rank=r, world=2), progress=False).count
            for r in (1, 0)]  # fmt: skip
    assert made == [3, 3]
    np.testing.assert_array_equal(_read(one, 6), _read(two, 6))
    assert len({_read(one, 6)[i].tobytes() for i in range(6)}) == 6  # distinct samples
    # an interruption: one finished file missing, a temporary left behind
    sample_path(two, 4).unlink()
    (two / "000005.png.tmp").write_bytes(b"partial")
    assert generate_sharded(denoiser, two, 6, opts, manifest, progress=False).count == 1
    np.testing.assert_array_equal(_read(one, 6), _read(two, 6))
    # growing the evaluation keeps the first samples
    assert generate_sharded(denoiser, two, 8, opts, manifest, progress=False).count == 2
    assert json.loads((two / "samples.json").read_text())["ema"] == 0.9


def test_other_settings_are_refused(setup, tmp_path):
    cfg, denoiser = setup
    generate_sharded(denoiser, tmp_path, 2, cfg.sample,
                     sampling_manifest("ckpt", 0.9, cfg.sample, 4), progress=False)  # fmt: skip
    other = sampling_manifest("ckpt", 0.9, cfg.sample.__class__(**{**cfg.sample.__dict__, "steps": 7}), 4)
    with pytest.raises(ValueError, match=r"other settings \(sample.steps differ\)"):
        generate_sharded(denoiser, tmp_path, 2, cfg.sample, other, progress=False)
    bigger_batch = sampling_manifest("ckpt", 0.9, cfg.sample.__class__(**{**cfg.sample.__dict__, "batch_size": 1}), 4)
    generate_sharded(denoiser, tmp_path, 2, cfg.sample, bigger_batch, progress=False)  # batch size is free


def test_folders_of_an_older_repflow_and_of_another_guidance_rule(setup, tmp_path):
    """A manifest written before ``sample.cfg_rule`` existed describes images made with its default (step); a
    folder made with one rule refuses the other."""
    cfg, denoiser = setup
    step = sampling_manifest("ckpt", 0.9, cfg.sample, 4)
    generate_sharded(denoiser, tmp_path, 2, cfg.sample, step, progress=False)
    written = json.loads((tmp_path / "samples.json").read_text())
    del written["sample"]["cfg_rule"]
    (tmp_path / "samples.json").write_text(json.dumps(written))
    generate_sharded(denoiser, tmp_path, 3, cfg.sample, step, progress=False)  # accepted: one more sample
    strict = dataclasses.replace(cfg.sample, cfg_rule="evaluation_strict")
    with pytest.raises(ValueError, match=r"other settings \(sample.cfg_rule differ\)"):
        generate_sharded(denoiser, tmp_path, 3, strict, sampling_manifest("ckpt", 0.9, strict, 4), progress=False)
