"""Residual quantisation (geneval.models.autoencoder_rq) and per-depth codebook metrics
(geneval.metrics.codebook): known usage on a constructed codebook, error falling with depth."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.metrics import codebook as CB
from geneval.models.autoencoder import AEConfig
from geneval.models.autoencoder_rq import ResidualQuantizer, RQAutoencoder, fit_residual_codebooks
from geneval.models.autoencoder_vq import VQAutoencoder


def _known_quantizer() -> ResidualQuantizer:
    # Depth 1: 8 far-apart codes (scale 10); depth 2: 8 small codes (scale 1), so z = C1[a] + C2[b] decodes to (a, b).
    q = ResidualQuantizer(8, 8, depth=2, shared=False)
    with torch.no_grad():
        q.codebooks[0].weight.copy_(torch.eye(8) * 10)
        q.codebooks[1].weight.copy_(torch.eye(8))
    return q


def test_per_depth_usage_on_a_codebook_with_known_usage():
    q = _known_quantizer()
    g = torch.Generator().manual_seed(0)
    a = torch.arange(4).repeat(50)[torch.randperm(200, generator=g)]  # depth 1: codes 0..3, 50 each
    b = torch.full((200,), 5)  # depth 2: always code 5
    z = (q.codebook(0)[a] + q.codebook(1)[b]).view(8, 5, 5, 8).permute(0, 3, 1, 2)
    idx = q.codes(z)
    assert idx.shape == (8, 2, 5, 5)
    assert torch.equal(idx[:, 0].flatten(), a) and torch.equal(idx[:, 1].flatten(), b)
    d1, d2 = CB.per_depth_usage(idx, 8)
    assert d1.perplexity == pytest.approx(4.0) and d1.usage == 0.5 and d1.dead == 4 and d1.tokens == 200
    assert d2.perplexity == pytest.approx(1.0) and d2.usage == 1 / 8 and d2.dead == 7
    pooled = CB.pooled_usage(idx, 8)  # 0..3 at 1/8 each of 400, code 5 at 1/2
    p = np.array([0.125] * 4 + [0.5])
    assert pooled.perplexity == pytest.approx(np.exp(-(p * np.log(p)).sum())) and pooled.dead == 3
    # The partial sums are the codes' running totals; the full sum reproduces z exactly.
    s1, s2 = q.partial_sums(idx)
    assert torch.equal(s2, z) and torch.equal(q.lookup(idx, 1), s1) and torch.equal(q.lookup(idx), z)


def test_reconstruction_error_falls_with_depth(one_thread):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(4000, 4, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.2])
    for shared in (False, True):
        q = ResidualQuantizer(16, 4, depth=4, shared=shared)
        errs = fit_residual_codebooks(q, latents, iters=15, generator=torch.Generator().manual_seed(2))
        assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), errs
        assert errs[0] < latents.pow(2).sum(1).mean()
        # The same numbers through an RQ autoencoder (identity encoder/decoder on 1×1 "images").
        rq = RQAutoencoder(lambda x: x, lambda z: z, q)
        images = latents.view(-1, 4, 1, 1)
        recons, idx = rq.reconstruct_by_depth(images)
        tally = CB.DepthTally(16, 4).update(idx, images, recons)
        rows = tally.report()
        mse = [r["mse"] * 4 for r in rows]  # per value → per vector (4 channels)
        np.testing.assert_allclose(mse, errs, rtol=1e-4)
        assert all(r2["psnr"] > r1["psnr"] for r1, r2 in zip(rows, rows[1:]))
        assert torch.equal(rq.decode_codes(idx), recons[-1])


def test_wraps_a_geneval_autoencoder_and_tallies_merge(one_thread):
    torch.manual_seed(0)
    cfg = AEConfig(
        kind="vq",
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        in_channels=3,
        out_ch=3,
        resolution=8,
        z_channels=4,
        embed_dim=4,
        n_embed=16,
        num_groups=4,
    )
    ae = VQAutoencoder(cfg).eval()
    q = ResidualQuantizer(16, 4, depth=3)
    rq = RQAutoencoder(ae.encode, ae.decode, q)
    assert any(m is ae for m in rq.modules())  # .to()/.eval() reach the wrapped autoencoder
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        fit_residual_codebooks(q, ae.encode(x).permute(0, 2, 3, 1).reshape(-1, 4), iters=5, generator=torch.Generator().manual_seed(0))
    recons, idx = rq.reconstruct_by_depth(x)
    assert idx.shape == (6, 3, 4, 4) and len(recons) == 3 and recons[0].shape == x.shape
    whole = CB.DepthTally(16, 3).update(idx, x, recons)
    parts = CB.DepthTally(16, 3).update(idx[:2], x[:2], [r[:2] for r in recons]) + CB.DepthTally(16, 3).update(
        idx[2:], x[2:], [r[2:] for r in recons]
    )
    assert np.array_equal(whole.counts, parts.counts) and whole.values == parts.values
    np.testing.assert_allclose(whole.sse, parts.sse, rtol=1e-12)
    assert [r["tokens"] for r in whole.report()] == [96, 96, 96]


def test_error_closed_form_and_user_errors():
    x = np.zeros((2, 3, 4, 4))
    sse, n = CB.squared_error_sums(x, [x + 0.1, x + 0.05, x])
    rows = CB.error_by_depth(sse, n)
    assert rows[0]["mse"] == pytest.approx(0.01) and rows[0]["psnr"] == pytest.approx(10 * np.log10(4 / 0.01))
    assert rows[1]["mse"] == pytest.approx(0.0025) and rows[2]["psnr"] == float("inf")
    with pytest.raises(GenevalError, match="lie in"):
        CB.depth_histograms(np.array([[0, 9]]), 8)
    with pytest.raises(GenevalError, match="shape"):
        CB.squared_error_sums(x, [x[:1]])
    with pytest.raises(GenevalError):
        CB.DepthTally(8, 2) + CB.DepthTally(8, 3)


def test_metrics_do_not_import_models():
    tree = ast.parse(Path(CB.__file__).read_text())
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    ]
    assert not any(m and m.startswith(("geneval.models", "geneval.sampling")) for m in mods)


# ---- `geneval recon --rq-depth`: the per-depth check on a real (shipped demo) autoencoder


def _rq_rows(rs, metric):
    return [r for r in rs.rows if r.metric.startswith(metric + "_d")]


def test_recon_fits_a_residual_codebook_and_reports_each_depth(one_thread):
    from geneval.recon import recon

    rs = recon("demo-vq", data="fashion-mnist:test[0:24]", metrics="psnr", n=None, rq_depth=3, rq_codes=16, rq_fit=24, device="cpu")
    psnr = _rq_rows(rs, "rq_psnr")
    assert [r.metric for r in psnr] == ["rq_psnr_d1", "rq_psnr_d2", "rq_psnr_d3"]
    mse = [r.value for r in _rq_rows(rs, "rq_mse")]
    assert mse[-1] < mse[0]  # codes fitted on these latents: more depth, less error
    for r in psnr:  # PSNR on [0, 1] pixels from the same MSE
        m = next(x.value for x in rs.rows if x.metric == f"rq_mse_d{r.extra['depth']}")
        assert r.value == pytest.approx(10 * np.log10(1 / m), rel=1e-9)
        assert r.higher_is_better is True and r.extra["rq_codes"] == 16 and r.extra["rq_fit_images"] == 24
    usage = _rq_rows(rs, "rq_usage")
    dead = _rq_rows(rs, "rq_dead_codes")
    for u, d in zip(usage, dead):
        assert u.value == pytest.approx(1 - d.value / 16) and u.extra["tokens"] == 24 * 8 * 8  # 32×32 images, f4 latents
    assert rs.config["rq_depth"] == 3 and rs.config["rq_fit"] == 24
    from geneval.report.tables import build_comparison, to_markdown

    assert "rq_psnr_d3" in to_markdown(build_comparison([rs]))


def test_recon_with_trained_codebooks_equals_the_quantiser_run_by_hand(tmp_path, one_thread):
    from safetensors.torch import save_file

    from geneval.models.ae_formats import load_autoencoder
    from geneval.recon import recon
    from geneval.sources import open_source

    g = torch.Generator().manual_seed(3)
    books = torch.randn(2, 32, 4, generator=g)  # per-depth codebooks: depth 2 gets its own
    path = tmp_path / "rq.safetensors"
    save_file({"codebooks": books}, str(path))
    rs = recon("demo-vq", data="fashion-mnist:test[0:10]", metrics="rq", n=None, rq_codebooks=str(path), device="cpu")
    assert {r.metric for r in rs.rows} == {f"{m}_d{d}" for m in ("rq_mse", "rq_psnr", "rq_perplexity", "rq_usage", "rq_dead_codes") for d in (1, 2)}

    ae = load_autoencoder("demo-vq")
    q = ResidualQuantizer(32, 4, depth=2, shared=False)
    with torch.no_grad():
        for d in range(2):
            q.codebooks[d].weight.copy_(books[d])
    x = np.concatenate([b for b, _ in open_source("fashion-mnist:test[0:10]").batches(10)])
    x3 = np.repeat(x, 3, axis=-1)
    t = torch.from_numpy(x3).permute(0, 3, 1, 2).float() / 127.5 - 1
    recons, idx = RQAutoencoder(ae.model.encode, ae.model.decode, q).reconstruct_by_depth(t)
    u8 = [((r + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy() / 255.0 for r in recons]
    want = CB.DepthTally(32, 2).update(idx, x3 / 255.0, u8).report(data_range=1.0)
    for row in want:
        got = {r.metric: r.value for r in rs.rows}
        d = row["depth"]
        assert got[f"rq_mse_d{d}"] == pytest.approx(row["mse"], rel=1e-12)
        assert got[f"rq_perplexity_d{d}"] == pytest.approx(row["perplexity"], rel=1e-12)
        assert got[f"rq_dead_codes_d{d}"] == row["dead_codes"]
    assert rs.rows[0].extra["rq_codebooks_sha256"] and "rq_fit_images" not in rs.rows[0].extra


def test_recon_per_depth_codebooks_leave_less_latent_residual(one_thread):
    from geneval.recon import recon

    args = dict(data="fashion-mnist:test[0:16]", metrics="rq_usage", n=None, rq_depth=3, rq_codes=8, rq_fit=16, device="cpu")
    shared = recon("demo-vq", **args).rows
    own = recon("demo-vq", rq_per_depth=True, **args).rows
    assert shared[0].extra["rq_shared_codebook"] is True and own[0].extra["rq_shared_codebook"] is False
    # k-means per depth on the residuals it sees: the fitted residual after the last depth is smaller.
    assert own[0].extra["rq_fit_residual_mse"][-1] < shared[0].extra["rq_fit_residual_mse"][-1]
    assert all(a > b for a, b in zip(own[0].extra["rq_fit_residual_mse"], own[0].extra["rq_fit_residual_mse"][1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rq_depth": 0}, "--rq-depth must be >= 1"),
        ({"rq_depth": 2, "rq_codes": 1}, "--rq-codes must be >= 2"),
        ({"metrics": "rq_psnr"}, "need a residual quantiser: give --rq-depth"),
        ({"ae": None, "reconstructions": "fashion-mnist:test[0:4]", "rq_depth": 2}, "needs an autoencoder"),
        ({"rq_depth": 2, "rq_codes": 4096, "rq_fit": 2}, "cannot fit 4096 codes"),
    ],
)
def test_recon_rq_user_errors(kwargs, match):
    from geneval.recon import recon

    args = {"ae": "demo-vq", "data": "fashion-mnist:test[0:4]", "n": None, "metrics": "psnr", "device": "cpu", **kwargs}
    with pytest.raises(GenevalError, match=match):
        recon(**args)


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"codebooks": torch.zeros(2, 8, 3)}, "code dimension 3"),
        ({"books": torch.zeros(2, 8, 4)}, "needs a float tensor 'codebooks'"),
        ({"codebooks": torch.zeros(1, 8, 4)}, "one shared codebook: give --rq-depth"),
    ],
)
def test_recon_rq_codebook_file_errors(tmp_path, tensors, match):
    from safetensors.torch import save_file

    from geneval.recon import recon

    path = tmp_path / "rq.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(GenevalError, match=match):
        recon("demo-vq", data="fashion-mnist:test[0:4]", n=None, metrics="psnr", device="cpu", rq_codebooks=str(path))
