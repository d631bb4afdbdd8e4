"""`Policy`: one object per job that turns prompt rows into sampled completions and their texts.

What a sampling call needs and a job never changes (the model, its tokenizer and stop ids, the
device, the precision the static engine samples in, the rollout config) is held here, so call
sites pass only what differs per call: the rows, G, and the prompt limit. Under FSDP2 the
weights to sample from are an all-gathered replica refreshed every step (lmmixup/dist/): a job
builds its Policy once and takes `policy.using(dist.full_model(model))` where it samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import torch

from lmmixup.data.prompts import PromptRow, encode_prompts
from lmmixup.errors import require
from lmmixup.models import stop_token_ids
from lmmixup.rewards.registry import RewardBatch
from lmmixup.rollout import get_engine
from lmmixup.rollout_batch import Rollout, RolloutConfig


def greedy_config(config: RolloutConfig) -> RolloutConfig:
    """Held-out evaluation's decoding: the argmax (top_k 1) on the same engine and budget; the
    recorded log-probs stay those of log_softmax(logits / 1)."""
    return dataclasses.replace(config, temperature=1.0, top_k=1, top_p=1.0)


class Samples(NamedTuple):
    rollout: Rollout  # N = B*G rows, group order
    texts: RewardBatch  # the same N rows decoded, as every reward reads them


@dataclass(frozen=True)
class Policy:
    """The language model as a policy: prompt rows in, completions (and their texts) out."""

    model: torch.nn.Module  # the weights that sample (switched to eval for decoding)
    tokenizer: Any
    stop_ids: Tuple[int, ...]  # a completion ends after the first of these (models.stop_token_ids)
    device: torch.device
    config: RolloutConfig  # the job's rollout settings; a call may pass others (evaluation, distill)
    dtype: torch.dtype = torch.float32  # the static engine's sampling precision (precision.rollout)

    @classmethod
    def build(cls, model, tokenizer, device, config: RolloutConfig,
              dtype: torch.dtype = torch.float32) -> "Policy":
        return cls(model, tokenizer, tuple(stop_token_ids(tokenizer, model)), torch.device(device),
                   config, dtype)

    def using(self, model) -> "Policy":
        """The same sampler on other weights (FSDP2's refreshed replica; in one process and under
        DDP the model itself, so an equal Policy)."""
        return self if model is self.model else dataclasses.replace(self, model=model)

    def sample(self, rows: Sequence[PromptRow], group_size: int, *, max_prompt_tokens: int,
               source: str = "", uniforms: Optional[torch.Tensor] = None,
               stop_sequences: Sequence[Sequence[int]] = (),
               config: Optional[RolloutConfig] = None) -> Rollout:
        """B rows -> a Rollout of N = B*G completions.
        max_prompt_tokens, source: a longer prompt is an error naming its line of `source`.
        uniforms (N, T): per-group sampling randomness (lmmixup/dist/shard.py), static engine
        only; None samples from the global torch RNG. stop_sequences: token-id sequences that
        end a row (engine.static_generate), static engine only; other engines run to their stop
        ids and the caller cuts the text. config: this call's rollout settings (default: the
        job's). The static engine samples in self.dtype; other engines in the model's."""
        config = config or self.config
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, list(rows), max_prompt_tokens,
                                                 source)  # (B, P)
        extra = {} if uniforms is None else {"uniforms": uniforms}
        if stop_sequences and config.engine == "static":
            extra["stop_sequences"] = stop_sequences
        if self.dtype != torch.float32:
            require(config.engine == "static", "precision.rollout",
                    "only rollout.engine=static samples in another precision")
            extra["dtype"] = self.dtype
        was_training = self.model.training
        self.model.eval()
        try:
            return get_engine(config.engine)(
                self.model, prompt_ids.to(self.device), prompt_mask.to(self.device), config,
                group_size, self.stop_ids, self.tokenizer.pad_token_id, **extra)
        finally:
            self.model.train(was_training)

    def decode(self, rollout: Rollout, rows: Sequence[PromptRow], group_size: int) -> RewardBatch:
        """A rollout -> the texts every reward scores (row n belongs to rows[n // G])."""
        pad = self.tokenizer.pad_token_id
        masked = rollout.completion_ids.masked_fill(rollout.completion_mask == 0, pad)  # (N, T)
        completions = self.tokenizer.batch_decode(masked.tolist(), skip_special_tokens=True)
        prompts = self.tokenizer.batch_decode(rollout.prompt_ids.tolist(), skip_special_tokens=True)
        owners = [rows[n // group_size] for n in range(rollout.num_sequences)]
        return RewardBatch(
            prompts=prompts,
            completions=completions,
            references=[r.reference for r in owners],
            tasks=[r.task for r in owners],
            completion_tokens=[int(x) for x in rollout.completion_lengths.tolist()],
            truncated=[bool(x) for x in rollout.truncated.tolist()],
        )

    def generate(self, rows: Sequence[PromptRow], group_size: int, **sample_args) -> Samples:
        """Encode the rows, sample G completions of each, decode them (sample's arguments)."""
        rollout = self.sample(rows, group_size, **sample_args)
        return Samples(rollout, self.decode(rollout, rows, group_size))

    def greedy(self, rows: Sequence[PromptRow], *, max_prompt_tokens: int,
               source: str = "") -> Samples:
        """One greedy completion per row (greedy_config of the job's rollout settings)."""
        return self.generate(rows, 1, max_prompt_tokens=max_prompt_tokens, source=source,
                             config=greedy_config(self.config))
