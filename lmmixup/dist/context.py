"""DistContext: who this process is in a `torchrun` job, and the collectives training needs.

Launch: `torchrun --nproc_per_node=N train.py ...` (several nodes: torchrun's rendezvous,
`--nnodes --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`). torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK; `init_distributed` reads them and joins the process group (gloo on CPU, NCCL on
CUDA). Without torchrun, world_size is 1 and every helper below returns its input untouched, so
the single-process trainer runs exactly the code (and draws exactly the numbers) it always did.

Choices, and why (mean-of-means across ranks is the GRPO bug public trainers fix most often):
  * Loss normalisers are global. Before the first backward of a mini-batch the ranks add their
    (sequences, tokens, micro-batches) in ONE int64 all-reduce (`sum_counts`); every micro-batch
    loss divides by those totals, so the gradients of all ranks add up to the one-process
    gradient of the same global mini-batch, in every aggregation mode (bnpo included: its
    per-micro-batch means are averaged over the global number of micro-batches).
  * DDP averages gradients (divides their sum by world_size); each rank multiplies its loss by
    world_size (`grad_scale`), which cancels the division exactly. Gradients accumulate locally
    (`no_sync`) and are all-reduced once, on the last micro-batch of the mini-batch.
  * The number of synchronised backwards must match on every rank, or the collectives hang: the
    mini-batch count is all-reduced (MAX) and a rank with no rows in a mini-batch runs one
    zero-loss backward (`zero_backward`) so its DDP all-reduce still happens.
  * DDP (or FSDP2, strategy.py) wraps a tiny module whose forward calls the given function on
    the model (`forward`), so the project's own forward passes (completion_logprobs, sft_loss:
    chunked lm_head, shared prompts) go through the wrapper's hooks unchanged.
  * Metrics are reduced as (sum, count) pairs or computed on the gathered global batch, never as
    a mean of per-rank means. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from lmmixup.dist.strategy import STRATEGIES
from lmmixup.errors import ConfigError, require


@dataclass
class DistConfig:
    strategy: str = "ddp"
    """ddp (replicated weights, all-reduced gradients) | fsdp2 (fully_shard: parameters,
    gradients and optimizer state sharded over the ranks; lmmixup/dist/strategy.py)"""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo on CPU) | gloo | nccl"""
    sampling_rng: str = "auto"
    """global (one stream seeded by (seed, step), N=1 only) | group (one generator per prompt
    group seeded by (seed, step, global group index): the same completions for any number of
    ranks; static engine only) | auto (group wherever the engine supports it, so one config
    gives one run on any number of ranks; global for the hf engine in one process; vLLM's own
    generator for vllm)"""

    def validate(self) -> None:
        require(self.strategy in STRATEGIES, "dist.strategy",
                f"unknown {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        require(self.backend in ("auto", "gloo", "nccl"), "dist.backend",
                f"must be auto, gloo or nccl, got {self.backend!r}")
        require(self.sampling_rng in ("auto", "global", "group"), "dist.sampling_rng",
                f"must be auto, global or group, got {self.sampling_rng!r}")



@dataclass
class DistContext:
    """This process's place in the job. With world_size == 1 every method is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sampling_rng: str = "global"  # resolved: global | group | engine (vLLM's own, per rank)
    strategy: str = "ddp"  # a key of STRATEGIES (lmmixup/dist/strategy.py)
    _wrapped: Optional[Any] = None  # the strategy's wrapper once `wrap` ran (several ranks only)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def fingerprint(self) -> Dict[str, Any]:
        """Added to the resume fingerprint unless one process samples from the global stream
        (what single-process checkpoints recorded before sampling_rng=auto meant group for the
        static engine: they resume with dist.sampling_rng=global)."""
        if not self.distributed and self.sampling_rng == "global":
            return {}
        return {"world_size": self.world_size, "sampling_rng": self.sampling_rng}

    # ------------------------------------------------------------------ reductions
    def sum_counts(self, counts: Sequence[int]) -> List[int]:
        """Integers summed over ranks in ONE int64 all-reduce (exact, unlike float sums)."""
        if not self.distributed:
            return list(counts)
        t = torch.tensor(list(counts), dtype=torch.int64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return [int(x) for x in t.tolist()]

    def max_int(self, value: int) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def any_true(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop request, a non-finite loss)."""
        return bool(self.max_int(int(flag)))

    def sum_floats(self, values: Sequence[float]) -> List[float]:
        """(sum, count)-style statistics: float64 sums over ranks."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def max_float(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def gather_objects(self, obj: Any) -> List[Any]:
        """[rank 0's obj, rank 1's, ...] on every rank (pickled: for small per-step data)."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def cat_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(n_r,) tensors of every rank -> (sum n_r,) in rank order (the global batch order)."""
        if not self.distributed:
            return x
        return torch.cat([p.to(x.device) for p in self.gather_objects(x.cpu())])

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ gradients
    def wrap(self, model: torch.nn.Module) -> None:
        """Arm the strategy's gradient reduction on model's trainable parameters (DDP: all-reduce;
        FSDP2: shard them, reduce-scatter). Both start every rank from rank 0's weights."""
        if self.distributed:
            self._wrapped = STRATEGIES[self.strategy](model, self.local_rank)

    def forward(self, fn: Callable, model: torch.nn.Module, *args, **kwargs):
        """fn(model, *args): through the wrapper under torchrun (its backward then syncs when allowed)."""
        if self._wrapped is None:
            return fn(model, *args, **kwargs)
        return self._wrapped.forward(fn, *args, **kwargs)

    @contextlib.contextmanager
    def grad_sync(self, last: bool) -> Iterator[None]:
        """Forward+backward inside this block reduce gradients over ranks only when `last`."""
        if self._wrapped is None:
            yield
        else:
            with self._wrapped.grad_sync(last):
                yield

    @property
    def grad_scale(self) -> float:
        """Loss multiplier that cancels the wrapper's division of the summed gradient by
        world_size (DDP's mean; FSDP2's default mean too, see strategy.py)."""
        return float(self.world_size)

    def micro_slots(self, local: int) -> int:
        """How many forward+backward passes this rank runs for `local` micro-batches: its own
        count under DDP (forwards are local), the maximum over ranks under FSDP2 (every forward
        all-gathers, so the ranks must run equally many)."""
        if self._wrapped is None or not self._wrapped.lockstep:
            return local
        return self.max_int(local)

    def needs_filler(self, last: bool) -> bool:
        """Whether a micro-batch slot with nothing to back-propagate (no rows left, or a skipped
        non-finite loss) still needs `zero_backward`: on the last slot for DDP (its one
        all-reduce), on every slot for FSDP2 (its all-gathers)."""
        return self._wrapped is not None and (last or self._wrapped.lockstep)

    def discard_backward(self, loss: torch.Tensor, model: torch.nn.Module, last: bool) -> None:
        """The backward of a micro-batch whose loss is not finite (its mini-batch is skipped on
        every rank, gradients dropped). DDP: a zero-loss pass on the last slot only (its one
        all-reduce). FSDP2: back-propagate the loss itself, since this forward's all-gathers must
        be followed by its own backward on every rank."""
        if self._wrapped is not None and self._wrapped.lockstep:
            loss.backward()
        elif last:
            self.zero_backward(model)

    def zero_backward(self, model: torch.nn.Module) -> None:
        """A zero-loss forward+backward through the wrapper, for a rank with nothing to train on
        in a micro-batch slot: every trainable parameter gets a zero gradient contribution and
        the collectives run, so the other ranks' are matched. Call it inside grad_sync."""
        if self._wrapped is not None:
            self._wrapped.zero_backward()

    def full_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The policy with full, current weights, for sampling, frozen log-probs, evaluation and
        saving: the model itself, except under FSDP2 (an all-gathered replica; strategy.py)."""
        return model if self._wrapped is None else self._wrapped.full_model()

    def clip_grad_norm(self, params: List[torch.nn.Parameter], max_norm: float) -> float:
        """torch's clip_grad_norm_; with sharded (DTensor) gradients the norm is a DTensor
        that is reduced over ranks before it is read."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    @property
    def sharded(self):
        """The FSDP2 wrapper when checkpoints are sharded (every rank writes), else None."""
        w = self._wrapped
        return w if w is not None and w.sharded_checkpoint else None


LOCAL = DistContext()
"""The single-process context (what every function uses when not told otherwise)."""


def resolve_sampling_rng(cfg: DistConfig, world_size: int, engine: str) -> str:
    choice = cfg.sampling_rng
    if choice == "auto" and engine == "vllm":
        return "engine"  # vLLM's own generator, seeded per rank (lmmixup/vllm_rollout/engine.py)
    if choice == "auto":
        # group whenever the engine takes per-group uniforms (static): a laptop run and a cluster
        # run of one config then sample the same completions. The hf engine draws from one
        # global stream: fine in one process, refused below under torchrun.
        choice = "group" if engine == "static" or world_size > 1 else "global"
    if choice == "global" and world_size > 1:
        raise ConfigError("dist.sampling_rng: global draws the same random numbers on every "
                          "rank (correlated completions); use group or auto under torchrun")
    if choice == "group" and engine != "static":
        raise ConfigError(f"dist.sampling_rng: group needs rollout.engine=static (the {engine} "
                          "engine draws from one global stream)")
    return choice


def init_distributed(cfg: DistConfig, device: torch.device, engine: str) -> DistContext:
    """Join the torchrun job described by the environment, or return a 1-rank context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    sampling = resolve_sampling_rng(cfg, world_size, engine)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    ctx = join_torchrun(backend, cuda=device.type == "cuda")
    ctx.sampling_rng = sampling
    ctx.strategy = cfg.strategy
    return ctx


def join_torchrun(backend: str = "gloo", cuda: bool = False) -> DistContext:
    """The process group that torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR) describes, joined; without torchrun, the 1-rank context. distill.py uses gloo:
    its collectives are barriers and small Python objects, whatever device computes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def close_distributed() -> None:
    """Leave the process group, if this process joined one (torchrun waits for every rank)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
