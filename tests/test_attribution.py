"""Per-reward advantage attribution (lmmixup/attribution.py): exact, hand-checked, loop-checked."""

import math

import pytest
import torch

from lmmixup.attribution import advantage_split, attribution_metrics
from lmmixup.grpo import group_advantages
from lmmixup.rewards.registry import RewardBatch, RewardConfig, compute_rewards

EPS = 1e-4  # algo.adv_eps default


def hand_case():
    # Two rewards a (w 0.6) and b (w 0.4), two groups of G = 2.
    #   group 0: a = [1, 0], b = [0, 1] -> R = [0.6, 0.4], mean 0.5, centred [+0.1, -0.1]
    #   group 1: a = [1, 1], b = [1, 0] -> R = [1.0, 0.6], mean 0.8, centred [+0.2, -0.2]
    components = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0]), "b": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    total = 0.6 * components["a"] + 0.4 * components["b"]
    return components, total, {"a": 0.6, "b": 0.4}


def test_hand_computed_two_rewards_two_groups_group_std():
    components, total, weights = hand_case()
    split = advantage_split(components, total, weights, group_size=2, adv_scale="group_std",
                            adv_eps=EPS, normalize_per_group=False, group_norm_eps=1e-4)
    # unbiased std of two values x, y is |x - y| / sqrt(2):
    s0 = 0.2 / math.sqrt(2) + EPS  # 0.141521356
    s1 = 0.4 / math.sqrt(2) + EPS  # 0.282942712
    # A_ik = w_k (r_ik - mean_g r_k) / s_g
    #   group 0: a: 0.6 * (+-0.5) = +-0.3;  b: 0.4 * (-+0.5) = -+0.2
    #   group 1: a: 0.6 * 0 = 0;            b: 0.4 * (+-0.5) = +-0.2
    expected_a = [0.3 / s0, -0.3 / s0, 0.0, 0.0]  # [2.11982, -2.11982, 0, 0]
    expected_b = [-0.2 / s0, 0.2 / s0, 0.2 / s1, -0.2 / s1]  # [-1.41321, 1.41321, 0.70686, -0.70686]
    expected_adv = [0.1 / s0, -0.1 / s0, 0.2 / s1, -0.2 / s1]  # [0.70661, -0.70661, 0.70686, -0.70686]
    assert split.terms["a"].tolist() == pytest.approx(expected_a, abs=1e-5)
    assert split.terms["b"].tolist() == pytest.approx(expected_b, abs=1e-5)
    assert split.advantages.tolist() == pytest.approx(expected_adv, abs=1e-5)

    m = attribution_metrics(split, group_size=2)
    # |A| mass: a = 2 * 0.3/s0; b = 2 * 0.2/s0 + 2 * 0.2/s1
    mass_a, mass_b = 0.6 / s0, 0.4 / s0 + 0.4 / s1  # 4.23965, 4.24015
    assert m["attr/a_abs_share"] == pytest.approx(mass_a / (mass_a + mass_b), abs=1e-6)  # 0.49997
    assert m["attr/b_abs_share"] == pytest.approx(mass_b / (mass_a + mass_b), abs=1e-6)
    # signs of A: [+, -, +, -]. a: [+, -, 0, 0] agrees on 2 of 4; b: [-, +, +, -] on 2 of 4.
    assert m["attr/a_sign_agree"] == 0.5
    assert m["attr/b_sign_agree"] == 0.5
    # Orders: group 0 total says #0 > #1: a agrees, b reverses; group 1 total says #0 > #1:
    # a ties (not the same order), b agrees. So each decides one group of two.
    assert m["attr/frac_groups_decided_by_a"] == 0.5
    assert m["attr/frac_groups_decided_by_b"] == 0.5
    # Correlations (every vector has mean 0). With x0 = 0.1/s0, x1 = 0.2/s1:
    #   A = [x0, -x0, x1, -x1], A_a = [3x0, -3x0, 0, 0], A_b = [-2x0, 2x0, x1, -x1]
    #   corr(A_a, A) = 6x0^2 / (sqrt(18) x0 * sqrt(2(x0^2 + x1^2))) = x0 / sqrt(x0^2 + x1^2)
    #   corr(A_b, A) = (-4x0^2 + 2x1^2) / (sqrt(8x0^2 + 2x1^2) * sqrt(2x0^2 + 2x1^2))
    x0, x1 = 0.1 / s0, 0.2 / s1
    assert m["attr/a_corr"] == pytest.approx(x0 / math.sqrt(x0**2 + x1**2), abs=1e-6)  # 0.70698
    assert m["attr/b_corr"] == pytest.approx(
        (-4 * x0**2 + 2 * x1**2) / math.sqrt((8 * x0**2 + 2 * x1**2) * (2 * x0**2 + 2 * x1**2)),
        abs=1e-6)  # -0.31613


def test_hand_computed_without_scale_is_plain_centring():
    components, total, weights = hand_case()
    split = advantage_split(components, total, weights, group_size=2, adv_scale="none",
                            adv_eps=EPS, normalize_per_group=False, group_norm_eps=1e-4)
    # no division (Dr. GRPO): A_ik = w_k (r_ik - mean_g r_k), see the group_std case
    assert split.terms["a"].tolist() == pytest.approx([0.3, -0.3, 0.0, 0.0], abs=1e-7)
    assert split.terms["b"].tolist() == pytest.approx([-0.2, 0.2, 0.2, -0.2], abs=1e-7)


def _fixed_reward(values):
    return lambda batch: values  # a real reward function: scores the batch it is given


@pytest.mark.parametrize("adv_scale", ["group_std", "batch_std", "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_terms_sum_to_the_trainers_advantage(adv_scale, normalize):
    G, B = 4, 6
    gen = torch.Generator().manual_seed(7)
    raw = {
        "quality": torch.tensor([0.0, 0.3, 1.0])[torch.randint(0, 3, (B * G,), generator=gen)],
        "alignment": torch.rand(B * G, generator=gen),
        "format": torch.randint(0, 3, (B * G,), generator=gen).float() / 2,
    }
    raw["format"][:G] = 1.0  # a flat component in one group
    for k in raw:  # one group where everything is flat: A = 0 there, no 0/0
        raw[k][G:2 * G] = raw[k][G]
    cfg = RewardConfig(weights={"alignment": 0.4, "quality": 0.5, "format": 0.1},
                       normalize_per_group=normalize)
    batch = RewardBatch(prompts=[""] * (B * G), completions=[""] * (B * G),
                        references=[None] * (B * G), tasks=[None] * (B * G),
                        completion_tokens=[1] * (B * G))
    fns = {k: _fixed_reward(v.tolist()) for k, v in raw.items()}
    result = compute_rewards(fns, cfg, batch, G)  # the trainer's own mixing
    trainer_adv = group_advantages(result.total, G, adv_scale, EPS)  # (N,) what the update uses
    split = advantage_split(result.components, result.total, cfg.weights, G, adv_scale, EPS,
                            normalize, cfg.group_norm_eps)
    summed = torch.stack(list(split.terms.values())).sum(dim=0)
    assert (summed - trainer_adv).abs().max() <= 1e-6
    assert torch.equal(split.advantages, trainer_adv)
    assert split.terms["quality"][G:2 * G].abs().max() == 0
    m = attribution_metrics(split, G)
    assert sum(m[f"attr/{k}_abs_share"] for k in raw) == pytest.approx(1.0, abs=1e-9)


def _loop_metrics(terms, adv, G):
    """Naive per-completion / per-pair loops for sign agreement and group decisions."""
    out = {}
    n = len(adv)
    for k, t in terms.items():
        moving = [i for i in range(n) if adv[i] != 0]
        sgn = lambda x: (x > 0) - (x < 0)  # noqa: E731
        out[f"attr/{k}_sign_agree"] = sum(sgn(t[i]) == sgn(adv[i]) for i in moving) / len(moving)
        decided = same = 0
        for g in range(n // G):
            idx = range(g * G, (g + 1) * G)

            def order(v):
                return [[0 if abs(v[i] - v[j]) <= 1e-6 else sgn(v[i] - v[j]) for j in idx] for i in idx]

            if any(x != 0 for row in order(adv) for x in row):
                decided += 1
                same += order(t) == order(adv)
        out[f"attr/frac_groups_decided_by_{k}"] = same / decided
    return out


def test_vectorised_metrics_match_a_loop():
    G, B = 3, 20
    gen = torch.Generator().manual_seed(3)
    comps = {"x": torch.randint(0, 2, (B * G,), generator=gen).float(),
             "y": torch.randint(0, 3, (B * G,), generator=gen).float() / 2,
             "z": torch.rand(B * G, generator=gen)}
    w = {"x": 0.5, "y": 0.3, "z": 0.2}
    total = sum(w[k] * v for k, v in comps.items())
    split = advantage_split(comps, total, w, G, "group_std", EPS, False, 1e-4)
    m = attribution_metrics(split, G)
    expected = _loop_metrics({k: v.double().tolist() for k, v in split.terms.items()},
                             split.advantages.double().tolist(), G)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    # the case is not degenerate: some reward decides some groups but not all
    assert any(0 < m[f"attr/frac_groups_decided_by_{k}"] < 1 for k in comps)
    assert any(0 < m[f"attr/{k}_sign_agree"] < 1 for k in comps)


def test_undefined_metrics_are_left_out():
    comps = {"a": torch.ones(4), "b": torch.zeros(4)}  # every group flat: every A is 0
    split = advantage_split(comps, 0.5 * comps["a"], {"a": 0.5, "b": 0.5}, 2, "group_std", EPS,
                            False, 1e-4)
    assert attribution_metrics(split, 2) == {}
