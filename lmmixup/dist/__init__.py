"""Data parallelism on torch.distributed, launched by `torchrun` (no process management of ours).

    context.py   DistConfig (the `dist` config group) and DistContext: rank, world size and the
                 few collectives the trainer needs, each a no-op when world_size == 1
    strategy.py  the gradient-sharing wrappers behind `dist.strategy`: DDP and FSDP2
                 (fully_shard, its full-weight replica for rollouts, DCP checkpoints)
    shard.py     which slice of the global prompt batch each rank takes, and the per-group
                 sampling seeds that make completions independent of the number of ranks
    gather.py    a rank's per-row tensors -> the global ones (for metrics and dumps; the
                 ScoredBatch itself: lmmixup/sampling/rounds.py gather_batch)

Exactness is the point (see the module docstring of context.py): N ranks give the weights and
the metrics of one process on the same global batch, up to floating-point reduction order.
"""

from lmmixup.dist.context import LOCAL, DistConfig, DistContext, init_distributed  # noqa: F401
