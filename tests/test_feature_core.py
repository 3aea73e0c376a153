"""Feature networks beside TF-Inception go through the same core: preflight names missing weights,
and a registered network's layers stream, cache and score like Inception's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError


@pytest.mark.parametrize(
    "argv, file",
    [
        (["run", "--num-samples", "4", "--features", "dinov2", "--no-progress"], "dinov2_vitl14_pretrain.pth"),
        (["eval", "fashion-mnist:test[0:4]", "--ref", "fashion-mnist:test[4:8]", "--metrics", "cmmd", "--quiet"], "ViT-L-14-336px.pt"),
        (["eval", "fashion-mnist:test[0:4]", "--ref", "fashion-mnist:test[4:8]", "--metrics", "fd_dinov2", "--quiet"], "dinov2_vitl14_pretrain.pth"),
    ],
)
def test_missing_network_weights_fail_in_preflight(argv, file, tmp_path, monkeypatch, capsys):
    """Offline: one `error:` line naming the file, its hash and where it comes from; exit 2; nothing extracted."""
    from geneval.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("geneval.features.extract.FeatureExtractor.extract", lambda *a, **k: pytest.fail("extraction ran"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(err) == 1
    assert file in err[0] and "sha256" in err[0] and "https://" in err[0], err[0]
    assert not (tmp_path / "reports").exists()


class _Toy(torch.nn.Module):
    """A stand-in network: per-channel means and stds of the image (6-d), as the registry's modules do."""

    def forward(self, images):
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return {"toy_feat": torch.cat([x.mean(1), x.std(1)], dim=1)}

    def describe(self):
        return {"network": "toy", "weights_sha256": "none"}


@pytest.fixture
def toy_network(monkeypatch):
    from geneval.features import networks
    from geneval.metrics.compute import frechet_metric
    from geneval.metrics.registry import METRICS, MetricSpec, register

    base = networks.NETWORKS["inception"]
    toy = dataclasses.replace(base, name="toy", features={"toy_feat": 6}, weights=(), extra=None, build=lambda **k: _Toy())

    class _Checked(type(toy)):
        def check(self, weights=None):
            return {"weights_sha256": "none"}

    toy = _Checked(**{f.name: getattr(toy, f.name) for f in dataclasses.fields(toy)})
    monkeypatch.setitem(networks.NETWORKS, "toy", toy)
    spec = MetricSpec(
        "fd_toy",
        False,
        ("toy_feat",),
        True,
        "fd_toy",
        "FD on the toy network",
        stats_suffice=True,
        compute=lambda ctx: frechet_metric(ctx, "fd_toy", "toy_feat"),
        weights=("toy",),
    )
    register(spec)
    yield toy
    METRICS.pop("fd_toy", None)


def test_registered_network_streams_through_the_core(toy_network, fmnist_test, one_thread):
    import geneval
    from geneval.metrics.fid import frechet_distance

    a, b = fmnist_test.images[200:230], fmnist_test.images[230:270]
    rs = geneval.evaluate(a, b, metrics="fid,fd_toy", progress=False, cache=False)
    toy = _Toy()
    fa = toy(np.repeat(a[..., None], 3, -1) if a.ndim == 3 else a)["toy_feat"].double().numpy()
    fb = toy(np.repeat(b[..., None], 3, -1) if b.ndim == 3 else b)["toy_feat"].double().numpy()
    want = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert rs["fd_toy"].value == pytest.approx(want, rel=1e-6)
    assert rs["fd_toy"].n == 30 and rs["fid"].value > 0
    with pytest.raises(GenevalError, match="unknown"):
        geneval.evaluate(a, b, metrics="fd_toy", features="nonet", progress=False)
