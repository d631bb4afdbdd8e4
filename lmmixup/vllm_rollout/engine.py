"""EXPERIMENTAL, NOT RUN: `rollout.engine=vllm`, colocated, one vLLM engine per rank.

Each rank builds one vLLM `LLM` on its own GPU next to the policy (gpu_memory_utilization
bounds vLLM's share of the memory), and before every rollout the policy's current weights are
loaded into it (`load_weights`, names mapped by convert.vllm_weight_items): the rollout of step
s always samples from the weights after step s-1's optimizer updates. Sampling randomness is
vLLM's own, seeded per rank (dist.sampling_rng=group needs the static engine), so a vLLM run
is not reproduced by another number of ranks. The internal path to the loaded
model differs between vLLM versions; `_vllm_model` names the one vLLM 0.10 uses, run with
VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine lives in this process.
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

import torch

from lmmixup.errors import LmmixupError
from lmmixup.vllm_rollout.convert import rollout_from_vllm, vllm_weight_items

GPU_MEMORY_UTILIZATION = 0.3
"""vLLM's share of the GPU next to the policy, its optimizer and the reference model"""

_ENGINES: Dict[int, object] = {}  # id(policy) -> its vLLM LLM, one per process


def _llm_for(model):
    try:
        from vllm import LLM  # optional dependency: vllm (pip install 'lmmixup[vllm]')
    except ImportError:
        raise LmmixupError("rollout.engine=vllm: vLLM is not installed "
                           "(pip install 'lmmixup[vllm]', on a CUDA machine)") from None
    if id(model) not in _ENGINES:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        path = getattr(model.config, "_name_or_path", "")
        if not path or not os.path.isdir(path):
            raise LmmixupError("rollout.engine=vllm needs a policy loaded from a local folder "
                               "(vLLM reads its config and tokenizer there)")
        _ENGINES[id(model)] = LLM(model=path, dtype=str(next(model.parameters()).dtype).split(".")[-1],
                                  gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                                  logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                                  seed=_rank_seed())
    return _ENGINES[id(model)]


def _rank_seed() -> int:
    """The trainer seeded torch with (seed, 0) on every rank; each rank's vLLM generator gets
    its own stream from it, so the ranks' completions are not copies of each other."""
    return (torch.initial_seed() + 7919 * int(os.environ.get("RANK", "0"))) % 2**31


def _vllm_model(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner.model


@torch.no_grad()
def vllm_generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg,
                  group_size: int, stop_ids: Sequence[int], pad_id: int):
    """Same contract as the other engines (lmmixup/rollout.py)."""
    if cfg.top_k != 0 or cfg.top_p != 1.0:
        raise LmmixupError("rollout.engine=vllm: top_k/top_p filtering would make vLLM's "
                           "processed log-probs differ from the trainer's; use top_k=0 top_p=1")
    llm = _llm_for(model)  # names the missing package when vLLM is not installed
    from vllm import SamplingParams  # optional dependency: vllm, as _llm_for's

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    _vllm_model(llm).load_weights(vllm_weight_items(model.named_parameters(), tied))
    params = SamplingParams(n=group_size, temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                            stop_token_ids=list(stop_ids), logprobs=0, detokenize=False)
    prompts = [{"prompt_token_ids": ids[mask.bool()].tolist()}
               for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return rollout_from_vllm(outputs, prompt_ids, prompt_mask, group_size, stop_ids, pad_id)
