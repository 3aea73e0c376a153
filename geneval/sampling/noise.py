"""Per-sample noise: sample i's noise depends only on its own seed, never on the batch.

Each sample owns a CPU `torch.Generator` seeded with its seed; every draw (the initial x_T and
each ancestral step) takes the next (C, H, W) block from that sample's stream. Results are
therefore bit-identical whatever the batch size or the number of devices (as in NVlabs/edm).
"""

from __future__ import annotations

from typing import Sequence

import torch


class NoiseSource:
    """Independent Gaussian streams, one per sample.

    Args:
        seeds: one integer seed per sample in the batch (e.g. base_seed + global index).
        device: where the returned noise lives.
        dtype: dtype of the returned noise (drawn in float32 on CPU, then cast).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.dtype = dtype
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Draw the next block of shape (len(seeds), *shape) — one row from each sample's stream."""
        draws = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self._gens]
        return torch.stack(draws).to(device=self.device, dtype=self.dtype, non_blocking=True)

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        """Next block of U[0, 1) draws, (len(seeds), *shape), one row from each sample's stream (discrete samplers)."""
        draws = [torch.rand(tuple(shape), generator=g, dtype=torch.float32) for g in self._gens]
        return torch.stack(draws).to(device=self.device, non_blocking=True)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Next draw shaped like x (whose first dimension must equal the number of seeds)."""
        if x.shape[0] != len(self.seeds):
            raise ValueError(f"batch of {x.shape[0]} but {len(self.seeds)} seeds")
        return self.randn(x.shape[1:]).to(x.dtype)
