"""Rollouts: sample G completions for each of B prompts, as one batch.

Engines share one interface, `engine(model, prompt_ids, prompt_mask, cfg, stop_ids, pad_id)
-> Rollout`, and are picked by `rollout.engine`:
    hf      Hugging Face `generate` (the reference implementation).
    static  our preallocated-KV-cache decode loop (lmmixup/engine.py), the default.

Conventions every engine follows (the loss relies on them):
  * Prompts are LEFT-padded; row n of the output belongs to prompt n // G, so each group is G
    consecutive rows.
  * The completion mask includes the first stop token (EOS), so the model is trained to stop,
    and excludes everything after it. A row with no stop token is `truncated`.
  * The sampler's log-probs (`Rollout.rollout_logp`, static engine only) are of the
    temperature-scaled *full* distribution (log_softmax(logits / tau)), before top-k/top-p
    filtering: the quantity training computes. In fp32 they match the trainer's up to kernel
    rounding; with precision.rollout=bf16 (or a bf16 trainer) they differ, and the trainer
    computes its own old log-probs, measures the gap (`mismatch/*` metrics) and corrects it
    (`algo.rollout_is`, token_tis under auto; lmmixup/precision.py).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch

from lmmixup.engine import static_generate
from lmmixup.rollout_batch import (  # noqa: F401  (re-exported: the rollout types live there)
    ENGINE_NAMES, Rollout, RolloutConfig, completion_mask_from_stops, concat_rollouts,
    repeat_for_group, select_rows)
# EXPERIMENTAL, not run here; vLLM itself stays optional: the engine imports it on first use
from lmmixup.vllm_rollout.engine import vllm_generate


@torch.no_grad()
def hf_generate(model, prompt_ids, prompt_mask, cfg: RolloutConfig, group_size: int,
                stop_ids: Sequence[int], pad_id: int) -> Rollout:
    """Reference engine: transformers `generate` over the B*G repeated prompts.

    prompt_ids, prompt_mask: (B, P). Sampling uses the global torch RNG (seeded by the caller).
    """
    ids = repeat_for_group(prompt_ids, group_size)  # (N, P)
    mask = repeat_for_group(prompt_mask, group_size)  # (N, P)
    # lazy: transformers (1-4 s) loads with the first model, not when the config is checked
    from transformers import GenerationConfig

    # An explicit config, and none of the model's: a checkpoint's generation_config.json
    # (repetition_penalty, suppress_tokens, ...) would otherwise add warpers that the training
    # log-probs do not include, and the sampled distribution would not be pi. transformers 4.x
    # fills our config's unset fields from the model's unless use_model_defaults=False; 5.x
    # always does and has no such flag. So for both, the model holds a neutral config meanwhile.
    generation = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation)
    finally:
        model.generation_config = own
    # out: (N, P + T') with T' <= max_new_tokens
    completion = out[:, ids.shape[1]:]  # (N, T')
    completion_mask, truncated = completion_mask_from_stops(completion, stop_ids)
    completion = completion.masked_fill(completion_mask == 0, pad_id)
    return Rollout(ids, mask, completion, completion_mask, truncated, rollout_logp=None)


EngineFn = Callable[..., Rollout]
# The one place engines are bound to their names (ENGINE_NAMES, which RolloutConfig checks, in
# the leaf module; tests/test_engine.py holds the two equal); each module defines its engine and
# registers nothing itself.
ENGINES: Dict[str, EngineFn] = {"hf": hf_generate, "static": static_generate, "vllm": vllm_generate}
# engines whose Rollout carries the sampler's log-probs (rollout_logp)
RECORDS_LOGPROBS = ("static", "vllm")


def get_engine(name: str) -> EngineFn:
    return ENGINES[name]
