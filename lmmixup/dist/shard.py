"""Deterministic sharding of the global prompt batch, and sampling randomness per prompt group.

Sharding. Every rank runs the same PromptSampler (same seed, same state), so every rank knows the
global batch of B prompts. The batch is cut into optimizer mini-batches of M prompts
(M = mini_batch_prompts, or B), and rank r takes the r-th contiguous 1/W of each mini-batch:

    B = 8, M = 4, W = 2:   prompts 0 1 2 3 | 4 5 6 7   ->   rank 0: 0 1 4 5   rank 1: 2 3 6 7

so a rank's k-th local mini-batch is its share of the global k-th mini-batch, and the gradient
of global mini-batch k is the sum over ranks of their k-th local gradients. A group (G
completions of one prompt) never spans ranks: group advantages stay local.

Sampling. With `dist.sampling_rng=group`, the G completions of the prompt at global position i
of step s draw their uniforms (one per token, lmmixup/engine.py `_draw`) from a generator seeded
by (seed, s, i), mixed through numpy's SeedSequence. What a group samples then depends on its
prompt and the weights only, not on which rank sampled it, nor on how many ranks there are: a
1-process debug run reproduces an N-rank run (up to floating-point reduction order).
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np
import torch


def shard_positions(count: int, block: int, world_size: int, rank: int) -> List[int]:
    """Positions (into a global list of `count` items) that `rank` owns: its contiguous share
    floor(r*L/W) .. floor((r+1)*L/W) of every block of `block` items (L = the block's length)."""
    out: List[int] = []
    for start in range(0, count, block):
        length = min(block, count - start)
        out += range(start + rank * length // world_size, start + (rank + 1) * length // world_size)
    return out


def group_seed(seed: int, step: int, group_index: int) -> int:
    """A 63-bit seed for (seed, step, global group index); SeedSequence mixes the three, so
    nearby tuples give unrelated streams."""
    state = np.random.SeedSequence([seed, step, group_index]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def group_uniforms(seeds: Sequence[int], group_size: int, max_new_tokens: int) -> torch.Tensor:
    """(B,) group seeds -> (N, T) uniforms in [0, 1), rows in group order (N = B*G). Drawn on
    the CPU, so the numbers are the same whatever device then samples with them."""
    rows = [torch.rand(group_size, max_new_tokens, generator=torch.Generator().manual_seed(s))
            for s in seeds]  # (G, T) each
    return torch.cat(rows) if rows else torch.zeros(0, max_new_tokens)  # (N, T)


class StepPrompts:
    """The prompt stream of one step, as this rank sees it.

    `next_rows(k)` draws the next k global prompts from the shared sampler and returns this
    rank's share (mini-batch blocks of `block` prompts for the first draw; DAPO's refill draws
    are split contiguously). `seeds` holds the group seeds of the rows last returned, `indices`
    their positions in the step's global prompt stream."""

    def __init__(self, next_batch: Callable[[int], list], seed: int, step: int, block: int,
                 world_size: int, rank: int):
        self._next_batch, self.seed, self.step = next_batch, seed, step
        self.block, self.world_size, self.rank = block, world_size, rank
        self.drawn = 0  # global prompts drawn so far this step
        self.seeds: List[int] = []
        self.indices: List[int] = []

    def next_rows(self, k: int) -> list:
        rows = self._next_batch(k)  # (k,) the same on every rank
        block = self.block if self.drawn == 0 else k
        mine = shard_positions(k, block, self.world_size, self.rank)
        self.indices = [self.drawn + i for i in mine]
        self.seeds = [group_seed(self.seed, self.step, i) for i in self.indices]
        self.drawn += k
        return [rows[i] for i in mine]
