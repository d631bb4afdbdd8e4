"""The two pure pieces of the vLLM engine: weights in, completions out (tested on fakes).

Weights. vLLM's Llama/Qwen2 `load_weights` takes Hugging Face checkpoint names and fuses
q|k|v and gate|up itself, so the mapping only has to undo what wraps the policy here: DDP and
the trainer's DDP call wrapper (`module.`, `model.` around the whole LM: lmmixup/dist/context.py),
torch.compile (`_orig_mod.`), and it skips `lm_head.weight` when the embeddings are tied (vLLM
ties them itself). A LoRA-wrapped policy is refused: merge the adapter first.

Outputs. One RequestOutput per prompt, with G CompletionOutputs; each carries its token ids
(stop token included) and, with SamplingParams(logprobs=0) and the engine built with
logprobs_mode="processed_logprobs", the log-prob of each sampled token after temperature (and
top-k/top-p when on). The trainer's convention is log_softmax(logits / tau) of the full
distribution (lmmixup/rollout.py), so the engine requires top_k = 0 and top_p = 1, where the
two agree; any remaining gap (bf16 kernels, another attention) is what mismatch/* measures and
algo.rollout_is corrects.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, Tuple

import torch

from lmmixup.errors import LmmixupError
from lmmixup.rollout_batch import Rollout, completion_mask_from_stops, repeat_for_group

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def hf_name(name: str) -> str:
    """A parameter name of the (possibly wrapped) policy -> its Hugging Face checkpoint name."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        # the DDP call wrapper holds the LM as `.model`, and the LM names its decoder `model.`:
        # `model.model.layers...` -> `model.layers...`, `model.lm_head.weight` -> `lm_head.weight`
        if name.startswith("model.model.") or name.startswith("model.lm_head."):
            name, changed = name[len("model."):], True
    return name


def vllm_weight_items(named: Iterable[Tuple[str, torch.Tensor]],
                      tied_embeddings: bool) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy -> (HF name, detached tensor) for vLLM's load_weights."""
    for name, tensor in named:
        if "lora_" in name or ".base_layer." in name:
            raise LmmixupError(f"rollout.engine=vllm: {name}: a LoRA-wrapped policy; merge the "
                               "adapter into the weights first")
        out = hf_name(name)
        if tied_embeddings and out == "lm_head.weight":
            continue
        yield out, tensor.detach()


def rollout_from_vllm(outputs: Sequence, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      group_size: int, stop_ids: Sequence[int], pad_id: int) -> Rollout:
    """vLLM RequestOutputs (one per prompt, in prompt order, G completions each) -> Rollout.

    prompt_ids, prompt_mask: (B, P) the left-padded prompts vLLM was given (without padding).
    Row n = b*G + g is completion g of prompt b (group order). rollout_logp (N, T) holds the
    sampled tokens' processed log-probs, 0 after the stop token."""
    if len(outputs) != prompt_ids.shape[0]:
        raise LmmixupError(f"rollout.engine=vllm: {len(outputs)} outputs for "
                           f"{prompt_ids.shape[0]} prompts")
    rows, logps = [], []
    for b, request in enumerate(outputs):
        if len(request.outputs) != group_size:
            raise LmmixupError(f"rollout.engine=vllm: prompt {b} has {len(request.outputs)} "
                               f"completions, expected {group_size}")
        for completion in request.outputs:
            ids = list(completion.token_ids)
            if completion.logprobs is None or len(completion.logprobs) != len(ids):
                raise LmmixupError("rollout.engine=vllm: the engine returned no per-token "
                                   "log-probs (SamplingParams(logprobs=0) is needed)")
            # each position: {token id: Logprob}; the sampled token is always among them
            logps.append([float(pos[tok].logprob) for tok, pos in zip(ids, completion.logprobs)])
            rows.append(ids)
    width = max(1, max(len(r) for r in rows))
    n = len(rows)
    completion = torch.full((n, width), pad_id, dtype=torch.long)  # (N, T)
    rollout_logp = torch.zeros(n, width, dtype=torch.float32)  # (N, T)
    for i, (ids, lp) in enumerate(zip(rows, logps)):
        completion[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        rollout_logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    lengths = torch.tensor([len(r) for r in rows])  # (N,) rows are as long as vLLM made them
    mask, truncated = completion_mask_from_stops(completion, stop_ids)  # (N, T), (N,)
    mask = mask * (torch.arange(width)[None, :] < lengths[:, None]).float()  # (N, T) no padding
    completion = completion.masked_fill(mask == 0, pad_id)
    device = prompt_ids.device
    return Rollout(prompt_ids=repeat_for_group(prompt_ids, group_size),
                   prompt_mask=repeat_for_group(prompt_mask, group_size),
                   completion_ids=completion.to(device), completion_mask=mask.to(device),
                   truncated=truncated.to(device), rollout_logp=(rollout_logp * mask).to(device))
