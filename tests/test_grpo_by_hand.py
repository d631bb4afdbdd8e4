"""GRPO's math on hand-computed values (the arithmetic in the comments): bnpo's per-micro-batch
token mean, the clamped importance log-ratio, the reward group normalisation's std, and the
rollout correction (token_tis, seq_mask, mismatch_stats)."""

import math

import pytest
import torch

from lmmixup.grpo import (AlgoConfig, LossNorm, aggregate, group_normalize, importance_log_ratio,
                          mismatch_stats, policy_loss, rollout_is_weights)


def test_bnpo_is_trl_per_micro_batch_token_mean():
    # micro-batch 1: one token with loss 2; micro-batch 2: three tokens with loss 1 each.
    # bnpo (TRL): mean of the micro-batch token means = (2/1 + 3/3) / 2 = 1.5
    # dapo (token mean over the mini-batch) would give (2 + 3) / 4 = 1.25.
    norm = LossNorm(num_sequences=2, num_tokens=4, max_len=3, num_micro_batches=2)
    a = aggregate(torch.tensor([[2.0, 0, 0]]), torch.tensor([[1.0, 0, 0]]), norm, "bnpo")
    b = aggregate(torch.ones(1, 3), torch.ones(1, 3), norm, "bnpo")
    assert float(a + b) == 1.5


def test_importance_log_ratio_is_clamped_to_20():
    logp, old = torch.tensor([[0.0, -100.0]]), torch.tensor([[-100.0, 0.0]])  # log-ratios +-100
    out = importance_log_ratio(logp, old, torch.ones(1, 2), "token")
    assert out.tolist() == [[20.0, -20.0]]


def test_reward_group_normalisation_uses_the_advantage_std():
    # G = 2, scores 0 and 1: mean 0.5; Bessel std = sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.7071,
    # the same std as group_advantages; the population std (0.5) would give +-1.
    out = group_normalize(torch.tensor([0.0, 1.0]), 2, eps=1e-4)
    assert out.tolist() == pytest.approx([-0.5 / (0.5**0.5 + 1e-4), 0.5 / (0.5**0.5 + 1e-4)])


def test_token_tis_and_seq_mask_by_hand():
    # log rho = old - rollout per token: [log 3, log 0.5, 0] and [log 1.5, log 1.5, pad]
    rollout = torch.zeros(2, 3)
    old = torch.tensor([[math.log(3), math.log(0.5), 0.0], [math.log(1.5), math.log(1.5), 9.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    tis = rollout_is_weights(old, rollout, mask, "token_tis", cap=2.0)
    # min(rho, 2): 3 -> 2 (truncated), 0.5, 1 | 1.5, 1.5, pad 0; one of 5 real tokens truncated
    assert tis.weights.flatten().tolist() == pytest.approx([2.0, 0.5, 1.0, 1.5, 1.5, 0.0])
    assert tis.frac_tokens_truncated == pytest.approx(1 / 5)
    seq = rollout_is_weights(old, rollout, mask, "seq_mask", cap=1.4)
    # geometric means: row 0 (3 * 0.5 * 1)^(1/3) = 1.145 in [1/1.4, 1.4] -> kept;
    # row 1 (1.5 * 1.5)^(1/2) = 1.5 > 1.4 -> masked
    assert seq.weights.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert seq.frac_seqs_masked == 0.5
    none = rollout_is_weights(old, rollout, mask, "none", cap=2.0)
    assert none.weights.tolist() == mask.tolist()


def test_mismatch_stats_by_hand():
    # two sequences of one real token each; rho = 2 and 0.5 (log rho = +-log 2)
    old = torch.tensor([[math.log(2), 0.0], [math.log(0.5), 0.0]])
    m = mismatch_stats(old, torch.zeros(2, 2), torch.tensor([[1.0, 0], [1, 0]]))
    assert m.abs_diff_mean == pytest.approx(math.log(2)) and m.abs_diff_max == pytest.approx(math.log(2))
    # k3 = rho - 1 - log rho: (2 - 1 - 0.6931) + (0.5 - 1 + 0.6931) = 0.3069 + 0.1931 -> mean 0.25
    assert m.kl_k3 == pytest.approx(0.25, abs=1e-6)
    # chi2 token: ((2-1)^2 + (0.5-1)^2) / 2 = 0.625; one token per sequence: chi2 seq the same
    assert m.chi2_token == pytest.approx(0.625) and m.chi2_seq == pytest.approx(0.625)
    # ESS = (2 + 0.5)^2 / (2 * (4 + 0.25)) = 6.25 / 8.5
    assert m.ess == pytest.approx(6.25 / 8.5)
    assert (m.ratio_min, m.ratio_mean, m.ratio_max) == pytest.approx((0.5, 1.25, 2.0))


def test_token_tis_weight_multiplies_the_surrogate():
    logp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)
    norm = LossNorm(num_sequences=1, num_tokens=2, max_len=2, num_micro_batches=1)
    algo = AlgoConfig(beta=0.0, loss="dapo")
    # ratio 1, advantage 1: token loss -1 each; weights 2 and 0.5 -> (-2 - 0.5) / 2 = -1.25
    parts = policy_loss(logp, old, None, torch.ones(1), torch.ones(1, 2), algo, norm,
                        is_weights=torch.tensor([[2.0, 0.5]]))
    assert float(parts.loss.detach()) == -1.25
