"""GRPO's math as pure tensor functions, and the config that selects between its variants.

Legend: B prompts, G completions per prompt, N = B*G sequences, T completion tokens.

What this module implements, and where each choice comes from:
  * Advantage  A_i = (r_i - mean_group(r)) / scale,  scale in {group std (GRPO, DeepSeekMath),
    batch std, 1 (Dr. GRPO)}. The std is the unbiased one (Bessel), plus `adv_eps`, so a group
    whose rewards are all equal gets A = 0 rather than 0/0.
  * Importance ratio per token, r_t = pi/pi_old, or per sequence (GSPO):
    s_i = exp(mean_t log(pi/pi_old)), shared by every token of the sequence.
  * PPO clipped surrogate with asymmetric bounds [1 - eps_low, 1 + eps_high] (DAPO's clip-higher).
  * KL to the frozen reference as a loss term weighted by beta, with Schulman's estimators
    (http://joschu.net/blog/kl-approx.html). With rho = pi_ref / pi and samples from pi:
        k1 = -log rho,   k2 = (log rho)^2 / 2,   k3 = rho - 1 - log rho   (low variance, >= 0).
    log rho is clamped to [-kl_clamp, kl_clamp] before exp, so one very unlikely token cannot
    turn the loss into inf/NaN.
  * Loss aggregation ("how do token losses become one number"), a registry of small functions:
        grpo      mean over sequences of the per-sequence token mean   (DeepSeekMath)
        bnpo/dapo sum over all tokens / number of tokens in the batch  (DAPO)
        dr_grpo   sum over all tokens / (N * max_new_tokens)           (Dr. GRPO)
    Every normaliser is computed once for the whole optimizer mini-batch (`LossNorm`), so
    gradient accumulation over micro-batches gives exactly the full-batch gradient whatever the
    split; a per-micro-batch mean would weight short micro-batches wrongly.
"""

from __future__ import annotations

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
    """loss aggregation: grpo | bnpo | dapo | dr_grpo"""
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


# ----------------------------------------------------------------------------- advantages

def _group_std_scale(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.std(dim=1, keepdim=True)  # (B, 1), unbiased


def _batch_std_scale(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.std().expand(grouped.shape[0], 1)  # (B, 1), one std for the whole batch


def _no_scale(grouped: torch.Tensor) -> Optional[torch.Tensor]:
    return None


ADVANTAGE_SCALES: Dict[str, Callable[[torch.Tensor], Optional[torch.Tensor]]] = {
    "group_std": _group_std_scale,
    "batch_std": _batch_std_scale,
    "none": _no_scale,
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group_std",
                     eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) in group order -> advantages (N,)."""
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    std = ADVANTAGE_SCALES[scale](grouped)  # (B, 1) or None
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

def importance_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                         level: str = "token") -> torch.Tensor:
    """log(pi / pi_old) per token (N, T). At sequence level (GSPO) every token of sequence i
    carries mean_t log(pi/pi_old) over its real tokens."""
    log_ratio = logp - old_logp  # (N, T)
    if level == "sequence":
        seq = (log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)
        log_ratio = seq[:, None].expand_as(logp)  # (N, T)
    return log_ratio


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


def _agg_grpo(token_loss, mask, norm: LossNorm):
    per_seq = (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (n,)
    return per_seq.sum() / norm.num_sequences


def _agg_token_mean(token_loss, mask, norm: LossNorm):
    return (token_loss * mask).sum() / max(norm.num_tokens, 1)


def _agg_dr_grpo(token_loss, mask, norm: LossNorm):
    return (token_loss * mask).sum() / (norm.num_sequences * norm.max_len)


AGGREGATIONS: Dict[str, Callable[[torch.Tensor, torch.Tensor, LossNorm], torch.Tensor]] = {
    "grpo": _agg_grpo,
    "bnpo": _agg_token_mean,
    "dapo": _agg_token_mean,
    "dr_grpo": _agg_dr_grpo,
}


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, norm: LossNorm, mode: str) -> torch.Tensor:
    """(n, T) per-token values of a micro-batch -> this micro-batch's share of the mini-batch loss.

    Summing the shares of all micro-batches equals aggregating the whole mini-batch at once."""
    return AGGREGATIONS[mode](token_loss, mask, norm)


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
                norm: LossNorm) -> LossParts:
    """The GRPO objective for one micro-batch.

    logp (n, T) with grad; old_logp, ref_logp (n, T) without; advantages (n,); mask (n, T) float.
    per-token loss = -min(r A, clip(r) A) + beta * KL_k(pi || pi_ref)
    """
    log_ratio = importance_log_ratio(logp, old_logp, mask, cfg.ratio_level)  # (n, T)
    token_loss, ratio, clip_low, clip_high = clipped_surrogate(
        log_ratio, advantages, cfg.eps_low, cfg.eps_high)  # (n, T) each
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
