"""Distilling a cluster: the training prompt layout, the rollout engine, the parsed pair.

Each cluster's members are rendered with `lmmixup.data.layout.prompt_messages`, the same
function that builds MIXTURE's training prompts, as `para` pairs (a pool sample is an
instruction and a free-text output). Generation is `lmmixup.step.sample` with the greedy
settings held-out evaluation uses (temperature 1, top_k 1: the argmax), one completion per
cluster, on the configured rollout engine: the code training samples with.

Members are cut to `distill.member_chars` characters each for the question and the output
(ShareGPT replies run to thousands of characters); a cluster whose prompt is still longer than
`distill.max_prompt_tokens` is not generated and is kept with reason prompt_too_long.

Parsing the completion (the rewards' rule: the last complete `<answer>...</answer>` block):
    no_answer   no complete answer block, and the completion ended by itself
    truncated   no complete answer block, and the completion hit distill.max_new_tokens
    empty       an answer block with nothing in it
    no_output   the block holds no instruction/output split: "Q: ... A: ..." or an instruction,
                a blank line (or else a line break) and the output
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Sequence

from lmmixup.data.layout import prompt_messages
from lmmixup.distill.formats import question_text
from lmmixup.errors import require
from lmmixup.rewards.answer import extract_answer
from lmmixup.rollout import RolloutConfig

FAILURE_REASONS = ("no_answer", "truncated", "empty", "no_output", "prompt_too_long")
TASK = "para"
_EMPTY_BLOCK = re.compile(r"<answer>\s*</answer>")
_QA = re.compile(r"^Q:\s*(.*?)\n\s*A:\s*(.*)$", re.DOTALL)


@dataclass
class GenerateConfig:
    engine: str = "static"
    """rollout engine: static (ours) | hf (transformers generate)"""
    batch_size: int = 8
    """clusters per rollout call, which is also one resumable shard"""
    max_new_tokens: int = 384
    """token budget of a distilled completion (think + answer); longer ones are truncated"""
    max_prompt_tokens: int = 1280
    """clusters whose prompt is longer are kept as failures (prompt_too_long), not generated"""
    member_chars: int = 400
    """each member's question and output are cut to this many characters in the prompt"""
    keep_threshold: float = 4.0
    """distilled pairs re-rated at or above this are kept for the mix"""

    def validate(self) -> None:
        require(self.engine in ("static", "hf"), "distill.engine", "must be static or hf")
        require(self.batch_size > 0, "distill.batch_size", "must be > 0")
        require(self.max_new_tokens > 0, "distill.max_new_tokens", "must be > 0")
        require(self.max_prompt_tokens > 0, "distill.max_prompt_tokens", "must be > 0")
        require(self.member_chars >= 20, "distill.member_chars", "must be >= 20")
        require(0 <= self.keep_threshold <= 5, "distill.keep_threshold", "must be in [0, 5]")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary and marked with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + "…"


def cluster_messages(members: Sequence[Dict], member_chars: int) -> List[Dict[str, str]]:
    """Pool rows of one cluster -> the distillation prompt (chat messages), training's layout."""
    pairs = [(clip(question_text(m["instruction"], m["input"]), member_chars),
              clip(m["output"], member_chars)) for m in members]
    return prompt_messages(pairs, TASK)


class Parsed(NamedTuple):
    ok: bool
    reason: str  # '' when ok, else one of FAILURE_REASONS
    instruction: str
    output: str


def parse_distilled(completion: str, truncated: bool) -> Parsed:
    """A completion -> the distilled instruction and output, or the reason there are none."""
    answer = extract_answer(completion)
    if answer is None:
        if _EMPTY_BLOCK.search(completion):
            return Parsed(False, "empty", "", "")
        return Parsed(False, "truncated" if truncated else "no_answer", "", "")
    qa = _QA.match(answer)
    if qa:
        instruction, output = qa.group(1).strip(), qa.group(2).strip()
    else:
        sep = "\n\n" if "\n\n" in answer else "\n"
        instruction, _, output = (part.strip() for part in answer.partition(sep))
    if not instruction or not output:
        return Parsed(False, "no_output", instruction, output)
    return Parsed(True, "", instruction, output)


def greedy_rollout_config(cfg: GenerateConfig) -> RolloutConfig:
    """Held-out evaluation's greedy settings (lmmixup/evaluate.py) on distill's budget."""
    return dataclasses.replace(RolloutConfig(engine=cfg.engine, max_new_tokens=cfg.max_new_tokens),
                               temperature=1.0, top_k=1, top_p=1.0)


def prompt_lengths(tokenizer, prompts: Sequence[List[Dict[str, str]]]) -> List[int]:
    from lmmixup.data.prompts import PromptRow, render_prompt

    texts = [render_prompt(tokenizer, PromptRow(prompt=p)) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


class Generation(NamedTuple):
    completion: str  # decoded text, special tokens stripped ('' when not generated)
    truncated: bool  # hit distill.max_new_tokens before the stop token
    tokens: int  # completion tokens, stop token included
    prompt_tokens: int  # the rendered prompt's length; over max_prompt_tokens = not generated


def distill_batch(model, tokenizer, prompts: Sequence[List[Dict[str, str]]], cfg: GenerateConfig,
                  stop_ids: Sequence[int], device) -> List[Generation]:
    """B prompts -> B generations in one greedy rollout call (prompts that are too long skip it)."""
    from lmmixup.data.prompts import PromptRow
    from lmmixup.step import reward_batch, sample

    lengths = prompt_lengths(tokenizer, prompts)
    out = [Generation("", False, 0, n) for n in lengths]
    fits = [i for i, n in enumerate(lengths) if n <= cfg.max_prompt_tokens]
    if not fits:
        return out
    rows = [PromptRow(prompt=list(prompts[i]), task=TASK) for i in fits]
    rollout = sample(model, tokenizer, rows, greedy_rollout_config(cfg), 1, stop_ids,
                     cfg.max_prompt_tokens, "clusters.jsonl", device)
    texts = reward_batch(tokenizer, rollout, rows, 1)  # decodes, special tokens stripped
    for j, i in enumerate(fits):
        out[i] = Generation(texts.completions[j], bool(rollout.truncated[j]),
                            texts.completion_tokens[j], lengths[i])
    return out
