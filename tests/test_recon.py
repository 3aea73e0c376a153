"""Reconstruction metrics and `geneval recon`: parity with scikit-image, identical images,
collapsed codebooks, latent statistics, bad input (exit 2) and the shipped demo end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.metrics.recon import ChannelMoments, codebook_usage, psnr_per_image, scale_by_std, ssim_per_image, summarize
from geneval.metrics.registry import get_metric
from geneval.recon import RECON_METRICS, recon


class _Run:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def _cli(capsys, *args):
    """`geneval recon ...` in-process (the entry point's error mapping included)."""
    from geneval.cli import main

    capsys.readouterr()
    try:
        main(["recon", "--no-progress", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return _Run(code, cap.out, cap.err)


def _pairs(fmnist_test, rng, channels):
    x = fmnist_test.images[:6].astype(np.float64) / 255.0
    if channels == 3:
        x = np.concatenate([x, x[::-1], np.roll(x, 3, axis=1)], axis=-1)
    y = np.clip(x + rng.normal(0, 0.08, x.shape), 0, 1)
    return x, y


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_match_scikit_image(fmnist_test, rng, channels):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = _pairs(fmnist_test, rng, channels)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    ours_p, ours_s = psnr_per_image(to_t(x), to_t(y)), ssim_per_image(to_t(x), to_t(y))
    ref_p = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, y)]
    ref_s = [
        structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for a, b in zip(x, y)
    ]
    np.testing.assert_allclose(ours_p, ref_p, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours_s, ref_s, atol=1e-4, rtol=0)
    assert 0.2 < np.mean(ours_s) < 0.99  # a real, non-degenerate comparison


def test_identical_images_give_inf_psnr_stated():
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    y = x.clone()
    y[2] = (y[2] + 0.1).clamp(0, 1)
    p = psnr_per_image(x, y)
    assert math.isinf(p[0]) and math.isinf(p[1]) and np.isfinite(p[2])
    s = summarize(p)
    assert math.isinf(s.mean) and s.n_inf == 2 and s.finite_mean == pytest.approx(p[2])
    assert ssim_per_image(x, x) == pytest.approx(np.ones(3))


def test_mismatched_shapes_are_errors():
    with pytest.raises(GenevalError, match="differ in size"):
        psnr_per_image(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 28, 28))


def test_codebook_usage_collapsed_and_uniform():
    k = 16
    collapsed = codebook_usage(torch.bincount(torch.full((500,), 3), minlength=k))
    assert (collapsed.perplexity, collapsed.usage, collapsed.dead) == (1.0, 1 / k, k - 1)
    uniform = codebook_usage(np.full(k, 10))
    assert uniform.perplexity == pytest.approx(k) and uniform.dead == 0 and uniform.usage == 1.0


def test_collapsed_quantizer_reported_through_recon(tmp_path):
    from geneval.models.ae_formats import save_native_autoencoder
    from geneval.models.autoencoder import AEConfig, build_autoencoder

    cfg = AEConfig(kind="vq", ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32, z_channels=4, embed_dim=3, n_embed=8)
    torch.manual_seed(0)
    model = build_autoencoder(cfg)
    with torch.no_grad():  # every code but #5 is far away: all inputs map to code 5
        model.quantize.embedding.weight.fill_(1e4)
        model.quantize.embedding.weight[5] = 0.0
    save_native_autoencoder(model, tmp_path / "collapsed")
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    rs = recon(str(tmp_path / "collapsed"), data=images, metrics="codebook,psnr", n=None, batch_size=4)
    assert rs.value("codebook_perplexity") == pytest.approx(1.0)
    assert rs.value("codebook_usage") == pytest.approx(1 / 8)
    assert rs.value("dead_codes") == 7
    assert rs["codebook_usage"].extra["collapsed"] is True and rs["dead_codes"].extra["tokens"] == 10 * 16 * 16
    assert rs["psnr"].n == 10


def test_latent_moments_match_torch_and_ldm_recipe():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(b, 4, 3, 5, generator=g) * torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1) + 1 for b in (3, 5, 2)]
    m = ChannelMoments(4)
    for b in batches:
        m.update(b)
    z = torch.cat(batches).double()
    np.testing.assert_allclose(m.channel_mean(), z.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.channel_std(), z.transpose(0, 1).reshape(4, -1).std(1).numpy(), rtol=1e-10)
    mean, std = m.overall()
    assert std == pytest.approx(float(z.flatten().std()), rel=1e-12) and mean == pytest.approx(float(z.mean()))
    assert scale_by_std(batches[0]) == pytest.approx(1.0 / float(batches[0].flatten().std()), rel=1e-6)


def test_every_recon_metric_is_registered():
    for name in RECON_METRICS:
        spec = get_metric(name)
        assert spec.name == name
    assert get_metric("psnr").higher_is_better and not get_metric("rfid").higher_is_better
    assert get_metric("dead_codes").higher_is_better is False


def test_stored_reconstructions_identical_give_inf_and_zero_rfid(tmp_path, fmnist_test):
    a = fmnist_test.images[:8]
    np.savez(tmp_path / "a.npz", arr_0=a)
    rs = recon(data=str(tmp_path / "a.npz"), reconstructions=str(tmp_path / "a.npz"), metrics="psnr,ssim,rfid", n=None)
    assert math.isinf(rs.value("psnr")) and "inf (identical): 8 of 8" in rs["psnr"].extra["note"]
    assert rs.value("ssim") == pytest.approx(1.0)
    # N=8 ≪ 2048 dims: rank-8 covariances, whose clamped eigenvalues leave ~1e-4 of rounding (tr Σ is ~100)
    assert abs(rs.value("rfid")) < 1e-3 and rs["rfid"].mode == "tf" and rs["rfid"].weights_sha256
    assert "biased" in rs["rfid"].extra["note"]


def test_cli_identical_table_and_mismatched_sizes(tmp_path, fmnist_test, capsys):
    a = fmnist_test.images[:4]
    np.savez(tmp_path / "a.npz", arr_0=a)
    np.savez(tmp_path / "b.npz", arr_0=np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))))
    np.savez(tmp_path / "c.npz", arr_0=a[:3])
    ok = _cli(
        capsys,
        "--data",
        str(tmp_path / "a.npz"),
        "--reconstructions",
        str(tmp_path / "a.npz"),
        "--metrics",
        "psnr",
        "--out",
        str(tmp_path / "out.json"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "| psnr | inf (identical) |" in ok.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["results"][0]["value"] == "inf" and saved["config"]["n_read"] == 4
    bad = _cli(capsys, "--data", str(tmp_path / "a.npz"), "--reconstructions", str(tmp_path / "b.npz"), "--metrics", "psnr")
    assert bad.returncode == 2 and "differ in size" in bad.stderr and bad.stderr.startswith("error:")
    short = _cli(capsys, "--data", str(tmp_path / "a.npz"), "--reconstructions", str(tmp_path / "c.npz"), "--metrics", "psnr", "--n", "0")
    assert short.returncode == 2 and "4 images but reconstructions 3" in short.stderr


def test_cli_missing_lpips_weights_fail_in_preflight(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = _cli(capsys, "--metrics", "psnr,lpips", "--n", "2")
    assert r.returncode == 2 and r.stdout == ""
    assert "alexnet-owt-7be5be79.pth" in r.stderr and "7be5be79" in r.stderr and str(tmp_path / "torch") in r.stderr


def test_lpips_row_with_random_trunk_is_marked(tmp_path, fmnist_test):
    rs = recon("demo", data="fashion-mnist:test[0:4]", metrics="lpips", n=None, lpips_random_backbone=True)
    row = rs["lpips"]
    assert row.value > 0 and "mechanics only" in row.extra["lpips_backbone"] and row.higher_is_better is False
    with pytest.raises(GenevalError, match="too small for the LPIPS alex"):
        recon("demo", data=fmnist_test.images[:2], metrics="lpips", n=None, lpips_random_backbone=True)  # 28x28


def test_demo_kl_default_report(tmp_path, capsys):
    r = _cli(capsys, "--n", "8", "--batch-size", "4", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    for ext in ("json", "csv", "md"):
        assert (tmp_path / "rep" / f"results.{ext}").is_file()
    rows = {row["metric"]: row for row in json.loads((tmp_path / "rep" / "results.json").read_text())["results"]}
    assert set(rows) == {"psnr", "ssim", "rfid", "latent_scale", "latent_std", "latent_mean"}
    assert rows["psnr"]["value"] > 15 and rows["ssim"]["value"] > 0.5  # trained: far above an untrained net's ~7 dB
    assert rows["latent_scale"]["extra"]["latents"] == "KL posterior sample (seeded)"
    assert rows["psnr"]["n"] == 8 and rows["psnr"]["model"] == "ae-kl-fmnist"


def test_demo_vq_codebook_and_grayscale_fit():
    rs = recon("demo-vq", data="fashion-mnist:test[0:8]", metrics="psnr,codebook", n=None)
    assert 1.0 < rs.value("codebook_perplexity") <= 128 and rs["codebook_usage"].extra["codebook_size"] == 128
    with pytest.raises(GenevalError, match="codebook"):
        recon("demo", data="fashion-mnist:test[0:2]", metrics="codebook")
    with pytest.raises(GenevalError, match="downsampling factor 4"):
        recon("demo", data=np.zeros((2, 30, 30, 1), np.uint8), metrics="psnr")
