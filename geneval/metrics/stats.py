"""Gaussian feature statistics: a frozen (mu, sigma, n) record and a mergeable float64 accumulator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError


# eq=False: numpy fields make the generated __eq__ ambiguous; compare arrays explicitly.
@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Mean and covariance (N−1) of a feature set, in float64.

    Args:
        mu: (d,) mean.
        sigma: (d, d) covariance with the N−1 normalisation (np.cov's default).
        n: number of feature vectors behind them; None when unknown (e.g. a stats-only npz).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise GenevalError(f"Gaussian statistics need mu (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, feats: Any) -> GaussianStats:
        """Statistics of an (N, d) feature array (numpy or torch).

        Args:
            feats: (N, d) features, N ≥ 2.
        """
        x = as_feature_matrix(feats, "features")
        acc = GaussianAccumulator(x.shape[1])
        acc.update(x)
        return acc.stats()


# FeatureStats is the name some callers know; it is the same record.
FeatureStats = GaussianStats


def as_feature_matrix(feats: Any, what: str = "features") -> np.ndarray:
    """An (N, d) float64 numpy array from numpy or torch input, validated.

    Args:
        feats: (N, d) array-like or tensor.
        what: how the error message names the input.
    """
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise GenevalError(f"{what} must be a 2-d (N, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise GenevalError(f"{what} contain non-finite values in {bad} of {x.shape[0]} rows")
    return x


class GaussianAccumulator:
    """Streaming n, Σ(x−c), Σ(x−c)(x−c)ᵀ in float64; merges across batches, files and GPUs.

    Numerics: sums are taken around a shift c (the mean of the first batch seen, unless given)
    so that features with a large common offset do not lose digits to cancellation in
    Σxxᵀ − n·μμᵀ. Two accumulators with the same shift merge by plain addition; with different
    shifts the other's sums are re-centred first (Σ(y+δ) = S1 + nδ, Σ(y+δ)(y+δ)ᵀ = S2 + S1δᵀ +
    δS1ᵀ + nδδᵀ with δ = c_other − c_self), which is exact algebra and adds only rounding of the
    size of δ, small since both shifts sit near the data. Pass the same `shift` (e.g. zeros)
    everywhere when bit-identical sums regardless of merge order matter more.

    Args:
        dim: feature dimension d.
        device: where the sums live (float64 matmuls run there); results come back as numpy.
        shift: optional fixed centring vector (d,).
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu", shift: Any = None):
        if int(dim) < 1:
            raise GenevalError(f"feature dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.device = torch.device(device)
        self.n = 0
        self._shift: torch.Tensor | None = None
        if shift is not None:
            self._shift = self._vector(shift, "shift")
        self._s1 = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self._s2 = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)

    def _vector(self, v: Any, what: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
        t = t.to(self.device, torch.float64).reshape(-1)
        if t.shape[0] != self.dim:
            raise GenevalError(f"{what} has {t.shape[0]} dims, accumulator has {self.dim}")
        return t

    def update(self, feats: Any) -> GaussianAccumulator:
        """Add a batch of feature vectors.

        Args:
            feats: (B, d) numpy array or torch tensor (any dtype/device); B may be 0.
        """
        x = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(np.asarray(feats))
        x = x.detach().to(self.device, torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise GenevalError(f"features must be (B, {self.dim}), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        if not torch.isfinite(x).all():
            raise GenevalError(f"features contain non-finite values (batch of {x.shape[0]})")
        if self._shift is None:
            self._shift = x.mean(dim=0)
        y = x - self._shift
        self._s1 += y.sum(dim=0)
        self._s2 += y.T @ y
        self.n += int(x.shape[0])
        return self

    def merge(self, other: GaussianAccumulator) -> GaussianAccumulator:
        """Fold another accumulator's sums into this one (in place).

        Args:
            other: an accumulator of the same dimension.
        """
        if other.dim != self.dim:
            raise GenevalError(f"cannot merge statistics of {other.dim} dims into {self.dim} dims")
        if other.n == 0:
            return self
        s1 = other._s1.to(self.device)
        s2 = other._s2.to(self.device)
        o_shift = other._shift.to(self.device)
        if self._shift is None:
            self._shift = o_shift.clone()
        elif not torch.equal(o_shift, self._shift):
            delta = o_shift - self._shift
            outer = torch.outer(s1, delta)
            s2 = s2 + outer + outer.T + other.n * torch.outer(delta, delta)
            s1 = s1 + other.n * delta
        self._s1 += s1
        self._s2 += s2
        self.n += other.n
        return self

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> GaussianAccumulator:
        """Replace n and the sums by their totals over processes (in place); every process must share the shift.

        Args:
            reduce_sum: sums a float64 tensor over processes (e.g. torch.distributed all_reduce).
        """
        if self._shift is None:
            raise GenevalError("all_reduce needs a shift shared by every process (pass shift=...)")
        self.n = int(reduce_sum(torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)).item())
        self._s1 = reduce_sum(self._s1)
        self._s2 = reduce_sum(self._s2)
        return self

    def mean(self) -> np.ndarray:
        """(d,) float64 mean."""
        if self.n < 1:
            raise GenevalError("no features were accumulated: cannot compute a mean")
        return (self._shift + self._s1 / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """(d, d) float64 covariance with the N−1 normalisation."""
        if self.n < 2:
            raise GenevalError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        m = self._s1 / self.n
        c = (self._s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        # The sums are symmetric in exact arithmetic; make the rounding symmetric too.
        return (0.5 * (c + c.T)).cpu().numpy()

    def stats(self) -> GaussianStats:
        """The accumulated (mu, sigma, n)."""
        return GaussianStats(self.mean(), self.cov(), self.n)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (savable to .npz) that rebuild this accumulator exactly."""
        shift = self._shift if self._shift is not None else torch.zeros(self.dim, dtype=torch.float64)
        return {
            "n": np.asarray(self.n, dtype=np.int64),
            "shift": shift.cpu().numpy().copy(),
            "sum": self._s1.cpu().numpy().copy(),
            "sum_outer": self._s2.cpu().numpy().copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> GaussianAccumulator:
        """Rebuild an accumulator from `state_dict()` output.

        Args:
            state: mapping with n, shift, sum, sum_outer.
            device: where to keep the sums.
        """
        missing = {"n", "shift", "sum", "sum_outer"} - set(state)
        if missing:
            raise GenevalError(f"accumulator state lacks {sorted(missing)}")
        s1 = np.asarray(state["sum"], dtype=np.float64)
        acc = cls(s1.shape[0], device=device, shift=state["shift"])
        s2 = np.asarray(state["sum_outer"], dtype=np.float64)
        if s2.shape != (acc.dim, acc.dim):
            raise GenevalError(f"accumulator state sum_outer has shape {s2.shape}, expected {(acc.dim, acc.dim)}")
        acc.n = int(np.asarray(state["n"]))
        if acc.n < 0:
            raise GenevalError(f"accumulator state has negative n={acc.n}")
        acc._s1 = torch.from_numpy(s1.copy()).to(acc.device)
        acc._s2 = torch.from_numpy(s2.copy()).to(acc.device)
        return acc
