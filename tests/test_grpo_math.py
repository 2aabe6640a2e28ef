"""GRPO math: TRL's values (docs/method.md, Reference values), an independent numpy reference, errors, log-probs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msathinker.grpo import (
    LOSS_TYPES,
    REWARD_SCALES,
    group_advantages,
    group_reward_std,
    policy_loss,
    token_entropy,
    token_logprobs,
)

TOL = 1e-6
NAN = float("nan")
FIXTURE_REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def assert_close(actual, expected, tol: float = TOL) -> None:
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(a, np.asarray(expected, dtype=np.float64), rtol=0, atol=tol)


# ------------------------------------------------------------------------------------------------
# Independent numpy reference (loops, written from the formulas in docs/method.md, GRPO)
# ------------------------------------------------------------------------------------------------


def np_advantages(rewards: np.ndarray, group_size: int, scale: str) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    valid_all = r[~np.isnan(r)]
    batch_std = 0.0 if r.size == 1 else (np.std(valid_all, ddof=1) if valid_all.size > 1 else np.nan)
    out = np.zeros_like(r)
    for start in range(0, r.size, group_size):
        seg = r[start : start + group_size]
        valid = seg[~np.isnan(seg)]
        if valid.size == 0:
            continue
        mean = valid.mean()
        # TRL: std 0 for groups of one; unbiased nanstd is NaN with fewer than two valid rewards
        group_std = 0.0 if group_size == 1 else (np.std(valid, ddof=1) if valid.size > 1 else np.nan)
        for k, x in enumerate(seg):
            if np.isnan(x):
                a = 0.0
            elif scale == "none":
                a = x - mean
            elif scale == "group":
                a = (x - mean) / (group_std + 1e-4)
            else:
                a = (x - mean) / (batch_std + 1e-4)
            out[start + k] = 0.0 if np.isnan(a) else a
    return out


def np_policy_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, max_len, num_items):
    """Loss, d loss / d logp, and metrics computed element by element."""
    b, t = logp.shape
    per_tok = np.zeros((b, t))
    dper = np.zeros((b, t))  # d per-token loss / d logp
    low = np.zeros((b, t))
    high = np.zeros((b, t))
    kl = np.zeros((b, t))
    for i in range(b):
        a = adv[i]
        for j in range(t):
            ratio = math.exp(logp[i, j] - old[i, j])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            if ratio * a <= clipped * a:  # unclipped branch is the min: gradient flows through the ratio
                per_tok[i, j] = -ratio * a
                dper[i, j] = -ratio * a
            else:  # clipped branch: constant in logp
                per_tok[i, j] = -clipped * a
            d = ref[i, j] - logp[i, j]
            kl[i, j] = math.exp(d) - d - 1
            per_tok[i, j] += beta * kl[i, j]
            dper[i, j] += beta * (1 - math.exp(d))
            low[i, j] = float(ratio < 1 - eps_low and a < 0)
            high[i, j] = float(ratio > 1 + eps_high and a > 0)
    weights = np.zeros((b, t))
    n_tok = mask.sum()
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            if loss_type == "grpo":
                weights[i, j] = 1.0 / (b * max(mask[i].sum(), 1))
            elif loss_type == "bnpo":
                weights[i, j] = 1.0 / max(n_tok, 1)
            elif loss_type == "dr_grpo":
                weights[i, j] = 1.0 / (b * max_len)
            else:
                weights[i, j] = 1.0 / num_items
    loss = float((weights * per_tok).sum())
    grad = weights * dper
    denom = max(n_tok, 1)
    metrics = {
        "kl": float((kl * mask).sum() / denom),
        "clip_ratio/low_mean": float((low * mask).sum() / denom),
        "clip_ratio/high_mean": float((high * mask).sum() / denom),
        "clip_ratio/region_mean": float((np.maximum(low, high) * mask).sum() / denom),
    }
    return loss, grad, metrics


# ------------------------------------------------------------------------------------------------
# Fixtures: docs/method.md, Reference values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("group", [0.865875, -0.865875, -0.865875, 0.865875, 0, 0, 0, 0]),
        ("none", [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]),
        ("batch", [1.322526, -1.322526, -1.322526, 1.322526, 0, 0, 0, 0]),
    ],
)
def test_advantage_fixture(scale: str, expected: list[float]) -> None:
    assert_close(group_advantages(t64(FIXTURE_REWARDS), 4, scale), expected)


def test_group_reward_std_fixture() -> None:
    std = group_reward_std(t64(FIXTURE_REWARDS), 4)
    assert std.shape == (2,)
    assert_close(std, [math.sqrt(1 / 3), 0.0])


LENGTHS = [3, 1, 2, 4]
MAX_LEN = 8


def _on_policy(loss_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    adv = group_advantages(t64(FIXTURE_REWARDS), 4, "group")[:4]
    mask = torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]
    logp = (-torch.rand(4, MAX_LEN, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_()
    loss, _ = policy_loss(
        logp,
        None,
        None,
        adv,
        mask,
        loss_type=loss_type,
        eps_low=0.2,
        eps_high=0.28,
        beta=0.0,
        max_completion_length=MAX_LEN,
        num_items=int(mask.sum()),
    )
    loss.backward()
    assert logp.grad is not None
    return loss, logp.grad, adv


@pytest.mark.parametrize(
    ("loss_type", "expected_loss", "weights"),
    [
        ("grpo", 0.0, [1 / 12, 0.25, 0.125, 0.0625]),
        ("bnpo", -0.346350, [0.1] * 4),
        ("dapo", -0.346350, [0.1] * 4),
        ("dr_grpo", -0.108234, [0.03125] * 4),
    ],
)
def test_on_policy_loss_and_gradient_fixture(loss_type: str, expected_loss: float, weights: list[float]) -> None:
    loss, grad, adv = _on_policy(loss_type)
    assert_close(loss, expected_loss)
    mask = (torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]).double()
    expected_grad = -adv[:, None] * torch.tensor(weights, dtype=torch.float64)[:, None] * mask
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    ("ratio", "adv", "expected", "low", "high"),
    [(1.5, 1.0, -1.28, 0, 1), (1.5, -1.0, 1.5, 0, 0), (0.5, 1.0, -0.5, 0, 0), (0.5, -1.0, 0.8, 1, 0)],
)
def test_clipping_fixture(ratio: float, adv: float, expected: float, low: int, high: int) -> None:
    logp = t64([[math.log(ratio)]])
    old = t64([[0.0]])
    for loss_type in LOSS_TYPES:
        loss, metrics = policy_loss(
            logp,
            old,
            None,
            t64([adv]),
            torch.ones(1, 1, dtype=torch.bool),
            loss_type=loss_type,
            eps_low=0.2,
            eps_high=0.28,
            beta=0.0,
            max_completion_length=1,
            num_items=1,
        )
        assert_close(loss, expected)
        assert_close(metrics["clip_ratio/low_mean"], low)
        assert_close(metrics["clip_ratio/high_mean"], high)
        assert_close(metrics["clip_ratio/region_mean"], max(low, high))
        assert "kl" not in metrics


def test_k3_kl_fixture() -> None:
    loss, metrics = policy_loss(
        t64([[-1.0]]), None, t64([[-1.3]]), t64([0.0]), torch.ones(1, 1), loss_type="bnpo", beta=1.0
    )
    assert_close(metrics["kl"], 0.0408182)
    assert_close(loss, 0.0408182)  # A = 0: the loss is beta * KL
    # KL is reported whenever ref_logp is given, but only enters the loss when beta > 0
    loss0, metrics0 = policy_loss(
        t64([[-1.0]]), None, t64([[-1.3]]), t64([0.0]), torch.ones(1, 1), loss_type="bnpo", beta=0.0
    )
    assert_close(metrics0["kl"], 0.0408182)
    assert_close(loss0, 0.0)


# ------------------------------------------------------------------------------------------------
# Random off-policy inputs vs. the numpy reference, every loss_type x scale
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss_type", "scale"), list(itertools.product(LOSS_TYPES, REWARD_SCALES)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(loss_type: str, scale: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    group_size, n_groups, t = 4, 3, 7
    b = group_size * n_groups
    rewards = rng.choice([0.0, 0.25, 0.5, 1.0, 1.5], size=b) + rng.normal(0, 0.1, size=b) * (rng.random(b) < 0.5)
    rewards[rng.integers(b)] = np.nan
    lengths = rng.integers(0, t + 1, size=b)
    lengths[0] = 0  # an empty completion (mask all zero) exercises the clamp(min=1)
    mask = np.arange(t)[None, :] < lengths[:, None]
    logp = -rng.random((b, t)) * 3
    old = logp + rng.normal(0, 0.4, size=(b, t))  # off-policy: ratios cross both clip bounds
    ref = logp + rng.normal(0, 0.5, size=(b, t))
    eps_low, eps_high, beta, max_len = 0.2, 0.28, 0.04, 9
    num_items = float(mask.sum()) * 1.7  # the whole generation batch is bigger than this micro-batch

    np_adv = np_advantages(rewards, group_size, scale)
    adv = group_advantages(t64(rewards), group_size, scale)
    assert_close(adv, np_adv)

    logp_t = t64(logp).requires_grad_()
    loss, metrics = policy_loss(
        logp_t,
        t64(old),
        t64(ref),
        adv,
        torch.as_tensor(mask),
        loss_type=loss_type,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        max_completion_length=max_len,
        num_items=num_items,
    )
    loss.backward()
    exp_loss, exp_grad, exp_metrics = np_policy_loss(
        logp, old, ref, np_adv, mask, loss_type, eps_low, eps_high, beta, max_len, num_items
    )
    assert_close(loss, exp_loss)
    assert_close(logp_t.grad, exp_grad)
    assert set(metrics) == set(exp_metrics)
    for key, value in exp_metrics.items():
        assert not metrics[key].requires_grad
        assert_close(metrics[key], value)
    assert 0 < float(metrics["clip_ratio/region_mean"]) < 1  # the random case does exercise clipping


def test_num_items_tensor_and_float32() -> None:
    logp = -torch.rand(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    a, _ = policy_loss(logp, None, None, adv, mask, loss_type="dapo", num_items=torch.tensor(6))
    b, _ = policy_loss(logp, None, None, adv, mask, loss_type="dapo", num_items=6)
    assert a.dtype == torch.float32
    assert_close(a, float(b))
    assert_close(b, -(2 - 1) / 6)


# ------------------------------------------------------------------------------------------------
# NaN rewards, degenerate groups, properties
# ------------------------------------------------------------------------------------------------


def test_nan_rewards_are_excluded_and_get_zero_advantage() -> None:
    rewards = [1.0, NAN, 0.0, 1.0, NAN, NAN, NAN, NAN, 2.0, NAN, NAN, NAN]
    valid = np.array([1.0, 0.0, 1.0])
    mean, std = valid.mean(), valid.std(ddof=1)
    for scale in REWARD_SCALES:
        adv = group_advantages(t64(rewards), 4, scale)
        assert not torch.isnan(adv).any()
        assert_close(adv[[1, 4, 5, 6, 7, 8, 9, 10, 11]], 0.0)  # NaN reward, all-NaN group, lone valid reward
        assert_close(adv, np_advantages(np.array(rewards), 4, scale))
        if scale == "group":
            assert_close(adv[[0, 2, 3]], (valid - mean) / (std + 1e-4))
    std_g = group_reward_std(t64(rewards), 4)
    assert_close(std_g[0], std)
    assert torch.isnan(std_g[1:]).all()  # TRL's nanstd: fewer than two values -> NaN (not counted as zero std)


def test_group_size_one_and_dtypes() -> None:
    rewards = torch.tensor([1, 0, 3])  # integer rewards are promoted to float
    for scale in REWARD_SCALES:
        adv = group_advantages(rewards, 1, scale)
        assert adv.dtype == torch.float32
        assert_close(adv, [0.0, 0.0, 0.0])
    assert_close(group_reward_std(rewards, 1), [0.0, 0.0, 0.0])
    assert_close(group_advantages(torch.tensor([2.0]), 1, "batch"), [0.0])


@settings(max_examples=40, deadline=None)
@given(
    rewards=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=4),
    n_groups=st.integers(1, 3),
    shift=st.floats(-10, 10),
    scale=st.sampled_from(REWARD_SCALES),
)
def test_advantage_properties(rewards: list[float], n_groups: int, shift: float, scale: str) -> None:
    group_size = len(rewards)
    r = t64(rewards * n_groups) + t64(np.arange(group_size * n_groups) % 3 * 0.1)
    adv = group_advantages(r, group_size, scale)
    assert_close(adv.view(-1, group_size).sum(1), 0.0, tol=1e-9)  # centred per group
    assert_close(group_advantages(r + shift, group_size, scale), adv, tol=1e-6)  # shift invariant
    assert_close(adv, np_advantages(r.numpy(), group_size, scale))


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_group_size_must_divide_batch() -> None:
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        group_advantages(torch.zeros(6), 4, "group")
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        group_reward_std(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="unknown reward scale"):
        group_advantages(torch.zeros(4), 2, "global")  # type: ignore[arg-type]


def _loss(**kwargs):
    base = dict(loss_type="grpo", beta=0.0, max_completion_length=4, num_items=4)
    base.update(kwargs)
    return policy_loss(torch.zeros(2, 3), None, None, torch.zeros(2), torch.ones(2, 3), **base)


def test_policy_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown loss_type 'ppo'.*grpo, bnpo, dr_grpo, dapo"):
        _loss(loss_type="ppo")
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        _loss(beta=0.04)
    with pytest.raises(ValueError, match="num_items > 0"):
        _loss(loss_type="dapo", num_items=0)
    with pytest.raises(ValueError, match="num_items > 0"):
        _loss(loss_type="dapo", num_items=None)
    with pytest.raises(ValueError, match="max_completion_length"):
        _loss(loss_type="dr_grpo", max_completion_length=None)
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(2, 3), loss_type="grpo")
    with pytest.raises(ValueError, match="mask has shape"):
        policy_loss(torch.zeros(2, 3), None, None, torch.zeros(2), torch.ones(2, 4), loss_type="grpo")


# ------------------------------------------------------------------------------------------------
# Log-probs and entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_log_softmax_gather(dtype: torch.dtype, temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 50, generator=g) * 4).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (3, 5), generator=g)
    got = token_logprobs(logits, ids, temperature)
    want = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    tol = TOL if dtype == torch.float64 else 1e-5
    assert got.shape == ids.shape and got.dtype == dtype
    assert_close(got, want.detach(), tol=tol)
    (g1,) = torch.autograd.grad(got.sum(), logits)
    (g2,) = torch.autograd.grad(want.sum(), logits)
    assert_close(g1, g2, tol=tol)


def test_token_logprobs_half_precision_path() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 30, generator=g)
    ids = torch.randint(0, 30, (2, 4), generator=g)
    got = token_logprobs(logits.bfloat16(), ids, 0.9)
    assert got.dtype == torch.bfloat16
    want = torch.log_softmax(logits.bfloat16().float() / 0.9, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert_close(got.float(), want, tol=0.05)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, ids, 0.0)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(logits, ids[:, :3])


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_token_entropy_matches_direct_formula(temperature: float) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 40, generator=g, dtype=torch.float64) * 3
    got = token_entropy(logits, temperature, chunk_size=4)  # several chunks, the last one partial
    z = logits / temperature
    want = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    assert got.shape == (3, 5)
    assert_close(got, want)


def test_token_entropy_with_masked_vocabulary() -> None:
    logits = torch.tensor([[0.0, float("-inf"), 0.0], [float("-inf"), 5.0, float("-inf")]])
    assert_close(token_entropy(logits), [math.log(2), 0.0])
