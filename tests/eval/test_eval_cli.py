"""`repflow eval` end to end, with a tiny stand-in Inception (numbers here test plumbing, not the network)."""

import hashlib
import json

import numpy as np
import pytest

from repflow.cli import main

from ..conftest import TINY


def _npz(path, n, seed, size=12):
    arr = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.savez(path, arr_0=arr)
    return path


def test_npz_against_adm_reference_writes_traceable_json(tmp_path, fake_inception_env, capsys):
    samples, ref = _npz(tmp_path / "samples.npz", 10, 0), _npz(tmp_path / "ref.npz", 12, 1)
    assert main(["eval", str(samples), "--ref", str(ref), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "skipped is" in out  # the stand-in, like fid-helper's file, has no classifier
    record = json.loads((tmp_path / "samples.eval.json").read_text())
    assert set(record["metrics"]) == {"fid", "sfid", "precision", "recall", "kid", "kid_std"}
    assert record["num_samples"] == 10 and record["reference"]["count"] == 12
    assert record["reference"]["resolution"] == [12, 12] and record["extractors"]["inception"]["resize"] == "tf"
    assert record["precision_recall_k"] == 3 and "is" in record["skipped"]
    assert (record["kid_subsets"], record["kid_subset_size"]) == (100, 10)  # the size capped at the sample count
    pixels = np.load(ref)["arr_0"].transpose(0, 3, 1, 2)  # the identity of the reference: its (N, 3, H, W) pixels
    assert record["reference"]["content_sha256"] == hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    assert record["metrics"]["fid"] > 0


def test_precomputed_adm_statistics_are_used(tmp_path, fake_inception_env, capsys):
    images = _npz(tmp_path / "a.npz", 10, 0)
    assert (
        main(["eval", str(images), "--ref", str(images), "--metrics", "fid", "--json", str(tmp_path / "a.json")]) == 0
    )
    assert json.loads((tmp_path / "a.json").read_text())["metrics"]["fid"] == pytest.approx(0, abs=1e-4)
    cached = next((tmp_path / "cache" / "fid_stats").glob("*.npz"))
    with np.load(cached) as z:  # an ADM-style reference whose precomputed mean is far off
        np.savez(tmp_path / "adm.npz", arr_0=np.load(images)["arr_0"], mu=z["pool.mu"] + 1.0, sigma=z["pool.sigma"],
                 mu_s=z["spatial.mu"], sigma_s=z["spatial.sigma"])  # fmt: skip
    assert main(["eval", str(images), "--ref", str(tmp_path / "adm.npz"), "--metrics", "fid,sfid",
                 "--json", str(tmp_path / "b.json")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "b.json").read_text())["metrics"]
    assert metrics["fid"] == pytest.approx(2048.0, rel=1e-6)  # |mu shift|^2 = 2048 * 1^2, covariances equal
    assert metrics["sfid"] == pytest.approx(0, abs=1e-4)
    with np.load(tmp_path / "adm.npz") as z:  # statistics only, without the spatial ones
        np.savez(tmp_path / "stats.npz", mu=z["mu"], sigma=z["sigma"])
    assert main(["eval", str(images), "--ref", str(tmp_path / "stats.npz"), "--json", str(tmp_path / "c.json")]) == 0
    record = json.loads((tmp_path / "c.json").read_text())
    assert list(record["metrics"]) == ["fid"] and {"sfid", "precision", "recall", "kid"} <= set(record["skipped"])
    assert len(record["reference"]["statistics_sha256"]) == 64 and "content_sha256" not in record["reference"]


def test_bad_inputs_are_one_line_errors(tmp_path, fake_inception_env, capsys):
    small, big = _npz(tmp_path / "small.npz", 6, 0, size=8), _npz(tmp_path / "big.npz", 6, 1, size=16)
    cases = [
        (["eval", str(tmp_path / "nothing")], "does not exist"),
        (["eval", str(small), "--ref", str(big)], "samples are 8x8 but the reference is 16x16"),
        (["eval", str(small), "--metrics", "is"], "cannot compute IS"),
        (["eval", str(small), "--metrics", "fid"], "needs a reference"),
        (["eval", str(small), "--metrics", "fid,kd"], "unknown metric 'kd'; choose from fid, sfid, is"),
        (["eval", str(small), "--metrics", "fd_dinov4"], "unknown feature space 'dinov4' (did you mean dinov3 or"),
        (["eval", str(small), "--metrics", "fdr", "--fdr-spaces", "dinov2,clop"], "unknown feature space 'clop'"),
        (["eval", str(small), "--metrics", "fd_dinov2@0"], "must be a positive number of pixels"),
        (["eval", str(small), "--kid-subset-size", "1"], "KID needs --kid-subsets >= 1 and --kid-subset-size >= 2"),
        (["eval", str(small), "--encoder-path", "dinov5=/w.pth"], "unknown feature space 'dinov5'"),
        (["eval", str(small), "--ref", "imagenet"], "not an .npz, a folder, or a dataset"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
        assert err.startswith("repflow: error:") and message in err and "\n" not in err, err
    with pytest.raises(SystemExit):  # argparse's own one-line error
        main(["eval", str(small), "--encoder-path", "dinov2"])
    assert "expected NAME=PATH" in capsys.readouterr().err


def test_run_is_sampled_once_then_evaluated_against_its_data(tmp_path, fake_inception_env, capsys):
    run = tmp_path / "run"
    assert main(["train", "demo-fashion-sit", *TINY, "--out", str(run)]) == 0
    argv = [
        "eval",
        str(run),
        "--num-samples",
        "8",
        "--ref-count",
        "16",
        "--sampling-steps",
        "2",
        "--metrics",
        "fid,recall",
    ]
    assert main(argv) == 0
    folder = next((run / "eval").iterdir())
    assert folder.name.startswith("ckpt-00000004-ema-0.9-euler2")
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(8)]
    record = json.loads((folder / "eval.json").read_text())
    assert record["reference"]["source"] == "synthetic:train" and record["reference"]["count"] == 16
    assert (record["sampler"], record["steps"], record["ema"], record["train_step"]) == ("euler", 2, 0.9, 4)
    assert record["labels"] == "index mod 4" and record["checkpoint"].endswith("ckpt-00000004")
    stamps = [p.stat().st_mtime_ns for p in pngs]
    capsys.readouterr()
    assert main(argv) == 0  # cached samples and reference statistics: nothing is regenerated
    assert [p.stat().st_mtime_ns for p in pngs] == stamps
    assert "sampling" not in capsys.readouterr().err
    # the folder on its own: its manifest gives the same protocol to the results file
    alone_json = tmp_path / "f.json"
    assert main(["eval", str(folder), "--ref", str(folder), "--metrics", "fid", "--json", str(alone_json)]) == 0
    alone = json.loads(alone_json.read_text())
    protocol = ("sampler", "steps", "cfg", "cfg_interval", "seed", "labels", "ema", "checkpoint")
    assert {k: alone[k] for k in protocol} == {k: record[k] for k in protocol}
    assert alone["samples_sha256"] == record["samples_sha256"]
