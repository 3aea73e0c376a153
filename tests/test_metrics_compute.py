"""compute_metrics: features → MetricValues, with provenance and clear errors for missing inputs."""

from __future__ import annotations

import pytest

from geneval.errors import GenevalError
from geneval.metrics.compute import FeatureSet, MetricOptions, compute_metrics, stats_from_npz_arrays
from geneval.metrics.fid import fid_from_features
from geneval.metrics.inception_score import inception_score
from geneval.metrics.kid import kernel_inception_distance
from geneval.metrics.prdc import density_coverage, precision_recall
from geneval.metrics.registry import METRICS, MetricSpec, register
from geneval.metrics.stats import GaussianStats


@pytest.fixture
def feats(rng):
    samples = FeatureSet(
        pool3=rng.normal(size=(120, 24)) + 0.2,
        spatial=rng.normal(size=(120, 10)),
        logits=rng.normal(size=(120, 1008)) * 3,
    )
    ref = FeatureSet(pool3=rng.normal(size=(100, 24)), spatial=rng.normal(size=(100, 10)) * 1.2)
    return samples, ref


def test_values_match_the_pure_functions(feats):
    samples, ref = feats
    opts = MetricOptions(kid_subsets=10, is_convention="torch-fidelity", is_splits=4)
    out = compute_metrics("kid,fid,sfid,is,pr,dc", samples, ref, opts)
    assert [v.name for v in out] == ["kid", "fid", "sfid", "is", "precision", "recall", "density", "coverage"]
    got = {v.name: v for v in out}
    assert got["fid"].value == fid_from_features(samples.pool3, ref.pool3)
    assert got["sfid"].value == fid_from_features(samples.spatial, ref.spatial)
    assert (got["is"].value, got["is"].std) == inception_score(samples.logits, "torch-fidelity", splits=4)
    assert (got["kid"].value, got["kid"].std) == kernel_inception_distance(samples.pool3, ref.pool3, subsets=10)
    assert (got["precision"].value, got["recall"].value) == precision_recall(ref.pool3, samples.pool3)
    assert (got["density"].value, got["coverage"].value) == density_coverage(ref.pool3, samples.pool3)
    # Provenance in extra.
    assert got["is"].extra["convention"] == "torch-fidelity" and got["is"].extra["splits"] == 4
    assert got["kid"].extra["subset_size"] == 100 and got["kid"].extra["seed"] == 2020
    assert got["precision"].extra["k"] == 3 and got["density"].extra["k"] == 5
    assert all(v.n == 120 for v in out)
    assert got["fid"].extra["n_ref"] == 100 and got["fid"].std is None


def test_stats_only_reference(feats):
    samples, ref = feats
    s = GaussianStats.from_features(ref.pool3)
    npz_like = {"mu": s.mu, "sigma": s.sigma}
    pool3_stats, spatial_stats = stats_from_npz_arrays(npz_like)
    assert spatial_stats is None
    stats_ref = FeatureSet(pool3_stats=pool3_stats)
    (fid,) = compute_metrics("fid", samples, stats_ref)
    assert fid.value == pytest.approx(fid_from_features(samples.pool3, ref.pool3), rel=1e-12)
    assert fid.extra["ref_source"] == "statistics" and fid.extra["n_ref"] is None
    with pytest.raises(GenevalError, match="per-image pool3 features of the reference.*only mu/sigma"):
        compute_metrics("fid,precision", samples, stats_ref)
    with pytest.raises(GenevalError, match="sfid needs spatial"):
        compute_metrics("sfid", samples, stats_ref)


def test_small_n_warning(rng):
    small = FeatureSet(pool3=rng.normal(size=(30, 40)))
    big = FeatureSet(pool3=rng.normal(size=(60, 40)))
    (fid,) = compute_metrics("fid", small, big)
    assert len(fid.extra["warnings"]) == 1 and "biased" in fid.extra["warnings"][0]
    assert "N=30" in fid.extra["warnings"][0] and "N=60" not in fid.extra["warnings"][0]
    (fid,) = compute_metrics("fid", big, big)
    assert fid.extra["warnings"] == []


def test_missing_inputs_are_clear_errors(feats, rng):
    samples, ref = feats
    with pytest.raises(GenevalError, match="is needs the samples' Inception logits"):
        compute_metrics("is", FeatureSet(pool3=samples.pool3))
    with pytest.raises(GenevalError, match="no reference"):
        compute_metrics("fid", samples, None)
    with pytest.raises(GenevalError, match="at least 2 samples"):
        compute_metrics("fid", FeatureSet(pool3=rng.normal(size=(1, 24))), ref)
    with pytest.raises(GenevalError, match="unknown metric 'fld'.*precision"):
        compute_metrics("fld", samples, ref)
    with pytest.raises(GenevalError, match="KID subset size 500 is larger"):
        compute_metrics("kid", samples, ref, MetricOptions(kid_subset_size=500))
    with pytest.raises(GenevalError, match="24-d pool3 statistics, the reference 12-d"):
        compute_metrics("fid", samples, FeatureSet(pool3=rng.normal(size=(50, 12))))
    with pytest.raises(GenevalError, match="disagree on the number of images"):
        FeatureSet(pool3=rng.normal(size=(5, 3)), logits=rng.normal(size=(4, 10)))


def test_is_needs_no_reference_and_records_adm_chunks(feats):
    samples, _ = feats
    (v,) = compute_metrics("is", samples, None, MetricOptions(is_chunk_size=50))
    assert v.extra == {"convention": "adm", "chunk_size": 50, "splits": 3, "std_ddof": 0, "std_method": "split-std-3"}


def test_non_feature_metric_refused(feats):
    samples, ref = feats
    spec = MetricSpec("zz_pixels", True, (), True, "zz_pixels", "test only")
    register(spec)
    try:
        with pytest.raises(GenevalError, match="cannot be computed by `geneval eval`"):
            compute_metrics("fid,zz_pixels", samples, ref)
    finally:
        METRICS.pop("zz_pixels", None)
