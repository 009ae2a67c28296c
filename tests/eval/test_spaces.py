"""Feature spaces of frozen encoders: the preprocessing against a restatement of RAEv2's extractor, FD / KID in
DINOv2 space end to end (weights by path, real architecture, random tiny widths), and FDr^k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy import linalg

from repflow._compat import require
from repflow.cli import main
from repflow.eval.evaluate import EvalOptions, evaluate, metrics_from_features, resolve_metric
from repflow.eval.extractors import Extractors, parse_space
from repflow.eval.fdr import FDR6, fdr
from repflow.eval.features import FeatureSet
from repflow.eval.fid import compute_stats, frechet_distance
from repflow.eval.reference import Reference, SpaceFeatures
from repflow.eval.sources import NpzSource

from ..encoders.conftest import TINY_DINO, timm_dinov2


def _npz(path, n, seed, size=12, shift=0):
    arr = np.random.default_rng(seed).integers(0, 200, (n, size, size, 3), dtype=np.uint8) + np.uint8(shift)
    np.savez(path, arr_0=arr)
    return path


def test_preprocessing_and_features_match_raev2s_timm_extractor(tmp_path):
    # RAEv2 / FD-loss: timm model with dynamic_img_size + dynamic_img_pad, [0, 1] input resized bicubic with
    # antialias, ImageNet mean/std, forward_features()[:, 0]. 40 px -> 32 (a downsample, so antialias matters)
    # -> padded to 42 (3 x 3 patches of 14): dropping the padding or the antialias changes the features.
    timm = require("timm")
    model = timm_dinov2(0)
    file = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    ours = Extractors(paths={"dinov2-test": str(file)}).get("dinov2-test@32")(images, ("global",))["global"]
    theirs_net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56, dynamic_img_size=True,
                                   dynamic_img_pad=True, num_classes=0, **TINY_DINO).eval()  # fmt: skip
    theirs_net.load_state_dict(model.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = F.interpolate(images.float() / 255, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        theirs = theirs_net.forward_features((x - mean) / std)[:, 0]
    assert (ours - theirs).abs().max().item() < 1e-5
    # FD from these features: ours (eigenvalues of S1^1/2 S2 S1^1/2) against theirs (scipy sqrtm of S1 S2)
    a = torch.cat([ours, ours.flip(0) * 1.1 + 0.2]).double().numpy()
    b = np.random.default_rng(0).standard_normal((40, a.shape[1])) * 0.5
    sa, sb = compute_stats(a), compute_stats(b)
    covmean = linalg.sqrtm(sa.sigma @ sb.sigma).real
    scipy_fd = ((sa.mu - sb.mu) ** 2).sum() + np.trace(sa.sigma + sb.sigma - 2 * covmean)
    assert frechet_distance(sa, sb) == pytest.approx(scipy_fd, rel=1e-6)


def test_fd_and_kid_in_dinov2_space_end_to_end(tmp_path, fake_inception_env, dinov2_dir, capsys):
    a, b = _npz(tmp_path / "a.npz", 10, 0), _npz(tmp_path / "b.npz", 12, 1, shift=40)
    common = ["--metrics", "fd_dinov2@28,kid_dinov2@28,fid", "--encoder-path", f"dinov2={dinov2_dir}"]
    assert main(["eval", str(a), "--ref", str(a), *common, "--json", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["metrics"]["fd_dinov2@28"] == pytest.approx(0, abs=1e-6)  # FD of a set with itself
    ex = same["extractors"]["dinov2-vitl14@28"]
    assert len(ex["weights_sha256"]) == 16 and ex["dim"] == 32 and "bicubic+antialias" in ex["preprocess"]
    assert set(same["reference"]["cache"]) == {"inception", "dinov2-vitl14@28"}  # one cache file per space
    capsys.readouterr()
    assert main(["eval", str(b), "--ref", str(a), *common, "--json", str(tmp_path / "other.json")]) == 0
    assert capsys.readouterr().err.count("statistics reused") == 2  # both spaces of the reference came from cache
    other = json.loads((tmp_path / "other.json").read_text())
    # the same FD by hand, from the extractor's own features
    net = Extractors(paths={"dinov2-vitl14": str(dinov2_dir)}).get("dinov2@28")
    feats = [torch.cat([net(x, ("global",))["global"] for x in NpzSource(p).batches(4)]).numpy() for p in (b, a)]
    by_hand = frechet_distance(compute_stats(feats[0]), compute_stats(feats[1]))
    assert other["metrics"]["fd_dinov2@28"] == pytest.approx(by_hand, rel=1e-6) and by_hand > 1e-3
    assert other["metrics"]["kid_dinov2@28"] > 0 and "kid_dinov2@28_std" in other["metrics"]


def test_fdr_is_the_mean_of_fd_over_valfd(tmp_path, fake_inception_env, dinov2_dir):
    ref, held = _npz(tmp_path / "r.npz", 12, 0), _npz(tmp_path / "h.npz", 12, 1)
    gen = _npz(tmp_path / "g.npz", 12, 2, shift=50)
    nets = Extractors(paths={"dinov2": str(dinov2_dir)})
    spaces = ("inception", "dinov2@28")
    opts = EvalOptions(metrics=("fdr", "fid", "fd_dinov2@28"), explicit=True, reference=str(ref), fdr_spaces=spaces,
                       fdr_norm=str(held), progress=False)  # fmt: skip
    held_out = evaluate(NpzSource(held), nets, opts)
    assert held_out.metrics["fdr"] == pytest.approx(1.0, rel=1e-9)  # the held-out set is 1 in every space
    result = evaluate(NpzSource(gen), nets, opts)
    norms = {"inception": held_out.metrics["fid"], "dinov2-vitl14@28": held_out.metrics["fd_dinov2@28"]}
    fds = {"inception": result.metrics["fid"], "dinov2-vitl14@28": result.metrics["fd_dinov2@28"]}
    expected = (fds["inception"] / norms["inception"] + fds["dinov2-vitl14@28"] / norms["dinov2-vitl14@28"]) / 2
    assert result.metrics["fdr"] == pytest.approx(expected, rel=1e-9) and result.metrics["fdr"] > 1
    assert result.details["fdr"]["k"] == 2 and result.details["fdr"]["norm"] == pytest.approx(norms, rel=1e-9)


def test_fdr6_uses_raev2s_six_spaces_and_constants():
    assert fdr({"a": 2.0, "b": 9.0}, {"a": 1.0, "b": 3.0}) == (2.5, {"a": 2.0, "b": 3.0})
    metric = resolve_metric("fdr6")
    assert metric.spaces == ("inception", "convnextv2-base@224", "dinov2-vitl14@256", "mae-vitl16@224",
                             "siglip2-so400m16@224", "clip-vitl14@256")  # fmt: skip
    rng = np.random.default_rng(0)
    samples, ref = {}, {}
    for i, space in enumerate(metric.spaces):
        out = "pool" if space == "inception" else "global"
        samples[space] = {out: rng.standard_normal((30, 4)) + 0.1 * i}
        ref[space] = SpaceFeatures({out: compute_stats(rng.standard_normal((40, 4)))})
    values, details, _ = metrics_from_features(FeatureSet(samples, 30, ""), Reference("r", ref, None, 40), [metric],
                                               EvalOptions())  # fmt: skip
    fds = {s: frechet_distance(compute_stats(next(iter(samples[s].values()))), next(iter(ref[s].stats.values())))
           for s in metric.spaces}  # fmt: skip
    assert values["fdr6"] == pytest.approx(np.mean([fds[s] / FDR6[s] for s in metric.spaces]), rel=1e-12)
    assert details["fdr6"]["norm"] == FDR6 and "ImageNet 256" in details["fdr6"]["norm_source"]


def test_space_names():
    assert parse_space("dinov2").name == "dinov2-vitl14@224" and parse_space("clip@256").name == "clip-vitl14@256"
    assert parse_space("inception").size == 299
    with pytest.raises(ValueError, match="takes no @SIZE"):
        parse_space("inception@256")
    with pytest.raises(ValueError, match="not --encoder-path"):
        Extractors(paths={"inception": "x.pt"})


def test_a_reference_folders_unreadable_files_are_said_once_per_use_in_any_space(tmp_path, fake_inception_env,
                                                                                 dinov2_dir, capsys):  # fmt: skip
    from PIL import Image

    ref = tmp_path / "ref"
    ref.mkdir()
    for i, image in enumerate(np.random.default_rng(0).integers(0, 255, (6, 12, 12, 3), dtype=np.uint8)):
        Image.fromarray(image).save(ref / f"{i:06d}.png")
    (ref / "000006.png").write_bytes(b"")  # unreadable
    samples = _npz(tmp_path / "s.npz", 8, 1)
    dino = ["--encoder-path", f"dinov2={dinov2_dir}"]
    # computed (the Inception space), then the Inception space reused and DINOv2's computed, then both reused
    for metrics, reused in (("fid", 0), ("fid,fd_dinov2@28", 1), ("fid,fd_dinov2@28", 2)):
        assert main(["eval", str(samples), "--ref", str(ref), "--metrics", metrics, *dino]) == 0
        err = capsys.readouterr().err
        assert err.count("statistics reused") == reused
        assert err.count(f"warning: reference: skipped 1 of 7 files under {ref} (000006.png: unreadable") == 1
        reference = json.loads((tmp_path / "s.eval.json").read_text())["reference"]
        assert reference["count"] == 6 and reference["skipped_files"].startswith("skipped 1 of 7 files")
        assert len(reference["content_sha256"]) == 64 and len(reference["cache"]) == len(metrics.split(","))
