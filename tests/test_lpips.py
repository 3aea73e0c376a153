"""LPIPS: mechanics with the lpips package's random trunk (pnet_rand=True; numbers mean nothing
perceptually), backbone loading from a torchvision file, missing weights, and lpips_div."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError, MissingWeightsError
from geneval.metrics.lpips import build_lpips, load_backbone_state, lpips_distance, lpips_diversity, sample_pairs
from geneval.metrics.registry import get_metric


@pytest.fixture(scope="module")
def rand_lpips():
    return build_lpips("alex", random_backbone=True, seed=0)


def _imgs(seed: int, n: int = 6, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, c), dtype=np.uint8)


def test_identity_is_zero_and_symmetric(rand_lpips):
    x, y = _imgs(0), _imgs(1)
    assert np.array_equal(lpips_distance(rand_lpips, x, x), np.zeros(6))
    dxy, dyx = lpips_distance(rand_lpips, x, y), lpips_distance(rand_lpips, y, x)
    assert (dxy > 0).all()
    np.testing.assert_allclose(dxy, dyx, rtol=1e-6)
    # batch-size independence
    np.testing.assert_allclose(lpips_distance(rand_lpips, x, y, batch_size=4), dxy, rtol=1e-6)


def test_matches_the_package_called_directly(rand_lpips):
    x, y = _imgs(2, 3, 1), _imgs(3, 3, 1)  # grayscale goes in as three repeated channels
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).float().repeat(1, 3, 1, 1) / 127.5 - 1
    ty = torch.from_numpy(y).permute(0, 3, 1, 2).float().repeat(1, 3, 1, 1) / 127.5 - 1
    with torch.no_grad():
        direct = rand_lpips(tx, ty).flatten().double().numpy()
    np.testing.assert_allclose(lpips_distance(rand_lpips, x, y), direct, rtol=1e-6)


def test_random_trunk_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_lpips("alex", random_backbone=True, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_lpips("alex", random_backbone=True, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_backbone_is_loaded_from_a_torchvision_file(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None)
    model = build_lpips("alex", random_backbone=True, seed=9)
    load_backbone_state(model.net, tv.state_dict(), "test")
    assert torch.equal(model.net.slice1[0].weight, tv.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").weight, tv.features[10].weight)
    # an explicit file is hash-checked against torchvision's published prefix
    fake = tmp_path / "alexnet.pth"
    torch.save(tv.state_dict(), fake)
    with pytest.raises(GenevalError, match="7be5be79"):
        build_lpips("alex", backbone=fake)


def test_missing_backbone_names_file_hash_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as e:
        build_lpips("vgg")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "397923af" in msg and str(tmp_path / "torch") in msg


def test_lpips_div_pairs_and_value(rand_lpips, tmp_path, monkeypatch):
    labels = np.array([0] * 5 + [1] * 4 + [2])
    pairs = sample_pairs(labels, 7, seed=3)
    assert set(pairs) == {0, 1}  # class 2 has one image: no pair
    for c, p in pairs.items():
        assert p.shape == (7, 2) and (p[:, 0] != p[:, 1]).all() and (labels[p] == c).all()
    assert all(np.array_equal(pairs[c], sample_pairs(labels, 7, seed=3)[c]) for c in pairs)
    imgs = _imgs(4, 10)
    imgs[5:9] = imgs[5]  # class 1: four copies of one image → zero diversity
    res = lpips_diversity(imgs, labels, rand_lpips, "alex", pairs_per_class=7, seed=3)
    assert res.per_class[1] == 0.0 and res.per_class[0] > 0
    assert res.value == pytest.approx((res.per_class[0] + 0.0) / 2)
    assert res.n_pairs == 14 and res.skipped_classes == [2]
    assert get_metric("lpips_div").higher_is_better is True
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the pipeline entry point resolves real weights
    from geneval.metrics.lpips import lpips_div

    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        lpips_div(imgs, labels)
