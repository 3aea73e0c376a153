"""Shared test configuration: --runslow, GPU skipping, an isolated cache dir, small real data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the [test] extra; without it only the fuzz tests fail
    settings = None
if settings is not None:
    # Fuzz budgets: "ci" (default) is bounded and deterministic (the same examples each run, so CI
    # cannot flake); `pytest --hypothesis-profile=long` explores far more, randomly, with a database.
    _fuzz_checks = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile(
        "ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=_fuzz_checks
    )
    settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True, suppress_health_check=_fuzz_checks)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """A cache dir shared by the session so converted weights are built once per test run.

    Reuses $GENEVAL_CACHE when the caller set one (CI keeps it between steps).
    """
    d = os.environ.get("GENEVAL_CACHE") or str(tmp_path_factory.mktemp("geneval-cache"))
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, session_cache):
    monkeypatch.setenv("GENEVAL_CACHE", session_cache)
    monkeypatch.setenv("GENEVAL_OFFLINE", "1")


@pytest.fixture(scope="session")
def fmnist_test():
    from geneval.sources.datasets import load_fashion_mnist

    return load_fashion_mnist("test", pad_to=None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny models: threading overhead dominates, and a shared
    2-core box under contention is ~100x slower multi-threaded); the count is restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
