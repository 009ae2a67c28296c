"""Results do not depend on the evaluation batch size or the number of processes: FID, KID (and FD in an
encoder's space) of samples and of reconstructions (rFID) at three batch sizes, reconstructions over two processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from repflow.cli import main

from ..rae.conftest import DECODER, rae_overrides

BATCHES = (1, 7, 64)


def _folder(path, n, seed, size=12, top=256):
    path.mkdir()
    arr = np.random.default_rng(seed).integers(0, top, (n, size, size, 3), dtype=np.uint8)
    for i, img in enumerate(arr):
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return path


def _same(records: list[dict], keys: list[str], exact: bool = True) -> None:
    first = records[0]["metrics"]
    for record in records[1:]:
        for k in keys:
            if exact:  # the Inception computes every image alone on the CPU: the same bits at any batch size
                assert record["metrics"][k] == first[k], k
            else:  # a decoder's kernels may round differently per batch size (1 ulp), nothing else may differ
                assert record["metrics"][k] == pytest.approx(first[k], rel=1e-6, abs=1e-9), k


def test_fid_and_kid_do_not_depend_on_the_batch_size(tmp_path, fake_inception_env, monkeypatch):
    samples, ref = _folder(tmp_path / "samples", 20, 0), _folder(tmp_path / "ref", 23, 1, top=160)
    records = []
    for bs in BATCHES:
        monkeypatch.setenv("REPFLOW_CACHE", str(tmp_path / f"cache-{bs}"))  # the reference is recomputed too
        out = tmp_path / f"{bs}.json"
        argv = ["eval", str(samples), "--ref", str(ref), "--metrics", "fid,kid,sfid,precision,recall",
                "--kid-subset-size", "10", "--batch-size", str(bs), "--json", str(out), "--device", "cpu"]  # fmt: skip
        assert main(argv) == 0
        records.append(json.loads(out.read_text()))
    _same(records, ["fid", "kid", "kid_std", "sfid", "precision", "recall"])
    assert records[0]["metrics"]["fid"] > 1 and records[0]["metrics"]["kid"] > 10 * records[0]["metrics"]["kid_std"] > 0
    assert len({(r["samples_sha256"], r["reference"]["content_sha256"]) for r in records}) == 1


def test_rfid_and_psnr_do_not_depend_on_the_batch_size_or_process_count(tmp_path, fake_inception_env, monkeypatch):
    import repflow.eval.reconstruct as recon_module
    import repflow.sample.sharded as sharded
    from repflow.config import load_config
    from repflow.runtime.distributed import DistInfo
    from repflow.sample.sharded import read_samples
    from repflow.train.loop import Trainer

    cfg = load_config(None, rae_overrides(None, *DECODER, "train.steps=2", "method.gan_weight=0"))
    Trainer(cfg, tmp_path / "dec").fit()
    records, folders = [], []
    for bs in BATCHES:
        folder = tmp_path / f"recon-{bs}"
        argv = ["eval", str(tmp_path / "dec"), "--num-samples", "12", "--metrics", "fid,kid", "--ref-count", "0",
                "--batch-size", str(bs), "--samples-dir", str(folder), "--kid-subset-size", "6"]  # fmt: skip
        assert main(argv) == 0
        records.append(json.loads((folder / "eval.json").read_text()))
        folders.append(folder)
    _same(records, ["fid", "kid"], exact=False)
    assert all(r["psnr"] == pytest.approx(records[0]["psnr"], rel=1e-9) for r in records)
    # two processes: rank 1 writes the odd shard, rank 0 the even one and measures (barriers are no-ops here)
    monkeypatch.setattr(sharded, "barrier", lambda dist: None)
    monkeypatch.setattr(recon_module, "barrier", lambda dist: None)
    two = tmp_path / "recon-two"
    for rank in (1, 0):
        made = recon_module.reconstruct_run(tmp_path / "dec", 12, folder=two, dist=DistInfo(rank=rank, world=2),
                                            batch_size=5, progress=False)  # fmt: skip
    assert made.psnr == pytest.approx(records[0]["psnr"], rel=1e-9)
    one, split = read_samples(folders[0], list(range(12))), read_samples(two, list(range(12)))
    assert (one.int() - split.int()).abs().max() <= 1  # the same images (a rounding flip at most)
