import pytest
import torch
from torch import nn

from repflow.eval.inception import TFInception, find_inception, load_inception, load_logits_weight


def test_taps_match_the_scripted_network(real_inception_file, real_inception):
    scripted = torch.jit.load(str(real_inception_file)).eval()
    x = torch.rand(2, 3, 299, 299) * 255  # already 299: no resize, so only the taps are compared
    out = real_inception(x)
    with torch.inference_mode():
        expected_pool = scripted((x - 128) / 128)  # fid-helper's file: layers only, input already normalised
        h = (x - 128) / 128
        layers = scripted.net.layers
        for name, stage in layers.named_children():
            if name == "mixed_6":
                break
            h = stage(h)
        branch = layers.mixed_6.conv(h)  # (2, 192, 17, 17): TF's mixed_6/conv
    torch.testing.assert_close(out.pool, expected_pool, rtol=0, atol=1e-5)
    assert out.spatial.shape == (2, 17 * 17 * 7)
    # ADM flattens the NHWC tensor: element (h, w, c) sits at (h * 17 + w) * 7 + c
    torch.testing.assert_close(out.spatial[:, (3 * 17 + 5) * 7 + 2], branch[:, 2, 3, 5], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.spatial.view(2, 17, 17, 7), branch[:, :7].permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    assert out.logits is None and not real_inception.has_logits  # fid-helper's copy has no classifier
    assert len(real_inception.fingerprint()) == 10


def test_logits_are_unbiased_classifier_outputs(fake_inception_file, tmp_path):
    w = torch.randn(1008, 2048)
    torch.save({"fc.weight": w, "fc.bias": torch.ones(1008)}, tmp_path / "fc.pth")
    model = load_inception(fake_inception_file, logits_weight=tmp_path / "fc.pth")
    out = model(torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8))
    torch.testing.assert_close(out.logits, out.pool @ w.T)  # no bias, as ADM and torch-fidelity use


def test_file_lookup_and_bad_files_are_clear_errors(tmp_path, monkeypatch, fake_inception_file):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inception(tmp_path / "missing.pt")
    monkeypatch.setenv("REPFLOW_INCEPTION", str(fake_inception_file))
    assert find_inception() == fake_inception_file
    not_script = tmp_path / "junk.pt"
    not_script.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_inception(not_script)
    other = tmp_path / "linear.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(other))
    with pytest.raises(ValueError, match="not the TF inception"):
        load_inception(other)
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="no 1008x2048 classifier"):
        load_logits_weight(tmp_path / "small.pth")


def test_is_fetches_the_standard_file_once_or_explains(tmp_path, monkeypatch, fake_inception_file):
    import repflow.eval.inception as inc

    monkeypatch.setenv("REPFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv("REPFLOW_INCEPTION", raising=False)
    monkeypatch.setattr(inc, "_fid_helper_file", lambda: fake_inception_file)  # the classifier-less copy
    assert not load_inception().has_logits  # FID alone never downloads

    def offline(url, dest):
        raise FileNotFoundError(f"the download of {url} failed (offline)")

    monkeypatch.setattr(inc, "_download", offline)
    with pytest.raises(FileNotFoundError, match="download of .*inception-2015-12-05.pt failed"):
        load_inception(want_logits=True)

    def fetched(url, dest):  # a network: the standard file (here the stand-in plus a classifier) lands in the cache
        full = torch.jit.load(str(fake_inception_file))
        scripted = torch.jit.script(_WithClassifier(full))
        dest.parent.mkdir(parents=True, exist_ok=True)
        scripted.save(str(dest))
        return dest

    monkeypatch.setattr(inc, "_download", fetched)
    model = load_inception(want_logits=True)
    assert model.has_logits and model.source == str(tmp_path / "inception" / "inception-2015-12-05.pt")
    assert find_inception() == tmp_path / "inception" / "inception-2015-12-05.pt"  # cached: found first next time


class _WithClassifier(nn.Module):
    """NVIDIA's file layout: ``layers`` at the top and an ``output`` Linear(2048, 1008)."""

    def __init__(self, base):
        super().__init__()
        self.layers = base.layers
        self.output = nn.Linear(2048, 1008)

    def forward(self, x):
        return self.output(self.layers(x).reshape(-1, 2048))


def test_input_shape_is_checked(fake_inception_file):
    model = TFInception(torch.jit.load(str(fake_inception_file)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 32, 32))


def _both_paths(model, x):
    model.optimise = False
    eager = model(x)
    model.optimise = True
    fast = model(x)
    model.optimise = None
    return eager, fast


def test_cpu_fast_path_equals_the_layers_and_ignores_batch_and_threads(real_inception):
    x = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    eager, fast = _both_paths(real_inception, x)
    # the frozen network on channels-last memory: the same numbers up to float rounding
    torch.testing.assert_close(fast.pool, eager.pool, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.spatial, eager.spatial, rtol=0, atol=1e-4)
    assert (fast.pool - eager.pool).abs().max() > 0  # a different path, not the same one twice
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.cat([real_inception(i).pool for i in x.split(1)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, fast.pool)  # every image alone on one thread: the same bits at any batch / thread count
    assert torch.get_num_threads() == threads  # restored after the call


def test_fast_path_on_the_stand_in(fake_inception_file):
    model = TFInception(torch.jit.load(str(fake_inception_file)))
    x = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    eager, fast = _both_paths(model, x)
    torch.testing.assert_close(fast.pool, eager.pool, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.spatial, eager.spatial, rtol=0, atol=1e-5)
    assert torch.equal(torch.cat([model(x[:2]).pool, model(x[2:]).pool]), fast.pool)
