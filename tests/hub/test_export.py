"""``repflow export --to diffusers``: tiny REG, JiT and MeanFlow runs exported, loaded by diffusers from the folder and
sampled bit for bit as ``repflow sample`` does; the model card; the folder and a Hub id as runs everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import repflow
from repflow.cli import main
from repflow.config import load_config, to_yaml
from repflow.errors import CheckpointError, ConfigError
from repflow.sample.sharded import read_samples

from ..conftest import TINY

JIT = ["model.arch=JiT-T/2", "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.bottleneck=8",
       "model.context_tokens=2", "model.context_start=1"]  # fmt: skip
IMF = ["method.omega=1", "method.kappa=0", "method.guidance_conditioning=true", "method.tangent=model",
       "method.velocity_weight=1", "model.velocity_head=1"]  # fmt: skip
RUNS = {
    # REG (+ REPA, as the demo): two streams, the class token guided with its own scale
    "reg": ["demo-fashion-reg", *TINY, "sample.cfg=2.0", "sample.cfg_cls=1.5", "sample.cfg_interval=[0.0,0.7]"],
    # JiT: x-prediction in pixels, guidance decided per evaluation (JiT's rule, from the preset)
    "jit": ["demo-fashion-jit", *TINY, *JIT],
    # MeanFlow: the interval input, two jumps of the average velocity (guided at sampling too, to test it travels)
    "meanflow": ["demo-fashion-meanflow", *TINY, "sample.steps=2", "sample.cfg=1.5"],
    # iMF: w and the interval are network inputs (the pipeline's cfg goes into the network), a velocity head
    "imf": ["demo-fashion-meanflow", *TINY, *IMF, "sample.steps=2", "sample.cfg=1.5", "sample.cfg_interval=[0.2,0.8]"],
}


def perturb(ckpt, scale: float = 0.3) -> None:
    """Random weights of the real architecture (two steps leave JiT's zero-initialised output layer near zero:
    grey images, which any two code paths would agree on); the files keep their metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(0)
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            meta = handle.metadata()
        tensors = {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                   for k, v in load_file(str(f)).items()}  # fmt: skip
        save_file(tensors, str(f), metadata=meta)


@pytest.fixture(scope="module", params=sorted(RUNS))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    run, out = root / "run", root / "export"
    assert main(["train", *RUNS[request.param], "train.steps=2", "train.sample_num=0", "--out", str(run)]) == 0
    perturb(run / "checkpoints" / "ckpt-00000002")
    assert main(["export", str(run), "--to", "diffusers", str(out)]) == 0
    return run, out


def test_diffusers_loads_the_folder_and_samples_what_repflow_sample_writes(exported, tmp_path, capsys):
    from diffusers import DiffusionPipeline

    run, out = exported
    assert main(["sample", str(run), "--num-samples", "4", "--seed", "7", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", str(run), "--num-samples", "2", "--seed", "3", "--classes", "class3,class1", "--out",
                 str(tmp_path / "b")]) == 0  # fmt: skip
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)  # pipeline.py in the folder
    assert type(pipe).__name__ == "RepflowPipeline" and pipe.labels["class3"] == 3
    images = pipe(num_images=4, seed=7, output_type="pt").images
    assert images.float().std() > 10  # images, not a constant any two code paths would agree on
    assert torch.equal(images, read_samples(tmp_path / "a", range(4)))  # bit for bit
    chosen = pipe(class_labels=["class3", 1], seed=3, output_type="pt").images
    assert torch.equal(chosen, read_samples(tmp_path / "b", range(2)))
    pils = pipe(num_images=2, seed=7).images  # PIL by default, as diffusers pipelines return
    assert torch.equal(torch.tensor(np.asarray(pils[1])).permute(2, 0, 1), images[1])
    unguided = pipe(num_images=4, seed=7, cfg=1.0, output_type="pt").images
    assert not torch.equal(unguided, images)  # the run's guidance is what the pipeline applied
    from repflow.hub.pipeline import RepflowPipeline

    direct = RepflowPipeline.from_pretrained(out)  # the class itself: the folder's file is its known re-export
    assert torch.equal(direct(num_images=4, seed=7, output_type="pt").images, images)


def test_the_folder_holds_safetensors_the_vae_slot_and_a_model_card_whose_metadata_parses(exported):
    from huggingface_hub import ModelCard

    run, out = exported
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "RepflowPipeline"]
    assert index["transformer"] == ["repflow.hub.transformer", "RepflowTransformer"]
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    record = json.loads((out / "transformer" / "config.json").read_text())
    assert record["ema"] == 0.9 and record["images_seen"] == 16 and record["train_step"] == 2
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
    assert "repflow" in meta["tags"] and "class-conditional" in meta["tags"]
    assert ("reg" in meta["tags"]) == ("reg" in run.parent.name)
    assert "2 steps, 16 images seen" in card.text and "trust_remote_code=True" in card.text


def test_repflow_load_reads_the_folder_with_the_exported_ema(exported, tmp_path, capsys):
    run, out = exported
    model = repflow.load(out)
    assert model.ema == 0.9 and model.cfg.train.ema_decays == (0.9,)
    assert torch.equal(model.sample(num=3, seed=5), repflow.load(run).sample(num=3, seed=5))
    with pytest.raises(CheckpointError, match="holds only ema-0.9"):
        repflow.load(out, ema=0)  # the raw weights were not exported
    assert main(["export", str(run), "--to", "diffusers", str(tmp_path / "raw"), "--ema", "0"]) == 0
    raw = repflow.load(tmp_path / "raw", ema=0)
    assert raw.ema == "raw" and torch.equal(raw.sample(num=2, seed=5), repflow.load(run, ema=0).sample(num=2, seed=5))


@pytest.mark.parametrize("exported", ["reg"], indirect=True)
def test_the_sweeps_best_and_the_measured_metrics_of_those_weights_go_into_the_export(exported, tmp_path, capsys):
    from repflow.sample.swept import write_swept

    run, _ = exported
    ckpt = run / "checkpoints" / "ckpt-00000002"
    common = {"checkpoint": str(ckpt), "num_samples": 1000, "sampler": "euler", "steps": 3, "cfg": 3.0, "seed": 0,
              "cfg_interval": [0.0, 0.7], "labels": "balanced", "reference": "synthetic:train"}  # fmt: skip
    for name, ema, fid in (("raw", "raw", 12.5), ("ema", 0.9, 99.0), ("other", "raw", 7.0)):
        (run / "eval" / name).mkdir(parents=True)
        record = {**common, "ema": ema, "metrics": {"fid": fid}}
        if name == "other":
            record["checkpoint"] = str(run / "checkpoints" / "ckpt-00000001")  # another checkpoint: left out
        (run / "eval" / name / "eval.json").write_text(json.dumps(record))
    write_swept(run, {"cfg": 3.0, "steps": 3}, 0.0, {"metric": "fid", "value": 12.5, "checkpoint": ckpt.name})
    try:
        assert main(["export", str(run), "--to", "diffusers", str(tmp_path / "swept")]) == 0
        assert main(["sample", str(run), "--num-samples", "2", "--seed", "1", "--out", str(tmp_path / "s")]) == 0
    finally:
        (run / "sampling.json").unlink()
        shutil.rmtree(run / "eval")
    model = repflow.load(tmp_path / "swept")
    assert (model.ema, model.cfg.sample.cfg, model.cfg.sample.steps) == ("raw", 3.0, 3)
    assert torch.equal(model.sample(num=2, seed=1), read_samples(tmp_path / "s", range(2)))
    card = (tmp_path / "swept" / "README.md").read_text()
    assert "the sweep's best" in card and "euler 3 steps, cfg 3 on [0, 0.7], raw weights" in card
    assert "| fid 12.5 | 1000 samples, euler 3 steps, cfg 3.0 on [0.0, 0.7], seed 0" in card
    assert "fid 99" not in card and "fid 7" not in card  # other weights, another checkpoint


def _as_cached_hub_repo(folder, cache, repo: str, ref: str = "main"):
    """``folder`` as huggingface_hub's cache holds a downloaded repository (refs/<ref> -> snapshots/<commit>)."""
    commit = __import__("hashlib").sha1(ref.encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)


@pytest.mark.parametrize("exported", ["reg"], indirect=True)  # one method is enough for the cache lookup
def test_a_hub_id_resolves_through_the_cache_and_every_command_takes_it(exported, tmp_path, monkeypatch, capsys):
    run, out = exported
    cache = tmp_path / "hub"
    _as_cached_hub_repo(out, cache, "my-org/tiny-reg")
    _as_cached_hub_repo(out, cache, "my-org/tiny-reg", ref="v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    expected = repflow.load(out).sample(num=2, seed=1)
    assert torch.equal(repflow.load("my-org/tiny-reg").sample(num=2, seed=1), expected)
    assert torch.equal(repflow.load("my-org/tiny-reg@v1").sample(num=2, seed=1), expected)
    assert main(["sample", "my-org/tiny-reg", "--num-samples", "2", "--seed", "1"]) == 0
    folder = next((tmp_path / "runs" / "my-org--tiny-reg" / "samples").iterdir())  # not inside the cache
    assert torch.equal(read_samples(folder, range(2)), expected)
    capsys.readouterr()
    assert main(["sample", "my-org/not-cached", "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf download my-org/not-cached" in err and "Traceback" not in err


@pytest.mark.parametrize("exported", ["jit"], indirect=True)
def test_push_creates_a_private_repository_and_uploads_the_export(exported, monkeypatch, capsys):
    """The upload is huggingface_hub's; what it is handed is checked here (no hub is called)."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, allow_patterns, commit_message):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls.append(("upload", repo_id, files, allow_patterns))
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run, out = exported
    (out / "samples").mkdir(exist_ok=True)  # an export used as a run collects outputs: never uploaded
    assert (
        main(["push", str(out), "my-org/tiny"]) == 0 and "https://hub/my-org/tiny/commit/1" in capsys.readouterr().out
    )
    assert main(["push", str(run), "my-org/tiny-run", "--public"]) == 0  # a run: exported on the fly
    (_, repo, private), (_, _, files, patterns) = calls[0], calls[1]
    assert (repo, private) == ("my-org/tiny", True) and "samples/*" not in patterns
    assert {"model_index.json", "pipeline.py", "README.md", "transformer/config.json"} <= set(files)
    assert (
        calls[2][1:] == ("my-org/tiny-run", False) and "transformer/diffusion_pytorch_model.safetensors" in calls[3][2]
    )


@pytest.mark.parametrize("exported", ["jit"], indirect=True)
def test_bad_inputs_are_one_line_each(exported, tmp_path, capsys):
    run, out = exported
    ckpt = tmp_path / "decoder" / "checkpoints" / "ckpt-00000002"
    ckpt.mkdir(parents=True)
    decoder = load_config(None, [*TINY, "data.resolution=16", "codec.kind=rae", "codec.decoder_patch=4",
                                 "codec.encoder=tiny", "method.kind=rae_decoder", "method.size=T"])  # fmt: skip
    (ckpt / "config.yaml").write_text(to_yaml(decoder))
    (ckpt / "state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="does not generate images.*repflow rae export"):
        repflow.export(tmp_path / "decoder", tmp_path / "x")
    from repflow.hub.pipeline import RepflowPipeline

    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "pipeline.py").write_text((out / "pipeline.py").read_text() + "print('other code')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        RepflowPipeline.from_pretrained(edited)  # code that is not repflow's runs only when the user says so
    cases = [
        (["export", str(tmp_path / "decoder"), "--to", "diffusers", str(tmp_path / "y")], "repflow rae export"),
        (["export", str(run), "--to", "diffusers", str(out)], "is not empty"),
        (["export", str(out), "--to", "diffusers", str(tmp_path / "z")], "already an export"),
        (["sample", "my-org/bad name!", "--num-samples", "1"], "is not a Hub id"),
        (["push", str(out), "my-org/bad name!"], "is not a Hub id"),
        (["push", str(out), "my-org/ok@v2"], "not a revision"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err, (argv, err)
