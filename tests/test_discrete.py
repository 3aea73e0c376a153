"""Mask-and-replace discrete diffusion (geneval.sampling.discrete) against closed forms, diffusers'
VQDiffusionScheduler / VQDiffusionPipeline.truncate, and microsoft/VQ-Diffusion's own q_posterior
(tests/data/vqdiffusion_official_tiny.npz, written by tests/data/gen_vqdiffusion_official.py.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.sampling import discrete as D
from geneval.sampling.noise import NoiseSource

diffusers = pytest.importorskip("diffusers")
from diffusers import VQDiffusionScheduler  # noqa: E402

DATA = Path(__file__).parent / "data"


def _diffusers_truncate():
    """diffusers' VQDiffusionPipeline.truncate. The pipeline module imports transformers (CLIP), which the
    test environment may lack; then the method is compiled from diffusers' own source file, unchanged."""
    try:
        from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import VQDiffusionPipeline

        return lambda log_p, r: VQDiffusionPipeline.truncate(None, log_p, r)
    except ImportError:
        import ast
        import importlib.util

        spec = importlib.util.find_spec("diffusers")
        src = Path(spec.origin).parent / "pipelines" / "deprecated" / "vq_diffusion" / "pipeline_vq_diffusion.py"
        tree = ast.parse(src.read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VQDiffusionPipeline")
        fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "truncate")
        ns: dict = {"torch": torch}
        exec(compile(ast.Module(body=[fn], type_ignores=[]), str(src), "exec"), ns)
        return lambda log_p, r: ns["truncate"](None, log_p, r)


def _random_log_x0(b: int, k: int, length: int, gen: torch.Generator, sharp: float = 3.0) -> torch.Tensor:
    """log p(x0) over K content classes + the −70 mask row, as the network side produces it."""
    return D.log_x0_from_logits(torch.randn(b, k, length, generator=gen) * sharp)


def _random_tokens(b: int, k: int, length: int, gen: torch.Generator, p_mask: float = 0.4) -> torch.Tensor:
    x = torch.randint(0, k, (b, length), generator=gen)
    return torch.where(torch.rand(b, length, generator=gen) < p_mask, torch.full_like(x, k), x)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("T,K", [(100, 974), (100, 128), (10, 7)])
def test_cumulative_schedules_match_their_closed_form(T, K):
    s = D.mask_schedule(T, K)
    t = np.arange(T, dtype=np.float64)
    att = 0.99999 + t / (T - 1) * (0.000009 - 0.99999)  # ᾱ_t linear from ᾱ_1 to ᾱ_T
    ctt = 0.000009 + t / (T - 1) * (0.99999 - 0.000009)  # γ̄_t linear from γ̄_1 to γ̄_T
    btt = (1 - att - ctt) / K
    np.testing.assert_allclose(s.log_cumprod_at[:T].exp().double().numpy(), att, rtol=1e-6)
    np.testing.assert_allclose(s.log_cumprod_ct[:T].exp().double().numpy(), ctt, rtol=1e-6)
    np.testing.assert_allclose(s.log_cumprod_bt[:T].exp().double().numpy(), btt, rtol=1e-5)
    # The per-step factors compose to the cumulative ones: ᾱ_t = Π α, 1 − γ̄_t = Π (1 − γ).
    np.testing.assert_allclose(np.cumprod(s.log_at.double().exp().numpy()), att, rtol=1e-5)
    np.testing.assert_allclose(np.cumprod(1 - s.log_ct.double().exp().numpy()), 1 - ctt, rtol=1e-5)
    # A token survives unmasked with α + Kβ + ... : each step's row of Q_t sums to one.
    row = s.log_at.double().exp() + K * s.log_bt.double().exp() + s.log_ct.double().exp()
    np.testing.assert_allclose(row.numpy(), 1.0, atol=1e-6)
    # The (T+1)-th entry is the identity: ᾱ = 1, β̄ = γ̄ = 0.
    assert s.log_cumprod_at[T] == 0 and s.log_cumprod_bt[T] == -np.inf and s.log_cumprod_ct[T] == -np.inf
    assert s.log_cumprod_at.shape == (T + 1,) and s.log_at.shape == (T,)


def test_schedule_buffers_equal_diffusers():
    T, K = 100, 128
    s = D.mask_schedule(T, K)
    ref = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T)
    for name in ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct"):
        assert torch.equal(getattr(s, name), getattr(ref, name)), name


def test_q_pred_at_minus_one_is_identity_and_rows_normalise():
    gen = torch.Generator().manual_seed(0)
    s = D.mask_schedule(20, 9)
    log_x0 = _random_log_x0(3, 9, 5, gen)
    t = torch.full((3,), -1)
    assert torch.allclose(D.q_pred(s, log_x0, t), log_x0, atol=1e-6)
    # q(x_t | x0) is a distribution over the K+1 classes for every t (incl. the mask mass γ̄_t).
    onehot = D.index_to_log_onehot(torch.randint(0, 9, (3, 5), generator=gen), 10)
    for tt in (0, 7, 19):
        lp = D.q_pred(s, onehot, torch.full((3,), tt))
        assert torch.allclose(lp.logsumexp(1), torch.zeros(3, 5), atol=1e-5)


def test_log_conventions():
    x = torch.tensor([[0, 3, 2]])
    lo = D.index_to_log_onehot(x, 4)
    assert lo.shape == (1, 4, 3)
    assert torch.equal(lo.argmax(1), x)
    assert torch.allclose(lo.min(), torch.log(torch.tensor(1e-30)))
    lp = D.log_x0_from_logits(torch.randn(2, 5, 7) * 50)
    assert lp.shape == (2, 6, 7)
    assert torch.all(lp[:, -1] == -70) and lp.min() >= -70 and lp.max() <= 0


# ---------------------------------------------------------------- posterior parity


@pytest.mark.parametrize("t", [1, 2, 37, 98, 99])
def test_q_posterior_matches_diffusers_within_1e5(t):
    T, K, B, L = 100, 31, 3, 24
    gen = torch.Generator().manual_seed(t)
    s = D.mask_schedule(T, K)
    ref = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T)
    log_x0 = _random_log_x0(B, K, L, gen)
    x_t = _random_tokens(B, K, L, gen)
    ours = D.q_posterior(s, log_x0, x_t, torch.full((B,), t))
    theirs = ref.q_posterior(log_x0[:, :-1], x_t, torch.tensor(t)).clamp(min=-70)
    assert ours.shape == theirs.shape == (B, K + 1, L)
    assert (ours - theirs).abs().max() < 1e-5
    # A proper distribution over x_{t−1}.
    assert torch.allclose(ours.logsumexp(1), torch.zeros(B, L), atol=1e-4)


def test_q_posterior_is_bit_identical_to_the_official_code():
    z = np.load(DATA / "vqdiffusion_official_tiny.npz")
    s = D.mask_schedule(10, 7)  # the fixture's DiffusionTransformer: T = 10, K = 7
    for name in ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct", "log_1_min_ct", "log_1_min_cumprod_ct"):
        assert torch.equal(getattr(s, name), torch.from_numpy(z[f"sd/{name}"])), name
    log_x0, x, t = (torch.from_numpy(z[k]) for k in ("log_x0", "x", "t"))
    assert torch.equal(D.q_posterior(s, log_x0, x, t), torch.from_numpy(z["posterior"]))
    assert torch.equal(D.q_posterior(s, log_x0, x, (t - 1).clamp(min=0)), torch.from_numpy(z["posterior_tm1"]))


def test_posterior_at_t0_is_the_x0_prediction():
    # At t = 0 the reverse step is p(x0) itself (diffusers returns model_output there).
    gen = torch.Generator().manual_seed(1)
    s = D.mask_schedule(100, 15)
    log_x0 = _random_log_x0(2, 15, 9, gen)
    post = D.q_posterior(s, log_x0, _random_tokens(2, 15, 9, gen), torch.zeros(2, dtype=torch.long))
    assert (post[:, :-1] - log_x0[:, :-1]).abs().max() < 1e-4
    assert post[:, -1].max() <= -69


# ---------------------------------------------------------------- truncation and guidance


@pytest.mark.parametrize("rate", [0.05, 0.5, 0.86, 0.99])
def test_truncation_matches_diffusers(rate):
    gen = torch.Generator().manual_seed(7)
    log_x0 = _random_log_x0(3, 40, 11, gen, sharp=2.0)
    ours = D.truncate(log_x0, rate)
    theirs = _diffusers_truncate()(log_x0[:, :-1], rate).clamp(-70)
    assert torch.equal(ours[:, :-1], theirs)
    assert torch.all(ours[:, -1] == -70)


def test_truncation_keeps_the_crossing_class_and_top1_without_renormalising():
    p = torch.tensor([0.05, 0.5, 0.15, 0.3]).log().view(1, 4, 1)
    out = D.truncate(p, 0.7).view(-1)
    # sorted: 0.5 (cum 0.5 < 0.7), 0.3 (crosses: kept), 0.15 and 0.05 dropped
    assert torch.equal(out, torch.tensor([-70.0, p[0, 1, 0], -70.0, p[0, 3, 0]]))
    only_top = D.truncate(p, 1e-6).view(-1)
    assert (only_top > -70).tolist() == [False, True, False, False]
    assert D.truncated(lambda x, t: p, None)(None, None) is p
    with pytest.raises(GenevalError):
        D.truncated(lambda x, t: p, 0.0)


def test_guidance_formula():
    gen = torch.Generator().manual_seed(3)
    c, u = _random_log_x0(2, 6, 4, gen), _random_log_x0(2, 6, 4, gen)
    assert torch.allclose(D.guide(c, u, 1.0), c, atol=1e-6)
    g = D.guide(c, u, 3.0)
    raw = u[:, :-1] + 3.0 * (c[:, :-1] - u[:, :-1])
    assert torch.allclose(g[:, :-1], (raw - raw.logsumexp(1, keepdim=True)).clamp(-70, 0), atol=1e-6)
    assert torch.allclose(g[:, :-1].logsumexp(1), torch.zeros(2, 4), atol=1e-5)
    assert torch.all(g[:, -1] == -70)


# ---------------------------------------------------------------- timesteps and whole runs


def test_fast_timesteps_follow_the_official_sample_fast():
    full = D.fast_timesteps(100, 0)
    assert [a for a, _ in full] == list(range(99, -1, -1)) and all(a == b for a, b in full)
    fast = D.fast_timesteps(100, 1)
    assert [a for a, _ in fast] == list(range(99, 0, -2)) + [0]
    assert fast[0] == (99, 98) and fast[-3:] == [(3, 2), (1, 1), (0, 0)]
    assert [a for a, _ in D.fast_timesteps(100, 3)][-3:] == [7, 3, 0]
    assert D.skip_for_steps(100, 100) == 0 and D.skip_for_steps(100, 51) == 1 and D.skip_for_steps(100, 26) == 3
    assert len(D.fast_timesteps(100, D.skip_for_steps(100, 20))) <= 20
    with pytest.raises(GenevalError):
        D.fast_timesteps(100, -1)


class _TinyLogX0:
    """A fixed random 'network': log p(x0 | x_t, t) from an embedding of x_t and t (depends on both)."""

    def __init__(self, k: int, length: int, T: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w_tok = torch.randn(k + 1, k, generator=g) * 2
        self.w_t = torch.randn(T, k, 1, generator=g)
        self.w_pos = torch.randn(k, length, generator=g)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.w_tok[x].transpose(1, 2) + self.w_t[t] + self.w_pos + x.float().mean(1).view(-1, 1, 1)
        return D.log_x0_from_logits(logits)


@pytest.mark.parametrize("rate", [None, 0.9])
def test_whole_run_gives_diffusers_tokens_for_the_same_seeds(rate, one_thread):
    T, K, L, B, seed = 100, 12, 16, 3, 40
    fn = D.truncated(_TinyLogX0(K, L, T), rate)
    ours = D.sample_tokens(fn, D.mask_schedule(T, K), NoiseSource(range(seed, seed + B)).rand, B, L)
    sched = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T)
    sched.set_timesteps(T)
    for i in range(B):
        # diffusers draws all Gumbel noise of a step from one generator: batch 1, seeded seed + i.
        g = torch.Generator().manual_seed(seed + i)
        x = torch.full((1, L), K, dtype=torch.long)
        for t in sched.timesteps:
            model_output = fn(x, torch.full((1,), int(t)))[:, :-1]
            x = sched.step(model_output, t, x, generator=g).prev_sample
        assert torch.equal(ours[i], x[0]), i
    assert ours.max() < K  # no mask left at the end


def test_per_sample_seeds_do_not_depend_on_the_batch(one_thread):
    T, K, L = 30, 8, 9
    fn = _TinyLogX0(K, L, T, seed=2)
    s = D.mask_schedule(T, K)
    a = D.sample_tokens(fn, s, NoiseSource(range(10, 16)).rand, 6, L, skip=2)
    b = D.sample_tokens(fn, s, NoiseSource(range(12, 14)).rand, 2, L, skip=2)
    assert torch.equal(a[2:4], b)
    c = D.sample_tokens(fn, s, NoiseSource(range(20, 26)).rand, 6, L, skip=2)
    assert not torch.equal(a, c)
