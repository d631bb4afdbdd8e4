"""One GRPO update on a sampled, scored batch: the loss mask, the frozen log-probs, the mu
passes of optimizer updates (`grpo_update`), and the step's metrics.

Sampling and scoring happen before, in the sampling layer (lmmixup/sampling/: `Policy` samples,
`collect` runs the rollout rounds); train.py calls them, then these, in its docstring's order.
The benchmark calls the same functions, so what it times is what training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import torch

from lmmixup.dist.context import LOCAL, DistContext
from lmmixup.dist.gather import gather_padded_rows
from lmmixup.errors import require
from lmmixup.grpo import (AlgoConfig, LossNorm, MismatchStats, mismatch_stats,
                          policy_loss, rollout_is_weights, zero_std_groups)
from lmmixup.logprobs import completion_logprobs
from lmmixup.optim import advance_schedule
from lmmixup.precision import autocast, resolve_rollout_is
from lmmixup.rollout_batch import Rollout


def loss_mask(rollout: Rollout, algo: AlgoConfig) -> torch.Tensor:
    """(N, T) tokens that enter the loss; truncated rows are dropped if algo.mask_truncated."""
    mask = rollout.completion_mask
    if algo.mask_truncated:
        mask = mask * (~rollout.truncated).float()[:, None]
    return mask


@torch.no_grad()
def frozen_logprobs(model, rollout: Rollout, temperature: float, micro_batch_size: int,
                    chunk_size: int, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log-probs (N, T) fp32 of the rollout's completions under a model, without gradients;
    compute_dtype: the GEMMs' precision (precision.train resolved; lmmixup/precision.py)."""
    if rollout.num_sequences == 0:  # a rank whose groups DAPO filtered away
        return torch.zeros_like(rollout.completion_mask)  # (0, T)
    out = []
    for s in range(0, rollout.num_sequences, micro_batch_size):
        sl = slice(s, s + micro_batch_size)
        with autocast(compute_dtype, rollout.prompt_ids.device.type):
            lp, _ = completion_logprobs(model, rollout.prompt_ids[sl], rollout.prompt_mask[sl],
                                        rollout.completion_ids[sl], temperature, chunk_size)
        out.append(lp)
    return torch.cat(out)  # (N, T)


@dataclass(frozen=True)
class UpdateConfig:
    """How one rollout batch becomes optimizer updates (train.py: `update_config(cfg)`)."""

    algo: AlgoConfig
    max_new_tokens: int  # T_max, the constant of Dr. GRPO's aggregation
    mini_batch_size: int  # sequences per optimizer update
    micro_batch_size: int  # sequences per forward/backward (gradient accumulation)
    temperature: float  # tau of the log-probs
    chunk_size: int  # positions per lm_head + log-softmax chunk
    max_grad_norm: float  # clip the global gradient norm (<= 0: measure only)
    update_slots: int  # lr-schedule steps this batch owns: mu * (planned N / mini_batch_size)
    compute_dtype: torch.dtype = torch.float32  # forward GEMMs' precision (precision.train)
    precision_gap: bool = False  # sampler and trainer differ in precision: rollout_is=auto corrects


def update_config(cfg, world_size: int = 1, compute_dtype: torch.dtype = torch.float32,
                  precision_gap: bool = False) -> UpdateConfig:
    """The UpdateConfig of a TrainConfig. The schedule's horizon is steps * update_slots: every
    planned update slot advances it, also one whose mini-batch DAPO filtered away or that was
    skipped as non-finite, so the lr at step s never depends on what filtering did.
    Under torchrun, mini_batch_size is one rank's share of a mini-batch (lmmixup/dist/shard.py).
    compute_dtype, precision_gap: the resolved precisions (train.py, lmmixup/precision.py)."""
    g = cfg.algo.group_size
    mini_prompts = cfg.mini_batch_prompts or cfg.prompts_per_step
    require(mini_prompts % world_size == 0, "mini_batch_prompts" if cfg.mini_batch_prompts
            else "prompts_per_step",
            f"must be divisible by the {world_size} ranks (each takes an equal share of a mini-batch)")
    return UpdateConfig(
        algo=cfg.algo, max_new_tokens=cfg.rollout.max_new_tokens,
        mini_batch_size=mini_prompts // world_size * g,
        micro_batch_size=cfg.micro_batch_size, temperature=cfg.rollout.temperature,
        chunk_size=cfg.logprob_chunk_size, max_grad_norm=cfg.optim.max_grad_norm,
        update_slots=cfg.algo.num_iterations * (cfg.prompts_per_step // mini_prompts),
        compute_dtype=compute_dtype, precision_gap=precision_gap)


@dataclass
class UpdateStats:
    """What one rollout batch's updates did; token means over the mini-batches actually applied."""

    loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    ratio_mean: float = 0.0
    ratio_max: float = 0.0
    clip_frac_low: float = 0.0
    clip_frac_high: float = 0.0
    grad_norm: float = 0.0
    lr: float = 0.0  # mean learning rate of the applied updates (the rate they used)
    updates: int = 0
    skipped_nonfinite: List[str] = field(default_factory=list)
    mismatch: Optional[MismatchStats] = None  # sampler vs trainer, when the rollout has log-probs
    is_frac_tokens_truncated: float = 0.0  # rollout correction: tokens whose weight was capped
    is_frac_seqs_masked: float = 0.0  # rollout correction: sequences dropped from the loss


@dataclass
class _Sums:
    """Token-summed statistics of one mini-batch, added to the step's only if it is applied."""

    tokens: float = 0.0
    kl: float = 0.0
    ratio: float = 0.0
    ratio_max: float = 0.0
    clip_low: float = 0.0
    clip_high: float = 0.0
    entropy: float = 0.0
    entropy_tokens: float = 0.0
    loss: float = 0.0

    @staticmethod
    def added() -> List[str]:
        """The fields that add up over mini-batches and ranks: every field but ratio_max (a max)."""
        return [f.name for f in fields(_Sums) if f.name != "ratio_max"]

    def add(self, other: "_Sums") -> None:
        for f in self.added():
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.ratio_max = max(self.ratio_max, other.ratio_max)


def mini_batch_bounds(group_positions: Sequence[int], group_size: int,
                      prompts_per_mini: int) -> List[tuple]:
    """This rank's row range of each global mini-batch up to its last non-empty one.

    group_positions (b,): each local group's place in the global batch order (non-decreasing);
    group p belongs to global mini-batch p // prompts_per_mini, as in one process. Rows are
    group-major, G per group."""
    which = [p // prompts_per_mini for p in group_positions]  # (b,)
    require(which == sorted(which), "group_positions", "must be in global order")
    count = which[-1] + 1 if which else 0
    return [(group_size * sum(w < k for w in which), group_size * sum(w <= k for w in which))
            for k in range(count)]


def grpo_update(model, optimizer, scheduler, rollout: Rollout, advantages: torch.Tensor,
                old_logp: Optional[torch.Tensor], ref_logp: Optional[torch.Tensor],
                cfg: UpdateConfig, dist: DistContext = LOCAL,
                group_positions: Optional[Sequence[int]] = None) -> UpdateStats:
    """mu passes of optimizer updates over one rollout batch.

    advantages (N,); old_logp, ref_logp (N, T) or None. old_logp None means "the policy that
    sampled is the policy being updated" (mu = 1 and a single mini-batch): the detached current
    log-probs then stand in for it, so the ratio is exactly 1 and the clip is inactive, by design.
    rollout.rollout_logp (the sampler's log-probs, when the engine records them) is compared with
    the old log-probs (`stats.mismatch`) and feeds the rollout correction `cfg.algo.rollout_is`
    (auto: token_tis when cfg.precision_gap says the sampler ran at another precision).
    The forwards run under cfg.compute_dtype's autocast (lmmixup/precision.py says which ops that
    puts in bf16); the loss, the backward call and the optimizer step run outside it, in fp32
    (the backward's GEMMs follow the forward's dtypes through autograd's record of the casts).
    A mini-batch whose loss or gradient is not finite is skipped before the weights change, and
    its statistics are dropped; it still consumes its lr-schedule slot, as does every planned
    slot this (possibly DAPO-filtered, smaller) batch has no mini-batch for.

    Under torchrun (`dist`), the rollout is this rank's share and cfg.mini_batch_size its share
    of a mini-batch: the normalisers, the mini-batch count, the finiteness verdict and the
    statistics are reduced over ranks, so the update equals one process's on the global batch
    (lmmixup/dist/context.py explains each step). group_positions (b,): each local group's
    place in the global batch order (ScoredBatch.positions); group p then trains in global
    mini-batch p // (prompts per mini-batch), as in one process, so DAPO's refilled batches
    split into the same mini-batches for any number of ranks. None: consecutive chunks.
    """
    algo = cfg.algo
    n = rollout.num_sequences
    mask = loss_mask(rollout, algo)  # (N, T)
    rollout_logp = rollout.rollout_logp  # (N, T) or None
    correct = resolve_rollout_is(algo.rollout_is, cfg.precision_gap, rollout_logp is not None)
    require(rollout_logp is not None or correct == "none", "algo.rollout_is",
            "needs an engine that records sampling log-probs (rollout.engine=static)")
    device_type = rollout.prompt_ids.device.type
    params = [p for p in model.parameters() if p.requires_grad]
    stats = UpdateStats()
    total = _Sums()
    grad_total = lr_total = 0.0
    slots = 0
    seen_old = torch.zeros_like(mask) if old_logp is None else old_logp  # (N, T), trainer's
    # As many updates as one process would make on the global batch. DAPO's filtering can leave
    # ranks uneven: with group_positions (train.py) each group goes to the global mini-batch one
    # process would put it in; without, a rank packs its rows into that many mini-batches
    # (`chunk`). Either way a rank runs a zero-loss backward for a mini-batch it has no rows in.
    if group_positions is None:
        num_mini = math.ceil(dist.sum_counts([n])[0] / (cfg.mini_batch_size * dist.world_size))
        chunk = max(cfg.mini_batch_size, math.ceil(n / num_mini))
        bounds = [(min(n, k * chunk), min(n, (k + 1) * chunk)) for k in range(num_mini)]
    else:
        require(len(group_positions) * algo.group_size == n, "group_positions",
                "must hold one position per group of the rollout")
        per_mini = cfg.mini_batch_size * dist.world_size // algo.group_size  # global prompts
        local = mini_batch_bounds(group_positions, algo.group_size, per_mini)
        num_mini = dist.max_int(len(local))
        bounds = local + [(n, n)] * (num_mini - len(local))  # empty here: a zero-loss backward
    for iteration in range(algo.num_iterations):
        for k in range(num_mini):
            mb = range(*bounds[k])
            micro = [slice(s, min(mb.stop, s + cfg.micro_batch_size))
                     for s in range(mb.start, mb.stop, cfg.micro_batch_size)]
            # one int64 all-reduce: the global normalisers, before the first backward
            sequences, tokens, micro_batches = dist.sum_counts(
                [len(mb), int(mask[mb.start:mb.stop].sum()), len(micro)])
            norm = LossNorm(num_sequences=sequences, num_tokens=tokens, max_len=cfg.max_new_tokens,
                            num_micro_batches=micro_batches)
            optimizer.zero_grad(set_to_none=True)
            sums, finite = _Sums(), True
            # DDP: this rank's micro-batches, at least one pass (an empty rank still joins the
            # all-reduce); FSDP2: as many passes as the busiest rank (its forwards all-gather)
            passes = max(dist.micro_slots(len(micro)), 1 if dist.distributed else 0)
            for i in range(passes):
                last = i == passes - 1
                if i >= len(micro) or not finite:  # no rows left, or a skipped non-finite batch
                    if dist.needs_filler(last):
                        with dist.grad_sync(last):
                            dist.zero_backward(model)
                    continue
                sl = micro[i]
                with dist.grad_sync(last):
                    with autocast(cfg.compute_dtype, device_type):  # the forward only
                        logp, entropy = dist.forward(
                            completion_logprobs, model, rollout.prompt_ids[sl],
                            rollout.prompt_mask[sl], rollout.completion_ids[sl], cfg.temperature,
                            cfg.chunk_size, with_entropy=iteration == 0)  # (n, T) fp32 each
                    old = logp.detach() if old_logp is None else old_logp[sl]  # (n, T)
                    if old_logp is None:
                        seen_old[sl] = old
                    weights = None
                    if correct != "none":
                        weights = rollout_is_weights(old, rollout_logp[sl], mask[sl], correct,
                                                     algo.rollout_is_cap).weights  # (n, T)
                    ref = None if ref_logp is None else ref_logp[sl]
                    parts = policy_loss(logp, old, ref, advantages[sl], mask[sl], algo, norm,
                                        is_weights=weights)
                    if not torch.isfinite(parts.loss):
                        finite = False
                        stats.skipped_nonfinite.append("loss")
                        if not dist.distributed:
                            break
                        dist.discard_backward(parts.loss, model, last)  # keeps collectives aligned
                        continue
                    # x world_size cancels DDP's mean: the ranks' gradients add up
                    (parts.loss * dist.grad_scale if dist.distributed else parts.loss).backward()
                sums.add(_Sums(tokens=parts.tokens, kl=parts.kl_sum, ratio=parts.ratio_sum,
                               ratio_max=parts.ratio_max, clip_low=parts.clip_low_sum,
                               clip_high=parts.clip_high_sum, loss=float(parts.loss.detach())))
                if entropy is not None:
                    sums.add(_Sums(entropy=float((entropy * mask[sl]).sum()),
                                   entropy_tokens=float(mask[sl].sum())))
            if dist.distributed and dist.any_true(not finite) and finite:
                finite = False  # another rank's loss was not finite
                stats.skipped_nonfinite.append("loss")
            if finite:
                clip_to = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
                grad_norm = dist.clip_grad_norm(params, clip_to)
                if not math.isfinite(grad_norm):
                    finite = False
                    stats.skipped_nonfinite.append("gradient")
            slots += 1
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                advance_schedule(scheduler, 1)  # the skipped update keeps its place in the schedule
                continue
            lr_total += optimizer.param_groups[0]["lr"]  # the rate this update uses
            optimizer.step()
            scheduler.step()
            stats.updates += 1
            total.add(sums)
            grad_total += grad_norm
    require(slots <= cfg.update_slots, "mini_batch_prompts",
            f"the batch needed {slots} updates, more than its {cfg.update_slots} planned slots")
    advance_schedule(scheduler, cfg.update_slots - slots)  # slots of groups DAPO filtered away
    optimizer.zero_grad(set_to_none=True)
    total = _reduce_sums(total, dist)
    tokens = max(total.tokens, 1.0)
    applied = max(stats.updates, 1)
    stats.loss = total.loss / applied
    stats.grad_norm = grad_total / applied
    stats.lr = lr_total / applied
    stats.kl = total.kl / tokens
    stats.ratio_mean = total.ratio / tokens
    stats.ratio_max = total.ratio_max
    stats.clip_frac_low = total.clip_low / tokens
    stats.clip_frac_high = total.clip_high / tokens
    stats.entropy = total.entropy / max(total.entropy_tokens, 1.0)
    if rollout_logp is not None:
        # the mismatch is measured on the global batch: every rank's rows, gathered
        seen_old, rollout_logp, mask = (gather_padded_rows(x, dist)
                                        for x in (seen_old, rollout_logp, mask))  # (N_all, T_all)
        stats.mismatch = mismatch_stats(seen_old, rollout_logp, mask)
        correction = rollout_is_weights(seen_old, rollout_logp, mask, correct, algo.rollout_is_cap)
        stats.is_frac_tokens_truncated = correction.frac_tokens_truncated
        stats.is_frac_seqs_masked = correction.frac_seqs_masked
    return stats


def _reduce_sums(sums: _Sums, dist: DistContext) -> _Sums:
    """Every rank's token sums added (a (sum, count) reduction, never a mean of means)."""
    if not dist.distributed:
        return sums
    names = _Sums.added()
    added = dist.sum_floats([getattr(sums, f) for f in names])
    out = _Sums(**dict(zip(names, added)))
    out.ratio_max = dist.max_float(sums.ratio_max)
    return out


def reward_metrics(total: torch.Tensor, components: Dict[str, torch.Tensor],
                   prefix: str = "reward") -> Dict[str, float]:
    """Means and (Bessel) stds of the mixed reward and of each component, under `prefix/`."""
    out = {f"{prefix}/total_mean": float(total.mean()), f"{prefix}/total_std": float(total.std())}
    for name, values in components.items():
        out[f"{prefix}/{name}_mean"] = float(values.mean())
        out[f"{prefix}/{name}_std"] = float(values.std())
    return out


def update_metrics(stats: UpdateStats) -> Dict[str, float]:
    """The sampler-vs-trainer mismatch and the rollout correction's cuts, when measured."""
    if stats.mismatch is None:
        return {}
    m = stats.mismatch
    return {"mismatch/abs_logp_diff_mean": m.abs_diff_mean, "mismatch/abs_logp_diff_max": m.abs_diff_max,
            "mismatch/kl_k3": m.kl_k3, "mismatch/chi2_token": m.chi2_token,
            "mismatch/chi2_seq": m.chi2_seq, "mismatch/ess": m.ess,
            "mismatch/is_ratio_min": m.ratio_min, "mismatch/is_ratio_mean": m.ratio_mean,
            "mismatch/is_ratio_max": m.ratio_max,
            "mismatch/frac_tokens_truncated": stats.is_frac_tokens_truncated,
            "mismatch/frac_seqs_masked": stats.is_frac_seqs_masked}


def frac_zero_std_groups(total: torch.Tensor, group_size: int) -> float:
    """(N,) rewards in group order -> the fraction of groups whose rewards are all equal."""
    return float(zero_std_groups(total, group_size).float().mean())
