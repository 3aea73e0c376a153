"""The metric registry: specs, group expansion, clear errors."""

from __future__ import annotations

import pytest

from geneval.errors import GenevalError
from geneval.metrics.registry import METRICS, MetricSpec, expand_metrics, get_metric, register


def test_engine_metrics_present_with_directions():
    for name in ("fid", "sfid", "kid"):
        assert get_metric(name).higher_is_better is False
    for name in ("is", "precision", "recall", "density", "coverage"):
        assert get_metric(name).higher_is_better is True
    assert get_metric("is").needs == ("logits",) and not get_metric("is").needs_ref
    assert get_metric("sfid").needs == ("spatial",)
    assert get_metric("fid").stats_suffice and not get_metric("precision").stats_suffice


def test_expand_groups_and_duplicates():
    assert expand_metrics("fid,pr,dc") == ["fid", "precision", "recall", "density", "coverage"]
    assert expand_metrics(" FID , recall,pr,fid ") == ["fid", "recall", "precision"]
    assert expand_metrics(["is", "kid"]) == ["is", "kid"]


def test_unknown_and_empty_raise_with_known_names():
    with pytest.raises(GenevalError) as e:
        expand_metrics("fid,fld")
    msg = str(e.value)
    assert "'fld'" in msg and "fid" in msg and "precision" in msg and "pr" in msg
    assert "\n" not in msg
    with pytest.raises(GenevalError, match="no metrics"):
        expand_metrics(" , ")
    with pytest.raises(GenevalError, match="unknown metric"):
        get_metric("nope")


def test_register_idempotent_and_conflicts():
    spec = MetricSpec("zz_test_metric", True, (), False, "zz_group", "test only")
    try:
        register(spec)
        register(MetricSpec("zz_test_metric", True, (), False, "zz_group", "test only"))
        assert expand_metrics("zz_group") == ["zz_test_metric"]
        with pytest.raises(ValueError, match="different spec"):
            register(MetricSpec("zz_test_metric", False, (), False, "zz_group", "test only"))
    finally:
        METRICS.pop("zz_test_metric", None)
    with pytest.raises(ValueError):
        register(MetricSpec("Bad,Name", True, (), False, "g", ""))
