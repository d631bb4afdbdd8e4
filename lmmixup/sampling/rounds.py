"""GRPO's rollout rounds: sample and score B prompts, refilling the groups DAPO filters away.

`collect` runs the rounds of one step on this rank: it draws prompts from the step's stream,
samples G completions of each with the job's `Policy`, scores their texts with the run's
rewards, and returns the `ScoredBatch` the update trains on. `join_scored` concatenates parts
into one, which is also how `gather_batch` builds the global batch from every rank's (under
torchrun).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch

from lmmixup.data.prompts import PromptRow
from lmmixup.dist.context import LOCAL, DistContext
from lmmixup.dist.shard import StepPrompts, group_uniforms
from lmmixup.grpo import AlgoConfig, zero_std_groups
from lmmixup.rewards.registry import RewardBatch, RewardResult
from lmmixup.rollout_batch import Rollout, concat_rollouts, select_rows
from lmmixup.sampling.policy import Policy

# The run's rewards mixed into one total, built once per job:
# functools.partial(compute_rewards, reward_fns, cfg.reward), called as score(texts, G).
Score = Callable[[RewardBatch, int], RewardResult]


class _Round(NamedTuple):
    """One rollout round, or the part of it that survived filtering."""

    rows: List[PromptRow]  # (b,) one per group
    rollout: Rollout
    texts: RewardBatch
    total: torch.Tensor  # (n,) n = b*G
    components: Dict[str, torch.Tensor]  # name -> (n,)

    def select_groups(self, keep: torch.Tensor, group_size: int) -> "_Round":
        """The groups keep (b,) bool of this round, with all G rows of each."""
        seq = keep.repeat_interleave(group_size).nonzero().squeeze(1)  # (n',)
        return _Round([r for r, k in zip(self.rows, keep.tolist()) if k],
                      select_rows(self.rollout, seq), self.texts.select(seq.tolist()),
                      self.total[seq], {k: v[seq] for k, v in self.components.items()})


@dataclass
class ScoredBatch:
    """What one step trains on, after optional zero-signal group filtering, and what it sampled.

    Without filtering the sampled_* fields hold the same values as total / components.
    """

    rollout: Rollout  # N' = B'*G rows, B' <= B groups
    rows: List[PromptRow]  # (B',) the prompt row of each kept group
    texts: RewardBatch  # the decoded texts of those rows (for rollout dumps)
    total: torch.Tensor  # (N',) mixed reward
    components: Dict[str, torch.Tensor]  # name -> (N',)
    sampled_total: torch.Tensor  # (M,) every completion sampled this step, all rounds, unfiltered
    sampled_components: Dict[str, torch.Tensor]  # name -> (M,)
    rounds: int  # rollout rounds used (> 1 only with DAPO-style resampling)
    dropped_groups: int  # zero-std groups filtered out
    positions: List[int]  # (b,) each group's place in the global kept order (see collect)


def collect(prompts: StepPrompts, policy: Policy, score: Score, *, batch_prompts: int,
            algo: AlgoConfig, max_prompt_tokens: int, source: str = "", pad_id: int,
            dist: DistContext = LOCAL) -> ScoredBatch:
    """Sample and score B = batch_prompts prompts. With algo.filter_zero_std_groups, groups whose
    rewards are all equal are dropped and fresh prompts are sampled, up to
    algo.max_resample_rounds extra rounds (DAPO's dynamic sampling); the batch may end up
    smaller than B, never larger.

    One round: prompts.next_rows(k) draws the next k prompts of the step's stream (this rank's
    share of them under torchrun); policy.sample gives G completions of each (with uniforms
    drawn per group under dist.sampling_rng=group, so a group samples the same on any rank;
    max_prompt_tokens, source: a longer prompt is an error naming its line of `source`);
    policy.decode gives their texts, and score(texts, G) their rewards.

    Under torchrun B counts the groups of every rank: the kept groups' indices are gathered after
    each round (the small all-gather DAPO's refill needs), so every rank runs the same rounds. A
    rank whose groups were all filtered away gets an empty batch; its training share is then a
    zero-loss backward (grpo_update).

    `positions` numbers the kept groups of every rank in the order one process keeps them
    (round by round, each round in global prompt order): prompts.indices gives the global stream
    position of the rows next_rows last returned. grpo_update puts group p in global mini-batch
    p // mini_batch_prompts, so the mini-batches, and with them the updates, are the same for
    any number of ranks, also after DAPO's refill. Each round gathers the kept groups' indices
    (a few ints per rank) to number them."""
    g = algo.group_size
    sampled: List[_Round] = []
    kept: List[_Round] = []
    kept_groups, dropped, rounds = 0, 0, 0  # kept_groups: over all ranks
    positions: List[int] = []
    first_indices: List[int] = []
    max_rounds = 1 + (algo.max_resample_rounds if algo.filter_zero_std_groups else 0)
    while rounds < max_rounds and kept_groups < batch_prompts:
        rows = prompts.next_rows(batch_prompts - kept_groups)
        indices = prompts.indices  # (b,) the rows' positions in the step's global stream
        if rounds == 0:
            first_indices = indices
        rounds += 1
        kept_here: List[int] = []  # global stream indices of this rank's kept groups
        if rows:
            uniforms = None  # sampling_rng=global: the global torch RNG, seeded by (seed, step)
            if dist.sampling_rng == "group":
                uniforms = group_uniforms(prompts.seeds, g, policy.config.max_new_tokens)  # (n, T)
            rollout = policy.sample(rows, g, max_prompt_tokens=max_prompt_tokens, source=source,
                                    uniforms=uniforms)  # n = b*G rows
            texts = policy.decode(rollout, rows, g)
            rewards = score(texts, g)
            round_ = _Round(rows, rollout, texts, rewards.total, rewards.components)
            sampled.append(round_)
            if not algo.filter_zero_std_groups:
                kept.append(round_)
                positions = indices  # one round, nothing dropped: the global batch order
                break
            keep = ~zero_std_groups(round_.total, g)  # (b,)
            dropped += int((~keep).sum())
            if keep.any():
                kept.append(round_.select_groups(keep, g))  # n' = b' * G rows
                kept_here = [indices[j] for j in keep.nonzero().flatten().tolist()]
        everyone = sorted(i for part in dist.gather_objects(kept_here) for i in part)  # this round
        place = {index: kept_groups + k for k, index in enumerate(everyone)}
        positions += [place[i] for i in kept_here]
        kept_groups += len(everyone)
    if not kept:
        # every group of every rank was flat: train on the first round (all advantages are 0);
        # only this rank's were: it trains on nothing
        none = torch.zeros(len(sampled[0].rows), dtype=torch.bool)  # (b,)
        kept = [sampled[0] if kept_groups == 0 else sampled[0].select_groups(none, g)]
        positions = first_indices if kept_groups == 0 else []
    return join_scored(kept, [(r.total, r.components) for r in sampled], pad_id, rounds=rounds,
                       dropped_groups=dropped, positions=positions)


def join_scored(kept: Sequence, sampled: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
                pad_id: int, *, rounds: int, dropped_groups: int,
                positions: List[int]) -> ScoredBatch:
    """Concatenate parts into one ScoredBatch, in order: `kept` have rollout, rows, texts, total
    and components (collect's rounds, or every rank's batch in gather_batch); `sampled` are
    the (total (m,), components) of every part before filtering."""
    names = list(sampled[0][1])
    return ScoredBatch(
        rollout=concat_rollouts([k.rollout for k in kept], pad_id) if len(kept) > 1 else kept[0].rollout,
        rows=[r for k in kept for r in k.rows],
        texts=RewardBatch.concat([k.texts for k in kept]),
        total=torch.cat([k.total for k in kept]),  # (N',)
        components={name: torch.cat([k.components[name] for k in kept]) for name in names},
        sampled_total=torch.cat([total for total, _ in sampled]),  # (M,)
        sampled_components={name: torch.cat([c[name] for _, c in sampled]) for name in names},
        rounds=rounds,
        dropped_groups=dropped_groups,
        positions=positions,
    )


def gather_batch(batch: ScoredBatch, dist: DistContext, pad_id: int) -> ScoredBatch:
    """A rank's ScoredBatch -> the global one, every rank's groups in rank order (every rank
    gets it): the metrics, the attribution and the dumps are then computed as in one process."""
    if not dist.distributed:
        return batch
    parts = dist.gather_objects(batch)
    return join_scored(parts, [(p.sampled_total, p.sampled_components) for p in parts], pad_id,
                       rounds=parts[0].rounds,  # every rank runs the same rounds
                       dropped_groups=sum(p.dropped_groups for p in parts),
                       positions=[x for p in parts for x in p.positions])
