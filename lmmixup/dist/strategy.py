"""How the policy's gradients are shared across ranks: `dist.strategy=ddp|fsdp2`.

STRATEGIES maps the config value to a wrapper; DistContext (context.py) holds the one in use and
the trainer only ever calls its five verbs: forward, grad_sync, zero_backward, full_model, and
(for checkpoints) sharded_state. One process wraps nothing.

ddp    DistributedDataParallel: replicated weights and optimizer, one gradient all-reduce per
       mini-batch (no_sync before the last micro-batch). Forwards are local, so ranks may run
       different numbers of micro-batches.
fsdp2  torch.distributed.fsdp.fully_shard, one FSDP unit per decoder layer plus the root (the
       call wrapper, which holds the embeddings, the tied lm_head and the final norm):
       parameters, gradients and optimizer state are sharded (1/N per rank). Choices:
         * Gradient scale. The issue asks for `set_gradient_divide_factor(1.0)`; gloo refuses it
           (`Cannot use ReduceOp.PREMUL_SUM with Gloo`), so FSDP keeps its default mean
           reduction and every rank multiplies its loss by world_size (`grad_scale`), exactly
           the DDP path: the reduce-scattered gradient is then the global sum. Measured by the
           previous helper at 2.4e-7 against one process, and by tests/test_dist_fsdp2.py.
         * Accumulation: set_requires_gradient_sync(False) until the last micro-batch of a
           mini-batch (no reduce-scatter), True on it.
         * Lockstep. Every FSDP forward all-gathers each unit's parameters (a collective), so
           unlike DDP every rank must run the same number of forward+backward passes per
           mini-batch: `lockstep` tells grpo_update/sft_backward to pad a rank's micro-batches
           with zero-loss passes up to the maximum over ranks.
         * Module forwards. FSDP's hooks sit on each unit's forward(); lmmixup's shared-prompt
           decoder (logprobs._shared_prompt_hidden) reaches into the layers without calling
           them, so under fsdp2 completion_logprobs takes HF's decoder forward instead (same
           math, ~30% more decoder rows at G = 4; see logprobs.shares_prompts).
         * Full weights for rollouts. The static engine packs full weight matrices and decodes
           token by token; running it on sharded weights would all-gather every layer for every
           token. `full_model()` instead all-gathers the weights ONCE per call into an
           unsharded, gradient-free replica kept on each rank, used for sampling, the
           old-policy log-probs, evaluation and the final save. Cost: one all-gather of the
           model per step (the size of one DDP gradient all-reduce) and one full copy of the
           weights per rank (no gradients, no optimizer state: the 2 Adam moments and the
           gradient stay sharded). A colocated vLLM engine would hold the same copy.
         * The reference model (beta > 0) stays an unsharded frozen copy on every rank
           (train.py: frozen_copy before wrapping). Sharding it too is left undone.
         * Checkpoints: model and optimizer through torch.distributed.checkpoint (every rank
           writes its shards into one folder, `dcp/`), the rest (scheduler, RNG states, data
           position) as in one process; resume loads the shards back on every rank.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Callable, Dict, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from lmmixup.errors import require
from lmmixup.lora import is_lora


class _Call(torch.nn.Module):
    """model + a function of it, as one module: WRAP(_Call(model))(fn, *args) = fn(model, *args)
    with the wrapper's hooks armed (the project's own forward passes run unchanged inside)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """0 * (sum of every trainable parameter): touches each one, so DDP sees them all ready."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def _zero_forward_loss(model: torch.nn.Module) -> torch.Tensor:
    """0 * a one-token forward through every layer: under FSDP2 the parameters are sharded
    outside their unit's forward, so the zero loss must come from a real forward (whose
    all-gathers and, in backward, reduce-scatters match the other ranks')."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
                   use_cache=False).logits  # (1, 1, V)
    return logits.sum() * 0.0


class DDPWrap:
    lockstep = False  # forwards are local: ranks may run different numbers of micro-batches
    sharded_checkpoint = False  # rank 0's replica is everyone's: one ordinary checkpoint

    def __init__(self, model: torch.nn.Module, local_rank: int):
        self.model = model
        device_ids = [local_rank] if next(model.parameters()).device.type == "cuda" else None
        # forward_sync_buffers=False: ranks run different numbers of forwards under no_sync, and
        # a per-forward buffer broadcast would misalign them (the only buffers, rotary tables,
        # are equal on every rank anyway). Also broadcasts rank 0's weights at construction.
        self.ddp = DistributedDataParallel(_Call(model), device_ids=device_ids,
                                           forward_sync_buffers=False)

    def forward(self, fn: Callable, *args, **kwargs):
        return self.ddp(fn, *args, **kwargs)

    @contextlib.contextmanager
    def grad_sync(self, last: bool) -> Iterator[None]:
        if last:
            yield
        else:
            with self.ddp.no_sync():
                yield

    def zero_backward(self) -> None:
        self.ddp(_zero_loss).backward()

    def full_model(self) -> torch.nn.Module:
        return self.model


class FSDP2Wrap:
    lockstep = True  # every forward all-gathers: equal pass counts on every rank
    sharded_checkpoint = True

    def __init__(self, model: torch.nn.Module, local_rank: int):
        # lazy: torch.distributed.fsdp (~0.7 s) loads only for dist.strategy=fsdp2
        from torch.distributed.fsdp import fully_shard

        require(not is_lora(model), "dist.strategy", "fsdp2 with LoRA (model.lora) is not "
                "supported; LoRA's trainable weights are small, use dist.strategy=ddp")
        self.model = model
        # an unsharded, gradient-free copy for rollouts; full_model() refreshes its weights
        self.replica = copy.deepcopy(model).requires_grad_(False)
        # rank 0's initial weights for all (DDP's construction broadcast does the same)
        for p in model.parameters():
            torch.distributed.broadcast(p.data, src=0)
        for layer in model.get_decoder().layers:
            fully_shard(layer)
        self.root = fully_shard(_Call(model))

    def forward(self, fn: Callable, *args, **kwargs):
        return self.root(fn, *args, **kwargs)

    @contextlib.contextmanager
    def grad_sync(self, last: bool) -> Iterator[None]:
        self.root.set_requires_gradient_sync(last)  # recurses into every layer's unit
        try:
            yield
        finally:
            self.root.set_requires_gradient_sync(True)

    def zero_backward(self) -> None:
        self.root(_zero_forward_loss).backward()

    @torch.no_grad()
    def full_model(self) -> torch.nn.Module:
        """The replica with the current weights: one all-gather per parameter (full_tensor),
        in named_parameters order, the same on every rank."""
        mine = dict(self.replica.named_parameters())
        for name, p in self.model.named_parameters():
            mine[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
        return self.replica

    # ------------------------------------------------------------------ checkpoints
    def save_sharded(self, folder: Path, optimizer) -> None:
        """Every rank writes its shards of the model and the optimizer into folder (DCP)."""
        # lazy: as __init__'s fully_shard, only fsdp2 checkpoints load torch.distributed.checkpoint
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.root, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))

    def load_sharded(self, folder: Path, optimizer) -> None:
        # lazy: as save_sharded's
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.root, optimizer)  # the layout to fill
        state: Dict[str, Dict] = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.root, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])


STRATEGIES = {"ddp": DDPWrap, "fsdp2": FSDP2Wrap}
