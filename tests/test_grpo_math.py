"""GRPO math against hand-computed numbers (arithmetic in the comments) and a naive loop."""

import math

import pytest
import torch

from lmmixup.grpo import (AlgoConfig, LossNorm, aggregate, clipped_surrogate, group_advantages,
                          importance_log_ratio, kl_penalty, policy_loss, zero_std_groups)


def test_group_std_advantage_by_hand():
    # rewards 1,2,3,4: mean 2.5, centred -1.5,-0.5,0.5,1.5
    # unbiased std = sqrt((2.25+0.25+0.25+2.25)/3) = sqrt(5/3) = 1.2909944
    adv = group_advantages(torch.tensor([1.0, 2, 3, 4]), 4, "group_std", eps=1e-4)
    std = math.sqrt(5 / 3) + 1e-4
    assert torch.allclose(adv, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std, atol=1e-6)


def test_flat_group_gives_zero_not_nan():
    # group 1 is flat (2,2): centred 0, std 0 -> 0 / (0 + eps) = 0
    adv = group_advantages(torch.tensor([2.0, 2.0, 0.0, 1.0]), 2, "group_std", eps=1e-4)
    assert adv[:2].tolist() == [0.0, 0.0]
    assert torch.isfinite(adv).all()
    assert zero_std_groups(torch.tensor([2.0, 2.0, 0.0, 1.0]), 2).tolist() == [True, False]


def test_batch_std_and_no_scale_by_hand():
    r = torch.tensor([0.0, 1.0, 0.0, 3.0])  # groups (0,1) and (0,3)
    # centred per group: -0.5, 0.5, -1.5, 1.5
    # batch std of 0,1,0,3: mean 1, squared deviations 1,0,1,4 -> 6/3 = 2 -> sqrt(2)
    batch = group_advantages(r, 2, "batch_std", eps=0.0)
    assert torch.allclose(batch, torch.tensor([-0.5, 0.5, -1.5, 1.5]) / math.sqrt(2), atol=1e-6)
    none = group_advantages(r, 2, "none")
    assert none.tolist() == [-0.5, 0.5, -1.5, 1.5]


def test_kl_estimators_by_hand():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    # log rho = log(0.25/0.5) = -0.6931472
    # k1 = -log rho = 0.6931472; k2 = 0.5 * 0.4804530 = 0.2402265; k3 = 0.5 - 1 + 0.6931472 = 0.1931472
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.6931472, abs=1e-6)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.2402265, abs=1e-6)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.1931472, abs=1e-6)


def test_k3_log_ratio_is_clamped():
    # log rho = -50 clamps to -10: k3 = e^-10 - 1 + 10 = 9.0000454; unclamped the other way,
    # log rho = +50 would give e^50 ~ 5e21; clamped it is e^10 - 1 - 10 = 22015.4658
    low = kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-50.0]]), "k3", clamp=10.0)
    high = kl_penalty(torch.tensor([[-50.0]]), torch.tensor([[0.0]]), "k3", clamp=10.0)
    assert low.item() == pytest.approx(9.0000454, abs=1e-5)
    assert high.item() == pytest.approx(math.exp(10) - 11, rel=1e-6)


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    adv = torch.tensor([1.0])
    # A=+1: r=1.5 -> min(1.5, 1.2) = 1.2 -> loss -1.2, high clip active
    #       r=0.5 -> min(0.5, 0.8) = 0.5 -> loss -0.5, no clip
    loss, r, low, high = clipped_surrogate(ratio.log(), adv, 0.2, 0.2)
    assert loss[0, :2].tolist() == pytest.approx([-1.2, -0.5])
    assert high[0].tolist() == [True, False, False, True]
    assert not low.any()
    # A=-1: r=0.5 -> min(-0.5, -0.8) = -0.8 -> loss 0.8, low clip active
    #       r=1.5 -> min(-1.5, -1.2) = -1.5 -> loss 1.5, no clip (pessimistic side)
    loss, r, low, high = clipped_surrogate(ratio.log(), -adv, 0.2, 0.2)
    assert loss[0, 1:3].tolist() == pytest.approx([0.8, 0.8])
    assert loss[0, 3].item() == pytest.approx(1.5)
    assert low[0].tolist() == [False, True, True, False]


def test_asymmetric_clip_higher():
    # eps_high 0.28: r=1.5 with A=+1 clips to 1.28
    loss, *_ = clipped_surrogate(torch.tensor([[math.log(1.5)]]), torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_sequence_level_ratio_is_mean_log_ratio():
    # GSPO: log-ratios 0.1, 0.3 on real tokens (third is padding) -> mean 0.2 on every token
    lr = importance_log_ratio(torch.tensor([[0.1, 0.3, 9.0]]), torch.zeros(1, 3),
                              torch.tensor([[1.0, 1.0, 0.0]]), "sequence")
    assert torch.allclose(lr, torch.full((1, 3), 0.2))


def test_aggregations_by_hand():
    tl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    norm = LossNorm(num_sequences=2, num_tokens=4, max_len=3, num_micro_batches=1)
    # grpo: sequence means 2 and 4 -> 3
    assert aggregate(tl, mask, norm, "grpo").item() == pytest.approx(3.0)
    # dapo: 10 / 4 tokens = 2.5; bnpo with one micro-batch is the same token mean
    assert aggregate(tl, mask, norm, "bnpo").item() == pytest.approx(2.5)
    assert aggregate(tl, mask, norm, "dapo").item() == pytest.approx(2.5)
    # dr_grpo: 10 / (2 sequences * 3 max_len) = 1.6667
    assert aggregate(tl, mask, norm, "dr_grpo").item() == pytest.approx(10 / 6)


def naive_loss(logp, old, ref, adv, mask, cfg: AlgoConfig, max_len: int) -> float:
    """Straight from the formulas, one sequence and token at a time, in Python floats."""
    n, t = logp.shape
    per_seq, total, count = [], 0.0, 0
    for i in range(n):
        real = [j for j in range(t) if mask[i, j] > 0]
        seq_lr = sum(float(logp[i, j] - old[i, j]) for j in real) / max(len(real), 1)
        losses = []
        for j in real:
            lr = seq_lr if cfg.ratio_level == "sequence" else float(logp[i, j] - old[i, j])
            r = math.exp(lr)
            a = float(adv[i])
            surrogate = min(r * a, min(max(r, 1 - cfg.eps_low), 1 + cfg.eps_high) * a)
            log_rho = min(max(float(ref[i, j] - logp[i, j]), -cfg.kl_clamp), cfg.kl_clamp)
            kl = math.exp(log_rho) - 1 - log_rho
            losses.append(-surrogate + cfg.beta * kl)
        per_seq.append(sum(losses) / max(len(losses), 1))
        total += sum(losses)
        count += len(losses)
    if cfg.loss == "grpo":
        return sum(per_seq) / n
    if cfg.loss in ("bnpo", "dapo"):
        return total / count
    return total / (n * max_len)


@pytest.mark.parametrize("loss", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_vectorised_loss_matches_naive_loop(loss, level):
    g = torch.Generator().manual_seed(0)
    n, t = 6, 5
    logp = -torch.rand(n, t, generator=g) * 3
    old = logp + 0.3 * torch.randn(n, t, generator=g)  # ratios spread across both clip edges
    ref = logp + 0.5 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    cfg = AlgoConfig(beta=0.1, loss=loss, ratio_level=level, eps_low=0.2, eps_high=0.28)
    norm = LossNorm(num_sequences=n, num_tokens=int(mask.sum()), max_len=t, num_micro_batches=1)
    got = policy_loss(logp, old, ref, adv, mask, cfg, norm).loss.item()
    want = naive_loss(logp, old, ref, adv, mask, cfg, t)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_loss_parts_statistics():
    # two real tokens with ratios 1.5 and 0.5 and A=+1 (third token masked out):
    # ratio mean = 1.0, max = 1.5, one high clip of two tokens
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 5.0]])
    parts = policy_loss(logp, torch.zeros(1, 3), None, torch.tensor([1.0]),
                        torch.tensor([[1.0, 1.0, 0.0]]), AlgoConfig(beta=0.0),
                        LossNorm(1, 2, 3, 1))
    assert parts.tokens == 2
    assert parts.ratio_sum / parts.tokens == pytest.approx(1.0)
    assert parts.ratio_max == pytest.approx(1.5)
    assert parts.clip_high_sum == 1 and parts.clip_low_sum == 0
