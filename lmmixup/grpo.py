"""GRPO's math as pure tensor functions, and the config that selects between its variants.

Legend: B prompts, G completions per prompt, N = B*G sequences, T completion tokens.

What this module implements, and where each choice comes from:
  * Advantage  A_i = (r_i - mean_group(r)) / scale,  scale in {group std (GRPO, DeepSeekMath),
    batch std, 1 (Dr. GRPO)}. Every std in the project (advantages, the per-group reward
    normalisation `group_normalize`, the logged reward std) is the Bessel-corrected
    one, `group_std` below (as TRL's GRPOTrainer), plus an epsilon, so a group whose rewards are
    all equal gets A = 0 rather than 0/0.
  * Importance ratio per token, r_t = pi/pi_old, or per sequence (GSPO):
    s_i = exp(mean_t log(pi/pi_old)), shared by every token of the sequence. The log-ratio is
    clamped to [-20, 20] before exp (as verl and OpenRLHF do): one token whose probability
    collapsed cannot make the loss inf; the clip is active there anyway.
  * PPO clipped surrogate with asymmetric bounds [1 - eps_low, 1 + eps_high] (DAPO's clip-higher).
  * KL to the frozen reference as a loss term weighted by beta, with Schulman's estimators
    (http://joschu.net/blog/kl-approx.html). With rho = pi_ref / pi and samples from pi:
        k1 = -log rho,   k2 = (log rho)^2 / 2,   k3 = rho - 1 - log rho   (low variance, >= 0).
    log rho is clamped to [-kl_clamp, kl_clamp] before exp, so one very unlikely token cannot
    turn the loss into inf/NaN.
  * Loss aggregation ("how do token losses become one number"), a registry of small functions:
        grpo      mean over sequences of the per-sequence token mean   (DeepSeekMath)
        dapo      sum over all tokens / number of tokens in the batch  (DAPO)
        dr_grpo   sum over all tokens / (N * max_new_tokens)           (Dr. GRPO)
        bnpo      mean over micro-batches of each micro-batch's token mean (TRL's `bnpo`)
    The first three normalisers are computed once for the whole optimizer mini-batch
    (`LossNorm`), so gradient accumulation over micro-batches gives exactly the full-batch
    gradient whatever the split. bnpo is kept for comparison with TRL: it depends on the split
    (a short micro-batch weighs as much as a long one), which is why it is not a default.
  * Rollout correction (`rollout_is`): the sampler may run at another precision than the trainer
    (bf16 rollouts; vLLM later), so pi_rollout != pi_old. With rho_t = pi_old / pi_rollout:
        token_tis  w_t = min(rho_t, C), detached, multiplies the per-token surrogate
                   (truncated IS, Yao et al. 2025, "Your efficient RL framework secretly
                   brings you off-policy RL training"; verl's rollout_is)
        seq_mask   a sequence whose geometric-mean ratio exp(mean_t log rho_t) is outside
                   [1/C, C] is dropped from the loss (verl's geometric mask mode)
    and `mismatch_stats` measures the gap: |delta log p|, K3 KL, chi^2 per token and per
    sequence, the effective sample size, the ratio's range. The default, auto, is token_tis
    exactly when the sampler's precision is not the trainer's (lmmixup/precision.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from lmmixup.errors import require


@dataclass
class AlgoConfig:
    group_size: int = 4
    """G: completions sampled per prompt"""
    beta: float = 0.04
    """weight of the KL-to-reference loss term; 0 disables it and skips the reference model"""
    kl_estimator: str = "k3"
    """KL estimator: k1 | k2 | k3"""
    kl_clamp: float = 10.0
    """|log(pi_ref/pi)| is clamped to this before exp"""
    eps_low: float = 0.2
    """lower clip: ratios below 1 - eps_low stop pushing down"""
    eps_high: float = 0.2
    """upper clip: ratios above 1 + eps_high stop pushing up (0.28 in DAPO, 0.3 in the paper)"""
    ratio_level: str = "token"
    """importance ratio per token (GRPO) or per sequence (GSPO)"""
    loss: str = "grpo"
    """loss aggregation: grpo | dapo | dr_grpo | bnpo (TRL's per-micro-batch token mean)"""
    adv_scale: str = "group_std"
    """advantage scale: group_std | batch_std | none"""
    adv_eps: float = 1e-4
    """added to the std in the advantage denominator"""
    num_iterations: int = 1
    """mu: optimizer passes over each rollout batch (old log-probs are stored once)"""
    mask_truncated: bool = False
    """drop completions that hit max_new_tokens without EOS from the loss (DAPO's overlong filter)"""
    filter_zero_std_groups: bool = False
    """drop groups whose rewards are all equal (they carry no signal) and sample more (DAPO)"""
    max_resample_rounds: int = 0
    """with filter_zero_std_groups: extra rollout rounds allowed per step to refill the batch"""
    rollout_is: str = "auto"
    """rollout correction: auto (token_tis when the sampler and the trainer run at different
    precisions, see precision.*; else none) | none | token_tis (w = min(pi_old/pi_rollout, C)) |
    seq_mask"""
    rollout_is_cap: float = 2.0
    """C: the truncation cap of token_tis, the mask bound [1/C, C] of seq_mask"""

    def validate(self) -> None:
        require(self.group_size >= 2, "algo.group_size",
                f"must be >= 2 (a group-relative advantage needs a group), got {self.group_size}")
        require(self.beta >= 0, "algo.beta", f"must be >= 0, got {self.beta}")
        require(self.kl_estimator in KL_ESTIMATORS, "algo.kl_estimator",
                f"unknown {self.kl_estimator!r}; known: {', '.join(KL_ESTIMATORS)}")
        require(self.kl_clamp > 0, "algo.kl_clamp", "must be > 0")
        require(0 <= self.eps_low < 1, "algo.eps_low", f"must be in [0, 1), got {self.eps_low}")
        require(self.eps_high >= 0, "algo.eps_high", f"must be >= 0, got {self.eps_high}")
        require(self.ratio_level in ("token", "sequence"), "algo.ratio_level",
                f"must be token or sequence, got {self.ratio_level!r}")
        require(self.loss in AGGREGATIONS, "algo.loss",
                f"unknown {self.loss!r}; known: {', '.join(AGGREGATIONS)}")
        require(self.adv_scale in ADVANTAGE_SCALES, "algo.adv_scale",
                f"unknown {self.adv_scale!r}; known: {', '.join(ADVANTAGE_SCALES)}")
        require(self.adv_eps > 0, "algo.adv_eps", "must be > 0")
        require(self.num_iterations >= 1, "algo.num_iterations", "must be >= 1")
        require(self.max_resample_rounds >= 0, "algo.max_resample_rounds", "must be >= 0")
        require(self.rollout_is == "auto" or self.rollout_is in ROLLOUT_IS_MODES, "algo.rollout_is",
                f"unknown {self.rollout_is!r}; known: auto, {', '.join(ROLLOUT_IS_MODES)}")
        require(self.rollout_is_cap > 1, "algo.rollout_is_cap", "must be > 1")


# ----------------------------------------------------------------------------- advantages

def group_std(grouped: torch.Tensor) -> torch.Tensor:
    """(B, G) -> (B, 1): the project's one std convention, Bessel-corrected (divides by G - 1)."""
    return grouped.std(dim=1, correction=1, keepdim=True)  # (B, 1)


def group_normalize(scores: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(N,) -> (N,): standardise within each group of G consecutive completions, with the same
    std as the advantages. The per-group reward normalisation (reward.normalize_per_group) and
    its attribution (lmmixup/attribution.py) share it, so it lives with the math they share."""
    grouped = scores.view(-1, group_size)  # (B, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (B, 1)
    std = group_std(grouped)  # (B, 1), Bessel-corrected: the advantages' convention
    return ((grouped - mean) / (std + eps)).view(-1)  # (N,)


def _group_std_scale(grouped: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
    return group_std(grouped)  # (B, 1)


def _batch_std_scale(grouped: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
    flat = population.reshape(1, -1)  # (1, M)
    return group_std(flat).expand(grouped.shape[0], 1)  # (B, 1), one std for the whole batch


def _no_scale(grouped: torch.Tensor, population: torch.Tensor) -> Optional[torch.Tensor]:
    return None


ADVANTAGE_SCALES: Dict[str, Callable[[torch.Tensor, torch.Tensor], Optional[torch.Tensor]]] = {
    "group_std": _group_std_scale,
    "batch_std": _batch_std_scale,
    "none": _no_scale,
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group_std",
                     eps: float = 1e-4, population: Optional[torch.Tensor] = None) -> torch.Tensor:
    """rewards (N,) in group order -> advantages (N,). population (M,): the rewards batch_std
    is taken over, default `rewards`; under torchrun the global batch's (every rank's rows)."""
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    std = ADVANTAGE_SCALES[scale](grouped, rewards if population is None else population)  # (B, 1) or None
    if std is not None:
        centred = centred / (std + eps)  # (B, G)
    return centred.reshape(-1)  # (N,)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) -> (B,) bool: groups whose rewards are all identical (zero advantage, no signal)."""
    grouped = rewards.view(-1, group_size)  # (B, G)
    return (grouped == grouped[:, :1]).all(dim=1)  # (B,)


# ----------------------------------------------------------------------------- KL

def _k1(log_rho: torch.Tensor) -> torch.Tensor:
    return -log_rho


def _k2(log_rho: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_rho**2


def _k3(log_rho: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_rho) - 1 - log_rho


KL_ESTIMATORS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3",
               clamp: float = 10.0) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate. logp, ref_logp: (N, T) -> (N, T)."""
    log_rho = (ref_logp - logp).clamp(-clamp, clamp)  # (N, T) log(pi_ref / pi)
    return KL_ESTIMATORS[estimator](log_rho)  # (N, T)


# ----------------------------------------------------------------------------- ratio + surrogate

LOG_RATIO_CLAMP = 20.0  # |log(pi / pi_old)| bound before exp (verl, OpenRLHF)


def importance_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                         level: str = "token") -> torch.Tensor:
    """log(pi / pi_old) per token (N, T), clamped to +-LOG_RATIO_CLAMP. At sequence level (GSPO)
    every token of sequence i carries mean_t log(pi/pi_old) over its real tokens."""
    log_ratio = logp - old_logp  # (N, T)
    if level == "sequence":
        seq = (log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)
        log_ratio = seq[:, None].expand_as(logp)  # (N, T)
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (N, T)


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: float):
    """PPO's pessimistic objective, as a loss. log_ratio (N, T), advantages (N,).

    Returns per-token loss (N, T), ratio (N, T), and where each clip side is active (N, T) bool.
    """
    ratio = torch.exp(log_ratio)  # (N, T)
    adv = advantages[:, None]  # (N, 1)
    unclipped = ratio * adv  # (N, T)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv  # (N, T)
    loss = -torch.minimum(unclipped, clipped)  # (N, T)
    # A clip side is "active" when it zeroes the gradient: the ratio left the trust region in the
    # direction the advantage pushes.
    clipped_low = (ratio < 1 - eps_low) & (adv < 0)  # (N, T)
    clipped_high = (ratio > 1 + eps_high) & (adv > 0)  # (N, T)
    return loss, ratio, clipped_low, clipped_high


# ----------------------------------------------------------------------------- aggregation

@dataclass(frozen=True)
class LossNorm:
    """Normalisers of one optimizer mini-batch, computed before it is split into micro-batches."""

    num_sequences: int  # sequences in the mini-batch
    num_tokens: int  # real (masked-in) completion tokens in the mini-batch
    max_len: int  # the constant of Dr. GRPO: max_new_tokens
    num_micro_batches: int  # micro-batches the mini-batch is split into (bnpo only)


def _agg_grpo(token_loss, mask, norm: LossNorm):
    per_seq = (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (n,)
    return per_seq.sum() / norm.num_sequences


def _agg_token_mean(token_loss, mask, norm: LossNorm):
    return (token_loss * mask).sum() / max(norm.num_tokens, 1)


def _agg_dr_grpo(token_loss, mask, norm: LossNorm):
    return (token_loss * mask).sum() / (norm.num_sequences * norm.max_len)


def _agg_bnpo(token_loss, mask, norm: LossNorm):
    # TRL: each micro-batch's own token mean, averaged over the accumulation steps.
    return (token_loss * mask).sum() / mask.sum().clamp(min=1) / norm.num_micro_batches


AGGREGATIONS: Dict[str, Callable[[torch.Tensor, torch.Tensor, LossNorm], torch.Tensor]] = {
    "grpo": _agg_grpo,
    "dapo": _agg_token_mean,
    "dr_grpo": _agg_dr_grpo,
    "bnpo": _agg_bnpo,
}


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm, mode: str) -> torch.Tensor:
    """(n, T) per-token values of a micro-batch -> this micro-batch's share of the mini-batch loss.

    Summing the shares of all micro-batches equals aggregating the whole mini-batch at once,
    except for bnpo, whose value depends on the split by definition."""
    return AGGREGATIONS[mode](token_loss, mask, norm)


# ----------------------------------------------------------------------------- rollout correction

@dataclass(frozen=True)
class RolloutWeights:
    """Detached per-token weights of the rollout correction, and how much they cut."""

    weights: torch.Tensor  # (N, T) float, multiplies the per-token surrogate
    frac_tokens_truncated: float  # real tokens whose weight was capped (token_tis)
    frac_seqs_masked: float  # sequences dropped from the loss (seq_mask)


def _rollout_log_rho(old_logp: torch.Tensor, rollout_logp: torch.Tensor) -> torch.Tensor:
    return (old_logp - rollout_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (N, T)


def _no_correction(log_rho, mask, cap):
    return torch.ones_like(log_rho), 0.0, 0.0  # (N, T)


def _token_tis(log_rho, mask, cap):
    rho = torch.exp(log_rho)  # (N, T)
    truncated = (rho > cap) & (mask > 0)  # (N, T)
    frac = float(truncated.sum()) / max(float(mask.sum()), 1.0)
    return rho.clamp(max=cap), frac, 0.0  # (N, T)


def _seq_mask(log_rho, mask, cap):
    seq = (log_rho * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,) log geometric mean
    keep = (seq.abs() <= math.log(cap)).float()  # (N,) inside [1/C, C]
    has_tokens = mask.sum(dim=1) > 0  # (N,)
    frac = float(((keep == 0) & has_tokens).sum()) / max(int(has_tokens.sum()), 1)
    return keep[:, None].expand_as(log_rho), 0.0, frac  # (N, T)


ROLLOUT_IS_MODES: Dict[str, Callable[[torch.Tensor, torch.Tensor, float], tuple]] = {
    "none": _no_correction,
    "token_tis": _token_tis,
    "seq_mask": _seq_mask,
}


@torch.no_grad()
def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                       mode: str, cap: float) -> RolloutWeights:
    """old_logp (trainer), rollout_logp (sampler), mask: (N, T) -> the correction's weights."""
    log_rho = _rollout_log_rho(old_logp, rollout_logp)  # (N, T) log(pi_old / pi_rollout)
    weights, frac_tokens, frac_seqs = ROLLOUT_IS_MODES[mode](log_rho, mask, cap)
    return RolloutWeights(weights=weights * mask, frac_tokens_truncated=frac_tokens,
                          frac_seqs_masked=frac_seqs)


@dataclass(frozen=True)
class MismatchStats:
    """How far the sampler's distribution is from the trainer's, on the sampled tokens.

    With rho_t = pi_old(y_t) / pi_rollout(y_t) and the tokens drawn from pi_rollout:
      KL(pi_rollout || pi_old) ~ mean_t k3 = mean_t (rho_t - 1 - log rho_t)       (>= 0)
      chi^2 per token           ~ mean_t (rho_t - 1)^2
      chi^2 per sequence        ~ mean_i (rho_i - 1)^2, rho_i = prod_t rho_t
      ESS                       = (sum_i rho_i)^2 / (N sum_i rho_i^2), 1 = no mismatch
    """

    abs_diff_mean: float  # mean over real tokens of |log pi_old - log pi_rollout|
    abs_diff_max: float  # max of the same
    kl_k3: float
    chi2_token: float
    chi2_seq: float
    ess: float  # normalised effective sample size of the sequence ratios, in (0, 1]
    ratio_min: float  # min over real tokens of rho_t
    ratio_mean: float
    ratio_max: float


@torch.no_grad()
def mismatch_stats(old_logp: torch.Tensor, rollout_logp: torch.Tensor,
                   mask: torch.Tensor) -> MismatchStats:
    """old_logp, rollout_logp, mask: (N, T) -> MismatchStats (pure; every mean over real tokens)."""
    log_rho = _rollout_log_rho(old_logp, rollout_logp) * mask  # (N, T), 0 on padding
    real = mask > 0  # (N, T)
    tokens = max(float(mask.sum()), 1.0)
    rho = torch.exp(log_rho)  # (N, T), 1 on padding
    seq_rho = torch.exp(log_rho.sum(dim=1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (N,)
    has = real.any(dim=1)  # (N,) sequences with tokens
    seq = seq_rho[has].double()  # (N',)
    real_rho = rho[real] if real.any() else torch.ones(1)  # (tokens,)
    return MismatchStats(
        abs_diff_mean=float(log_rho.abs().sum()) / tokens,
        abs_diff_max=float(log_rho.abs().max()),
        kl_k3=float(((rho - 1 - log_rho) * mask).sum()) / tokens,
        chi2_token=float((((rho - 1) ** 2) * mask).sum()) / tokens,
        chi2_seq=float(((seq - 1) ** 2).mean()) if len(seq) else 0.0,
        ess=float(seq.sum() ** 2 / (len(seq) * (seq**2).sum())) if len(seq) else 1.0,
        ratio_min=float(real_rho.min()),
        ratio_mean=float(real_rho.mean()),
        ratio_max=float(real_rho.max()),
    )


# ----------------------------------------------------------------------------- the loss

@dataclass
class LossParts:
    """A micro-batch's loss and the token-summed statistics the trainer logs."""

    loss: torch.Tensor  # scalar with grad: this micro-batch's share of the mini-batch loss
    tokens: float  # real tokens in the micro-batch
    kl_sum: float  # sum over real tokens of the KL estimate
    ratio_sum: float  # sum over real tokens of the importance ratio
    ratio_max: float  # max ratio over real tokens
    clip_low_sum: float  # real tokens where the low clip was active
    clip_high_sum: float  # real tokens where the high clip was active


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: Optional[torch.Tensor],
                advantages: torch.Tensor, mask: torch.Tensor, cfg: AlgoConfig,
                norm: LossNorm, is_weights: Optional[torch.Tensor] = None) -> LossParts:
    """The GRPO objective for one micro-batch.

    logp (n, T) with grad; old_logp, ref_logp (n, T) without; advantages (n,); mask (n, T) float;
    is_weights (n, T) detached rollout-correction weights, or None (= 1).
    per-token loss = -w min(r A, clip(r) A) + beta * KL_k(pi || pi_ref)
    """
    log_ratio = importance_log_ratio(logp, old_logp, mask, cfg.ratio_level)  # (n, T)
    token_loss, ratio, clip_low, clip_high = clipped_surrogate(
        log_ratio, advantages, cfg.eps_low, cfg.eps_high)  # (n, T) each
    if is_weights is not None:
        token_loss = token_loss * is_weights  # (n, T)
    kl = torch.zeros_like(logp)  # (n, T)
    if cfg.beta > 0:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp)  # (n, T)
        token_loss = token_loss + cfg.beta * kl
    loss = aggregate(token_loss, mask, norm, cfg.loss)
    real = mask > 0
    with torch.no_grad():
        return LossParts(
            loss=loss,
            tokens=float(mask.sum()),
            kl_sum=float((kl * mask).sum()),
            ratio_sum=float((ratio * mask).sum()),
            ratio_max=float(ratio[real].max()) if real.any() else 1.0,
            clip_low_sum=float((clip_low & real).sum()),
            clip_high_sum=float((clip_high & real).sum()),
        )
