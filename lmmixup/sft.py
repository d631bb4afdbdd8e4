"""Supervised cold start (SFT) building blocks: encode, collate, loss, gradient accumulation.

Choices, and why:
  * Prompt and target are tokenised separately and concatenated: the prompt is exactly what
    generation sees (chat template with the assistant turn opened), so the training targets
    start where sampling starts, with no BPE merge across the boundary.
  * The target ends with the tokenizer's EOS (for SmolLM2, <|im_end|>), and the EOS is a
    labelled token: the model learns to stop (a known pitfall is dropping it from the mask).
  * Labels are -100 on prompt tokens and on padding: the loss is on answer tokens only.
  * The loss is a token SUM divided by the number of target tokens of the whole optimizer
    batch, passed in by the caller. Micro-batch gradients then add up to exactly the full-batch
    mean-token gradient, however the batch is split (a per-micro-batch mean would weight the
    tokens of short micro-batches more).
  * The lm_head and cross-entropy run only on target positions, in checkpointed chunks, so
    the (N, L, V) logits never exist (SmolLM2: V = 49,152).
The learning-rate schedule (linear warm-up over optim.warmup_frac, then constant or cosine) is
lmmixup.optim.build_scheduler; the paper's SFT uses lr 2e-5, warm-up 5%, weight decay 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmmixup.data.prompts import PromptRow
from lmmixup.dist.context import LOCAL, DistContext
from lmmixup.errors import LmmixupError
from lmmixup.precision import autocast

IGNORE_INDEX = -100
Messages = List[Dict[str, str]]


@dataclass
class SFTExample:
    """One tokenised (prompt, target) pair."""

    input_ids: List[int]  # (L,) prompt tokens, then target tokens, then EOS
    labels: List[int]  # (L,) IGNORE_INDEX on the prompt, else equal to input_ids

    @property
    def num_target_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class SFTBatch:
    """Right-padded micro-batch of N examples, L = longest example."""

    input_ids: torch.Tensor  # (N, L) long, pad_id after each example
    attention_mask: torch.Tensor  # (N, L) long, 1 on real tokens
    labels: torch.Tensor  # (N, L) long, IGNORE_INDEX on prompt and padding

    @property
    def num_target_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device) -> "SFTBatch":
        return SFTBatch(self.input_ids.to(device), self.attention_mask.to(device),
                        self.labels.to(device))


def encode_example(tokenizer, messages: Messages, target: str) -> SFTExample:
    """Chat-templated prompt (assistant turn opened) + target + EOS; labels only on the target
    and the EOS."""
    if tokenizer.eos_token_id is None:
        raise LmmixupError("the tokenizer has no EOS token: SFT could not teach the model to stop")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return SFTExample(input_ids=prompt_ids + target_ids,
                      labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids)


def encode_rows(tokenizer, rows: Sequence[Union[PromptRow, Dict]], max_seq_len: int,
                source: str = "") -> Tuple[List[SFTExample], int]:
    """Encode training rows (PromptRow from lmmixup.data.prompts.load_rows, or dicts with
    'prompt' and 'target'). Returns (examples, number skipped for exceeding max_seq_len).
    A row without a target is an error naming its line."""
    examples, skipped = [], 0
    for i, row in enumerate(rows):
        if isinstance(row, PromptRow):
            messages, target, line = row.messages(), row.target, row.line or i + 1
        else:
            prompt = row.get("prompt")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            target, line = row.get("target"), i + 1
        if not target:
            raise LmmixupError(f"{source}:{line}: SFT needs a non-empty 'target' field")
        ex = encode_example(tokenizer, messages, target)
        if len(ex.input_ids) > max_seq_len:
            skipped += 1
            continue
        examples.append(ex)
    return examples, skipped


def collate(examples: Sequence[SFTExample], pad_id: int) -> SFTBatch:
    """Right-pad to the longest example; padding gets pad_id, mask 0 and label IGNORE_INDEX."""
    width = max(len(ex.input_ids) for ex in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)  # (N, L)
    attention_mask = torch.zeros((n, width), dtype=torch.long)  # (N, L)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)  # (N, L)
    for i, ex in enumerate(examples):
        length = len(ex.input_ids)
        input_ids[i, :length] = torch.tensor(ex.input_ids)
        attention_mask[i, :length] = 1
        labels[i, :length] = torch.tensor(ex.labels)
    return SFTBatch(input_ids, attention_mask, labels)


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  targets: torch.Tensor) -> torch.Tensor:
    """hidden (M, H), targets (M,) -> summed cross-entropy, through one (M, V) logit chunk."""
    logits = F.linear(hidden, weight, bias).float()  # (M, V)
    return F.cross_entropy(logits, targets, reduction="sum")  # ()


def sft_loss(model, batch: SFTBatch, num_target_tokens: Optional[int] = None,
             chunk_size: int = 1024) -> Tuple[torch.Tensor, int]:
    """(sum of target-token cross-entropies / num_target_tokens, target tokens in this batch).

    num_target_tokens is the target-token count of the whole optimizer batch (all micro-batches
    together); None uses this batch's own count, i.e. the plain mean over its target tokens.
    """
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False).last_hidden_state  # (N, L, H)
    # The hidden state at position t predicts token t+1.
    labels = batch.labels[:, 1:]  # (N, L-1)
    keep = labels != IGNORE_INDEX  # (N, L-1)
    h = hidden[:, :-1, :][keep]  # (M, H) target positions only
    y = labels[keep]  # (M,)
    n_tokens = int(y.numel())
    head = model.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)  # ()
    for start in range(0, n_tokens, chunk_size):
        hc, yc = h[start:start + chunk_size], y[start:start + chunk_size]
        if torch.is_grad_enabled() and hc.requires_grad:
            total = total + checkpoint(_chunk_ce_sum, hc, head.weight, head.bias, yc,
                                       use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(hc, head.weight, head.bias, yc)
    denom = num_target_tokens if num_target_tokens is not None else n_tokens
    return total / max(denom, 1), n_tokens


def sft_backward(model, examples: Sequence[SFTExample], micro_batch_size: int, pad_id: int,
                 device=None, chunk_size: int = 1024, dist: DistContext = LOCAL,
                 compute_dtype: torch.dtype = torch.float32) -> Tuple[float, int]:
    """Accumulate the gradient of one optimizer batch, micro-batch by micro-batch.

    Returns (mean token loss of the whole batch, its target tokens). The caller clips and
    steps the optimizer. The result does not depend on micro_batch_size, nor on which examples
    share a micro-batch, so they are grouped by length: each micro-batch is padded only to its
    own longest example (MIXTURE rows range from ~150 to ~1,200 tokens).
    Under torchrun `examples` is this rank's share: the target-token count is summed over ranks
    (one int64 all-reduce) before the first backward, DDP's mean is cancelled (x world_size) and
    gradients are all-reduced once, on the last micro-batch (lmmixup/dist/context.py).
    compute_dtype: the forwards' GEMM precision (precision.train resolved): under bf16 autocast
    the decoder's and the head's GEMMs run in bf16, the logits are cast to fp32 before the
    cross-entropy, and the loss and its sum stay fp32 (lmmixup/precision.py).
    """
    local_tokens = sum(ex.num_target_tokens for ex in examples)
    total_tokens = dist.sum_counts([local_tokens])[0]
    by_length = sorted(examples, key=lambda ex: len(ex.input_ids))
    starts = range(0, len(by_length), micro_batch_size)
    # at least one pass on an empty rank; FSDP2: as many as the busiest rank (see grpo_update)
    passes = max(dist.micro_slots(len(starts)), 1 if dist.distributed else 0)
    loss_value = 0.0
    for i in range(passes):
        if i >= len(starts):  # nothing (left) on this rank: still take part in the collectives
            if dist.needs_filler(last=i == passes - 1):
                with dist.grad_sync(last=i == passes - 1):
                    dist.zero_backward(model)
            continue
        start = starts[i]
        batch = collate(by_length[start:start + micro_batch_size], pad_id)
        if device is not None:
            batch = batch.to(device)
        with dist.grad_sync(last=i == passes - 1):
            with autocast(compute_dtype, batch.input_ids.device.type):  # the forward only
                loss, _ = dist.forward(sft_loss, model, batch, num_target_tokens=total_tokens,
                                       chunk_size=chunk_size)  # () fp32
            (loss * dist.grad_scale if dist.distributed else loss).backward()
        loss_value += float(loss.detach())
    if dist.distributed:
        loss_value = dist.sum_floats([loss_value])[0]
    return loss_value, total_tokens
