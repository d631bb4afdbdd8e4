"""Per-reward advantage attribution: which reward moved this step's update.

Legend: B prompts, G completions per prompt, N = B*G sequences, K rewards.

The mixed reward is linear in its components, and so is the group-centred advantage before it is
divided by its scale (lmmixup/grpo.py `group_advantages`, lmmixup/rewards/registry.py
`compute_rewards`):

    R_i   = sum_k w_k z_ik                 z_ik = r_ik, or with reward.normalize_per_group=true
                                           the group-standardised component (r_ik - mean)/(std+eps)
    A_i   = (R_i - mean_g R) / s           s = std_g(R) + adv_eps (group_std),
                                               std_batch(R) + adv_eps (batch_std), 1 (none)
    A_ik  = w_k (z_ik - mean_g z_k) / s    so  sum_k A_ik = A_i exactly (up to float rounding).

The scale s is computed from the same total R that fed the advantage, with the same std
(unbiased) and eps, so the split is exact rather than approximate: no Shapley values or
gradients are needed. Nothing here changes training; these are read-only diagnostics.

Per-step metrics (`attribution_metrics`):
    attr/<k>_abs_share        sum_i |A_ik| / sum_i sum_k |A_ik|: who carries the advantage mass
    attr/<k>_sign_agree       fraction of completions with A_i != 0 where sign(A_ik) = sign(A_i)
    attr/<k>_corr             Pearson correlation of A_ik with A_i over the batch
    attr/frac_groups_decided_by_<k>
                              among groups with a non-flat total, the fraction where reward k
                              alone orders every pair of completions as the total does (ties
                              included: a pair tied on the total must be tied on k, and the
                              reverse), i.e. the update would rank the group the same without
                              the other rewards.
A metric that is undefined on a batch (every advantage 0, a constant term) is left out rather
than logged as 0, so a plot never shows an invented value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from lmmixup.grpo import ADVANTAGE_SCALES, group_normalize

# Two totals closer than this count as tied when deciding group orderings: rewards are
# float32, and 0.5*1 + 0.4*0 vs 0.4*1 + 0.5*0.2 must not look ordered by rounding alone.
TIE_TOL = 1e-6


@dataclass
class AdvantageSplit:
    """The exact per-reward decomposition of one batch's advantages."""

    advantages: torch.Tensor  # (N,) A_i = sum_k A_ik, as group_advantages computes it
    terms: Dict[str, torch.Tensor]  # reward name -> (N,) A_ik
    scale: torch.Tensor  # (B, 1) the denominator s of each group (ones for adv_scale=none)


def advantage_split(components: Dict[str, torch.Tensor], total: torch.Tensor,
                    weights: Dict[str, float], group_size: int, adv_scale: str, adv_eps: float,
                    normalize_per_group: bool, group_norm_eps: float) -> AdvantageSplit:
    """components name -> (N,) raw scores and the mixed total (N,) that fed the advantage ->
    the per-reward advantage terms. Pass the same settings the trainer used
    (cfg.reward.weights, cfg.algo.adv_scale, ...)."""
    grouped_total = total.view(-1, group_size)  # (B, G)
    std = ADVANTAGE_SCALES[adv_scale](grouped_total, total)  # (B, 1) or None
    scale = torch.ones_like(grouped_total[:, :1]) if std is None else std + adv_eps  # (B, 1)
    terms = {}
    for name, raw in components.items():
        z = group_normalize(raw, group_size, group_norm_eps) if normalize_per_group else raw  # (N,)
        zg = (weights[name] * z).view(-1, group_size)  # (B, G)
        terms[name] = ((zg - zg.mean(dim=1, keepdim=True)) / scale).reshape(-1)  # (N,)
    centred = grouped_total - grouped_total.mean(dim=1, keepdim=True)  # (B, G)
    advantages = (centred / scale).reshape(-1)  # (N,)
    return AdvantageSplit(advantages=advantages, terms=terms, scale=scale)


def _pairwise_order(values: torch.Tensor) -> torch.Tensor:
    """(B, G) -> (B, G, G) in {-1, 0, 1}: sign(v_i - v_j), with |diff| <= TIE_TOL a tie."""
    diff = values[:, :, None] - values[:, None, :]  # (B, G, G)
    return torch.where(diff.abs() <= TIE_TOL, torch.zeros_like(diff), torch.sign(diff))


def _corr(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two (N,) vectors; None when either is constant."""
    xc, yc = x - x.mean(), y - y.mean()  # (N,), (N,)
    denom = float(xc.norm() * yc.norm())
    return float((xc * yc).sum()) / denom if denom > 0 else None


def attribution_metrics(split: AdvantageSplit, group_size: int) -> Dict[str, float]:
    """The attr/* metrics of one batch (see the module docstring for each definition)."""
    a = split.advantages.double()  # (N,)
    terms = {k: v.double() for k, v in split.terms.items()}  # name -> (N,)
    out: Dict[str, float] = {}
    abs_mass = {k: float(t.abs().sum()) for k, t in terms.items()}
    total_mass = sum(abs_mass.values())
    moving = a != 0  # (N,) completions that get a push at all
    a_order = _pairwise_order(a.view(-1, group_size))  # (B, G, G)
    decided_groups = (a_order != 0).flatten(1).any(dim=1)  # (B,) groups with a non-flat total
    for name, t in terms.items():
        if total_mass > 0:
            out[f"attr/{name}_abs_share"] = abs_mass[name] / total_mass
        if moving.any():
            agree = torch.sign(t[moving]) == torch.sign(a[moving])  # (n_moving,)
            out[f"attr/{name}_sign_agree"] = float(agree.double().mean())
        corr = _corr(t, a)
        if corr is not None:
            out[f"attr/{name}_corr"] = corr
        if decided_groups.any():
            same = (_pairwise_order(t.view(-1, group_size)) == a_order).flatten(1).all(dim=1)  # (B,)
            out[f"attr/frac_groups_decided_by_{name}"] = float(same[decided_groups].double().mean())
    return out
