"""Advantages and the GRPO loss against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from open_instruct.rl_utils import LossConfig, group_advantages, grpo_loss, kl_per_token, parse_kl_estimator


def test_mean_std_advantages_by_hand():
    # group 1: rewards 0, 1 -> mean .5, population std .5 -> -1, +1 ; group 2: 1, 3 -> -1, +1
    adv = group_advantages([0.0, 1.0, 1.0, 3.0], group_size=2, eps=0.0)
    np.testing.assert_allclose(adv.values, [-1.0, 1.0, -1.0, 1.0])
    assert adv.keep.all() and adv.num_groups == 2 and adv.zero_std_groups == 0


def test_mean_only_advantages():
    adv = group_advantages([0.2, 0.4, 0.9], group_size=3, normalize="mean")
    np.testing.assert_allclose(adv.values, [0.2 - 0.5, 0.4 - 0.5, 0.9 - 0.5], rtol=1e-6)


def test_failed_samples_are_excluded_from_stats_and_training():
    # group of 4 with one judge failure: stats over the 3 rewarded samples only
    adv = group_advantages([1.0, None, 0.0, 0.5], group_size=4, eps=0.0)
    r = np.array([1.0, 0.0, 0.5])
    expected = (r - r.mean()) / r.std()
    np.testing.assert_allclose(adv.values[[0, 2, 3]], expected, rtol=1e-6)
    assert adv.values[1] == 0.0 and adv.keep.tolist() == [True, False, True, True]
    assert adv.failed_samples == 1 and adv.dropped_groups == 0


def test_group_with_fewer_than_two_rewards_is_dropped():
    adv = group_advantages([None, 0.7, None, None, 0.1, 0.9], group_size=3)
    assert adv.keep.tolist() == [False, False, False, False, True, True]
    assert adv.dropped_groups == 1 and adv.failed_samples == 3


def test_zero_std_groups_counted_and_skipped_unless_kept():
    adv = group_advantages([0.5, 0.5, 0.1, 0.3], group_size=2)
    assert adv.keep.tolist() == [False, False, True, True] and adv.zero_std_groups == 1
    kept = group_advantages([0.5, 0.5, 0.1, 0.3], group_size=2, keep_zero_std=True)
    assert kept.keep.all() and kept.values[0] == 0.0 and kept.zero_std_groups == 1


def test_bad_group_size():
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0, 3.0], group_size=2)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_loss_clips_positive_advantage_above_one_plus_clip_higher():
    cfg = LossConfig(clip_lower=0.2, clip_higher=0.28)
    old = t([0.0, 0.0])
    new = t([math.log(1.5), math.log(1.1)])  # ratios 1.5 (clipped to 1.28) and 1.1 (inside)
    loss, stats = grpo_loss(
        new, old, torch.tensor([2.0], dtype=torch.float64), t([1.0, 1.0]), cfg, num_tokens=2
    )
    # pg = max(-A r, -A clip(r)) = max(-3.0, -2.56) = -2.56 ; max(-2.2, -2.2) = -2.2
    assert loss.item() == pytest.approx((-2.56 - 2.2) / 2)
    assert stats["clipped_tokens"] == 1.0


def test_loss_clips_negative_advantage_below_one_minus_clip_lower():
    cfg = LossConfig(clip_lower=0.2, clip_higher=0.28)
    old = t([0.0, 0.0])
    new = t([math.log(0.5), math.log(1.5)])  # ratio 0.5 -> clip 0.8 ; ratio 1.5 -> unclipped counts
    loss, stats = grpo_loss(
        new, old, torch.tensor([-1.0], dtype=torch.float64), t([1.0, 1.0]), cfg, num_tokens=2
    )
    # token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: max(1.5, 1.28) = 1.5 (pessimistic, unclipped)
    assert loss.item() == pytest.approx((0.8 + 1.5) / 2)
    assert stats["clipped_tokens"] == 1.0


def test_gradient_is_zero_where_clipped():
    cfg = LossConfig(clip_lower=0.2, clip_higher=0.2)
    new = t([math.log(1.5), 0.0]).requires_grad_()
    loss, _ = grpo_loss(new, t([0.0, 0.0]), torch.tensor([1.0], dtype=torch.float64), t([1.0, 1.0]), cfg, 2)
    loss.backward()
    # clipped token: no gradient; unclipped token at ratio 1: d(-A r)/d logp = -A r / 2 tokens = -0.5
    assert new.grad.tolist()[0] == pytest.approx([0.0, -0.5])


def test_truncated_importance_sampling_caps_the_weight():
    cfg = LossConfig(tis_cap=2.0)
    old = t([0.0, 0.0])
    vllm = t([math.log(0.25), math.log(0.8)])  # weights exp(0 - log .25) = 4 -> capped 2 ; 1.25
    loss, stats = grpo_loss(
        old.clone(), old, torch.tensor([1.0], dtype=torch.float64), t([1.0, 1.0]), cfg, 2, vllm_logprobs=vllm
    )
    assert loss.item() == pytest.approx((-1.0 * 2.0 + -1.0 * 1.25) / 2)
    assert stats["tis_weight_sum"] == pytest.approx(3.25)


def test_masked_tokens_and_token_level_aggregation():
    cfg = LossConfig()
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    mask = t([1, 1, 1], [1, 0, 0])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, _ = grpo_loss(zeros, zeros, adv, mask, cfg, num_tokens=4)
    # per token -A at ratio 1: three tokens of -1 and one of +2 over 4 tokens
    assert loss.item() == pytest.approx((-3.0 + 2.0) / 4)


@pytest.mark.parametrize("est,expected", [("k1", 0.5), ("k2", 0.125), ("k3", math.exp(-0.5) - 1 + 0.5)])
def test_kl_estimators_by_hand(est, expected):
    # new = 0, ref = -0.5 -> log r = -0.5
    assert kl_per_token(t([0.0]), t([-0.5]), est).item() == pytest.approx(expected)


def test_kl_estimators_stay_finite_for_wildly_different_policies():
    """Failed before the log ratio was clamped: k3 = exp(100) - 1 - 100 overflowed to inf in float32."""
    for est in ("k1", "k2", "k3"):
        for new, ref in ((-100.0, 0.0), (0.0, -100.0)):
            value = kl_per_token(t([new]), t([ref]), est)
            assert torch.isfinite(value).all(), (est, new, ref)
    # with the clamp at 40: k3 = exp(40) - 1 - 40 where ref is far more likely, 40 + exp(-40) - 1 the other way
    assert kl_per_token(torch.tensor([-100.0]), torch.tensor([0.0]), "k3").item() == pytest.approx(
        math.expm1(40) - 40, rel=1e-6
    )
    assert kl_per_token(torch.tensor([0.0]), torch.tensor([-100.0]), "k3").item() == pytest.approx(
        39.0, rel=1e-6
    )


def test_kl_term_enters_loss_only_with_beta():
    cfg = LossConfig(beta=0.1, kl_estimator="k2")
    zeros = t([0.0])
    loss, stats = grpo_loss(
        zeros, zeros, torch.tensor([0.0], dtype=torch.float64), t([1.0]), cfg, 1, ref_logprobs=t([-1.0])
    )
    assert loss.item() == pytest.approx(0.1 * 0.5) and stats["kl_sum"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        grpo_loss(zeros, zeros, torch.tensor([0.0]), t([1.0]), cfg, 1)


def test_parse_kl_estimator():
    assert [parse_kl_estimator(v) for v in ("k1", "K3", 0, "1", 2)] == ["k1", "k3", "k1", "k2", "k3"]
    with pytest.raises(ValueError):
        parse_kl_estimator("k4")
