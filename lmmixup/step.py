"""The pieces of one GRPO step, each a plain function: sample -> score -> advantages -> update.

train.py calls them in that order; the benchmark calls the same functions, so what it times is
what training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from lmmixup.data.prompts import PromptRow, encode_prompts
from lmmixup.grpo import AlgoConfig, LossNorm, policy_loss
from lmmixup.logprobs import completion_logprobs
from lmmixup.rewards.registry import RewardBatch
from lmmixup.rollout import Rollout, RolloutConfig, get_engine


def sample(model, tokenizer, rows: List[PromptRow], rollout_cfg: RolloutConfig, group_size: int,
           stop_ids: Sequence[int], max_prompt_tokens: int, source: str, device) -> Rollout:
    """B rows -> a Rollout of N = B*G completions (model switched to eval for decoding)."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, rows, max_prompt_tokens, source)  # (B, P)
    was_training = model.training
    model.eval()
    try:
        engine = get_engine(rollout_cfg.engine)
        return engine(model, prompt_ids.to(device), prompt_mask.to(device), rollout_cfg,
                      group_size, stop_ids, tokenizer.pad_token_id)
    finally:
        model.train(was_training)


def reward_batch(tokenizer, rollout: Rollout, rows: List[PromptRow], group_size: int) -> RewardBatch:
    """Decode a rollout into the texts every reward scores (row n belongs to prompt n // G)."""
    masked = rollout.completion_ids.masked_fill(rollout.completion_mask == 0, tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(masked.tolist(), skip_special_tokens=True)
    prompts = tokenizer.batch_decode(rollout.prompt_ids.tolist(), skip_special_tokens=True)
    owners = [rows[n // group_size] for n in range(rollout.num_sequences)]
    return RewardBatch(
        prompts=prompts,
        completions=completions,
        references=[r.reference for r in owners],
        tasks=[r.task for r in owners],
        completion_tokens=[int(x) for x in rollout.completion_lengths.tolist()],
        truncated=[bool(x) for x in rollout.truncated.tolist()],
    )


def loss_mask(rollout: Rollout, algo: AlgoConfig) -> torch.Tensor:
    """(N, T) tokens that enter the loss; truncated rows are dropped if algo.mask_truncated."""
    mask = rollout.completion_mask
    if algo.mask_truncated:
        mask = mask * (~rollout.truncated).float()[:, None]
    return mask


@torch.no_grad()
def frozen_logprobs(model, rollout: Rollout, temperature: float, micro_batch_size: int,
                    chunk_size: int) -> torch.Tensor:
    """log-probs (N, T) of the rollout's completions under a model, without gradients."""
    out = []
    for s in range(0, rollout.num_sequences, micro_batch_size):
        sl = slice(s, s + micro_batch_size)
        lp, _ = completion_logprobs(model, rollout.prompt_ids[sl], rollout.prompt_mask[sl],
                                    rollout.completion_ids[sl], temperature, chunk_size)
        out.append(lp)
    return torch.cat(out)  # (N, T)


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    ratio_mean: float = 0.0
    ratio_max: float = 0.0
    clip_frac_low: float = 0.0
    clip_frac_high: float = 0.0
    grad_norm: float = 0.0
    updates: int = 0
    skipped_nonfinite: List[str] = field(default_factory=list)


def grpo_update(model, optimizer, scheduler, rollout: Rollout, advantages: torch.Tensor,
                old_logp: Optional[torch.Tensor], ref_logp: Optional[torch.Tensor],
                algo: AlgoConfig, max_new_tokens: int, mini_batch_size: int,
                micro_batch_size: int, temperature: float, chunk_size: int,
                max_grad_norm: float) -> UpdateStats:
    """mu passes of optimizer updates over one rollout batch.

    advantages (N,); old_logp, ref_logp (N, T) or None. old_logp None means "the policy that
    sampled is the policy being updated" (mu = 1 and a single mini-batch): the detached current
    log-probs then stand in for it, so the ratio is exactly 1 and the clip is inactive, by design.
    A mini-batch whose loss or gradient is not finite is skipped before the weights change.
    """
    n = rollout.num_sequences
    mask = loss_mask(rollout, algo)  # (N, T)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = UpdateStats()
    tokens_seen = kl_sum = ratio_sum = clip_low = clip_high = ent_sum = ent_tokens = 0.0
    loss_total = grad_total = 0.0
    for iteration in range(algo.num_iterations):
        for mb_start in range(0, n, mini_batch_size):
            mb = range(mb_start, min(n, mb_start + mini_batch_size))
            norm = LossNorm(num_sequences=len(mb), num_tokens=int(mask[mb_start:mb.stop].sum()),
                            max_len=max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            mb_loss, finite = 0.0, True
            for s in range(mb.start, mb.stop, micro_batch_size):
                sl = slice(s, min(mb.stop, s + micro_batch_size))
                logp, entropy = completion_logprobs(
                    model, rollout.prompt_ids[sl], rollout.prompt_mask[sl],
                    rollout.completion_ids[sl], temperature, chunk_size,
                    with_entropy=iteration == 0)  # (n, T)
                old = logp.detach() if old_logp is None else old_logp[sl]
                ref = None if ref_logp is None else ref_logp[sl]
                parts = policy_loss(logp, old, ref, advantages[sl], mask[sl], algo, norm)
                if not torch.isfinite(parts.loss):
                    finite = False
                    stats.skipped_nonfinite.append("loss")
                    break
                parts.loss.backward()
                mb_loss += float(parts.loss.detach())
                tokens_seen += parts.tokens
                kl_sum += parts.kl_sum
                ratio_sum += parts.ratio_sum
                clip_low += parts.clip_low_sum
                clip_high += parts.clip_high_sum
                stats.ratio_max = max(stats.ratio_max, parts.ratio_max)
                if entropy is not None:
                    ent_sum += float((entropy * mask[sl]).sum())
                    ent_tokens += float(mask[sl].sum())
            if finite:
                clip_to = max_grad_norm if max_grad_norm > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_to))
                if not math.isfinite(grad_norm):
                    finite = False
                    stats.skipped_nonfinite.append("gradient")
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            scheduler.step()
            stats.updates += 1
            loss_total += mb_loss
            grad_total += grad_norm
    optimizer.zero_grad(set_to_none=True)
    tokens_seen = max(tokens_seen, 1.0)
    stats.loss = loss_total / max(stats.updates, 1)
    stats.grad_norm = grad_total / max(stats.updates, 1)
    stats.kl = kl_sum / tokens_seen
    stats.ratio_mean = ratio_sum / tokens_seen
    stats.clip_frac_low = clip_low / tokens_seen
    stats.clip_frac_high = clip_high / tokens_seen
    stats.entropy = ent_sum / max(ent_tokens, 1.0)
    return stats


def reward_metrics(total: torch.Tensor, components: Dict[str, torch.Tensor]) -> Dict[str, float]:
    out = {"reward/total_mean": float(total.mean()), "reward/total_std": float(total.std())}
    for name, values in components.items():
        out[f"reward/{name}_mean"] = float(values.mean())
        out[f"reward/{name}_std"] = float(values.std())
    return out


@dataclass
class ScoredBatch:
    """A rollout with its prompts and rewards, after optional zero-signal group filtering."""

    rollout: Rollout
    rows: List[PromptRow]  # B' rows, one per group
    texts: RewardBatch
    total: torch.Tensor  # (N',) mixed reward
    components: Dict[str, torch.Tensor]  # name -> (N',)
    rounds: int  # rollout rounds used (> 1 only with DAPO-style resampling)
    dropped_groups: int  # zero-std groups filtered out


def collect(next_rows, sample_fn, score_fn, batch_prompts: int, algo: AlgoConfig,
            pad_id: int) -> ScoredBatch:
    """Sample and score B prompts. With algo.filter_zero_std_groups, groups whose rewards are
    all equal are dropped and fresh prompts are sampled, up to algo.max_resample_rounds extra
    rounds (DAPO's dynamic sampling); the batch may end up smaller than B, never larger."""
    from lmmixup.grpo import zero_std_groups
    from lmmixup.rollout import concat_rollouts, select_rows

    g = algo.group_size
    kept: List[tuple] = []
    kept_groups, dropped, rounds = 0, 0, 0
    first = None
    while rounds <= (algo.max_resample_rounds if algo.filter_zero_std_groups else 0):
        rows = next_rows(batch_prompts if rounds == 0 else batch_prompts - kept_groups)
        rollout = sample_fn(rows)
        texts, total, components = score_fn(rollout, rows)
        rounds += 1
        if first is None:
            first = (rollout, rows, texts, total, components)
        if not algo.filter_zero_std_groups:
            kept.append(first)
            break
        keep = ~zero_std_groups(total, g)  # (B,)
        dropped += int((~keep).sum())
        if keep.any():
            seq = keep.repeat_interleave(g).nonzero().squeeze(1)  # (N',)
            kept.append((select_rows(rollout, seq), [r for r, k in zip(rows, keep) if k],
                         texts.select(seq.tolist()), total[seq],
                         {k: v[seq] for k, v in components.items()}))
            kept_groups += int(keep.sum())
        if kept_groups >= batch_prompts:
            break
    if not kept:  # every group was flat: train on the first batch (all advantages are 0)
        kept = [first]
    rollout = concat_rollouts([k[0] for k in kept], pad_id) if len(kept) > 1 else kept[0][0]
    texts = kept[0][2]
    for k in kept[1:]:
        texts = RewardBatch(*(a + b for a, b in zip(
            (texts.prompts, texts.completions, texts.references, texts.tasks, texts.completion_tokens),
            (k[2].prompts, k[2].completions, k[2].references, k[2].tasks, k[2].completion_tokens))))
    return ScoredBatch(
        rollout=rollout,
        rows=[r for k in kept for r in k[1]],
        texts=texts,
        total=torch.cat([k[3] for k in kept]),
        components={name: torch.cat([k[4][name] for k in kept]) for name in kept[0][4]},
        rounds=rounds,
        dropped_groups=dropped,
    )
