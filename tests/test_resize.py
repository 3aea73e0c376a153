"""Preprocessing modes against the reference implementations (torch-fidelity, pytorch-fid, PIL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geneval.errors import GenevalError
from geneval.features.resize import preprocess, resize_tf1_bilinear, to_nchw_uint8
from geneval.sources.datasets import load_skimage


@pytest.fixture(scope="module")
def photos():
    """Real photos of several sizes: 512², 400×600, 300×451 (down- and non-square resizes)."""
    return load_skimage(("astronaut", "coffee", "chelsea"))


def _nchw_float(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float()


def test_tf_mode_matches_torch_fidelity_tf1_resize(fmnist_test, photos):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as tf1

    gray = np.repeat(fmnist_test.images[:4], 3, axis=-1)  # 28×28 upsampled
    batches = [gray, gray[:, 2:, 5:], *[p[None] for p in photos]]  # + odd sizes, + downsampling
    for imgs in batches:
        ref = tf1(_nchw_float(imgs), size=(299, 299), align_corners=False)
        ours = preprocess(imgs, "tf")
        assert ours.shape == (imgs.shape[0], 3, 299, 299) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, (ref - 128) / 128, atol=1e-4, rtol=0)


def test_tf1_resize_known_values():
    # 2 → 4 pixels, TF1 legacy: src = dst·0.5 → [a, (a+b)/2, b, b] (edge repeats, no half-pixel shift)
    x = torch.tensor([[[[0.0, 100.0]]]])
    out = resize_tf1_bilinear(x.expand(1, 1, 2, 2).contiguous(), size=4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 50.0, 100.0, 100.0]))


def test_pytorch_mode_matches_pytorch_fid_preprocessing(fmnist_test, photos):
    from pytorch_fid.inception import InceptionV3

    # pytorch-fid's own forward with its network replaced by identity: only its preprocessing runs.
    pf = InceptionV3.__new__(InceptionV3)
    torch.nn.Module.__init__(pf)
    pf.resize_input, pf.normalize_input = True, True
    pf.blocks = torch.nn.ModuleList([torch.nn.Identity()])
    pf.output_blocks, pf.last_needed_block = [0], 0
    for imgs in (np.repeat(fmnist_test.images[:4], 3, axis=-1), photos[1][None]):
        ref = pf(_nchw_float(imgs) / 255.0)[0]  # pytorch-fid reads images with ToTensor (x/255)
        torch.testing.assert_close(preprocess(imgs, "pytorch"), ref, atol=1e-6, rtol=0)


def test_clean_mode_matches_pil_float_bicubic(photos, fmnist_test):
    for img in (photos[2], np.repeat(fmnist_test.images[0], 3, axis=-1)):
        ref = np.stack([np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode=None).resize((299, 299), Image.BICUBIC)) for c in range(3)])
        ref = (np.clip(ref, 0, 255) - 128) / 128
        ours = preprocess(img[None], "clean")[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_modes_differ(photos):
    img = photos[2][None]
    tf, pt, clean = (preprocess(img, m) for m in ("tf", "pytorch", "clean"))
    assert (tf - pt).abs().max() > 1e-2 and (tf - clean).abs().max() > 1e-2


def test_grayscale_rgba_and_layouts(rng):
    gray = rng.integers(0, 256, (2, 20, 24), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    expected = preprocess(rgb, "tf")
    torch.testing.assert_close(preprocess(gray, "tf"), expected, atol=0, rtol=0)  # N×H×W
    torch.testing.assert_close(preprocess(gray[..., None], "tf"), expected, atol=0, rtol=0)  # N×H×W×1
    nchw = torch.from_numpy(gray)[:, None]  # N×1×H×W tensor
    torch.testing.assert_close(preprocess(nchw, "tf"), expected, atol=0, rtol=0)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (2, 20, 24, 1), dtype=np.uint8)], axis=-1)
    torch.testing.assert_close(preprocess(rgba, "tf"), expected, atol=0, rtol=0)
    nhwc_tensor = torch.from_numpy(rgb)
    torch.testing.assert_close(preprocess(nhwc_tensor, "tf"), expected, atol=0, rtol=0)
    assert to_nchw_uint8(rgb).shape == (2, 3, 20, 24)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((2, 8, 8, 2), np.uint8), "channels"),
        (np.zeros((8, 8), np.uint8), "shape"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy array or torch tensor"),
    ],
)
def test_bad_inputs_raise(bad, match):
    with pytest.raises(GenevalError, match=match):
        preprocess(bad, "tf")


def test_unknown_mode():
    with pytest.raises(GenevalError, match="unknown resize mode"):
        preprocess(np.zeros((1, 8, 8, 3), np.uint8), "bicubic")


@pytest.mark.gpu
def test_tf_mode_on_cuda_matches_cpu(photos):
    img = photos[1][None]
    torch.testing.assert_close(preprocess(img, "tf", device="cuda").cpu(), preprocess(img, "tf"), atol=1e-4, rtol=0)


def test_tf1_resize_is_bit_identical_to_torch_fidelity_on_cpu(fmnist_test, photos):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as tf1

    gray = np.repeat(fmnist_test.images[:2], 3, axis=-1)
    for imgs in (gray, gray[:, 2:, 5:], photos[2][None]):
        x = _nchw_float(imgs).contiguous()
        assert torch.equal(resize_tf1_bilinear(x), tf1(x, size=(299, 299), align_corners=False))
