import numpy as np
import pytest
import torch

from repflow._compat import import_torchvision
from repflow.eval.resize import resize_for_inception, resize_pil_bicubic, resize_tf_bilinear


def test_tf_bilinear_hand_computed_upsampling():
    # TF1 legacy (align_corners=False, no half-pixel centres): out[i] samples in[i * in/out], edge repeated
    x = torch.tensor([[[[0.0, 10.0]]]])  # (1, 1, 1, 2)
    out = resize_tf_bilinear(x.expand(1, 1, 2, 2).contiguous(), size=4)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0.0, 5.0, 10.0, 10.0])
    np.testing.assert_allclose(out[0, 0, :, 1].numpy(), [5.0, 5.0, 5.0, 5.0])


def test_tf_bilinear_matches_torch_fidelity_tf1_emulation():
    import_torchvision()
    compat = pytest.importorskip("torch_fidelity.interpolate_compat_tensorflow")
    x = torch.rand(2, 3, 28, 37) * 255
    ours = resize_tf_bilinear(x, 299)
    ref = compat.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-3)


def test_tf_bilinear_matches_nvidia_grid_sample_formulation():
    # The resize inside NVIDIA's inception-2015-12-05.pt (used by clean-fid's legacy_tensorflow mode):
    # affine_grid shifted by 1/in - 1/out, bilinear grid_sample with border padding.
    x = torch.rand(2, 3, 32, 32) * 255
    b, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / w - 1 / 299
    theta[1, 2] += 1 / h - 1 / 299
    grid = torch.nn.functional.affine_grid(theta[None].repeat(b, 1, 1), [b, c, 299, 299], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(resize_tf_bilinear(x, 299), ref, rtol=0, atol=1e-2)


def test_clean_mode_matches_clean_fid_resizer():
    import_torchvision()
    resize = pytest.importorskip("cleanfid.resize")
    img = (np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)
    ref = resize.make_resizer("PIL", False, "bicubic", (299, 299))(img)  # (299, 299, 3) float32
    ours = resize_pil_bicubic(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_same_size_is_untouched_and_unknown_mode_is_an_error():
    x = torch.rand(1, 3, 299, 299)
    assert resize_tf_bilinear(x) is x
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_for_inception(x, "lanczos")
