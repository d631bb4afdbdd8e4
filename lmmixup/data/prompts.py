"""Training prompts: a JSONL file of rows, validated line by line, served in seeded epochs.

Each line is an object with
    prompt     required: a non-empty string (one user turn) or a list of {"role", "content"}
    reference  optional: the reference output the alignment reward compares against
    task       optional: qa | mcq | tfq | cs | para (the format reward checks its shape)
    target     optional: the full reference completion (used by SFT)
Any other fields (seed_id, members, ...) are kept but not required.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from lmmixup.data.jsonl import iter_jsonl
from lmmixup.errors import LmmixupError, require

TASKS = ("qa", "mcq", "tfq", "cs", "para")
STARTER_PROMPTS = Path(__file__).with_name("starter_prompts.jsonl")


@dataclass
class DataConfig:
    train_file: str = str(STARTER_PROMPTS)
    """JSONL of training prompts (GRPO) or prompt+target rows (SFT)"""
    eval_file: str = ""
    """JSONL of held-out rows scored after training; empty = no evaluation"""
    rated_file: str = ""
    """rated (text, score 0-5) rows made with the data; reward=paper uses it as its kNN library"""
    shuffle_seed: int = 0
    """seed of the per-epoch prompt order"""
    max_prompt_tokens: int = 1024
    """a prompt longer than this (after the chat template) is an error naming its line"""

    def validate(self) -> None:
        require(bool(self.train_file), "data.train_file", "must name a JSONL file")
        require(self.max_prompt_tokens > 0, "data.max_prompt_tokens", "must be > 0")


Messages = List[Dict[str, str]]


@dataclass
class PromptRow:
    prompt: Union[str, Messages]
    reference: Optional[str] = None
    task: Optional[str] = None
    target: Optional[str] = None
    line: int = 0  # 1-based line in the source file, for error messages
    extra: Optional[Dict[str, Any]] = None
    prefill: str = ""
    """text the assistant turn already holds when sampling starts (distill.py's retries write the
    think notes by rule, lmmixup/distill/generate.py); the completion continues it"""

    def messages(self) -> Messages:
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return self.prompt


def _parse_row(obj: Any, where: str, line: int) -> PromptRow:
    if not isinstance(obj, dict):
        raise LmmixupError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise LmmixupError(f"{where}: missing field 'prompt'")
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise LmmixupError(f"{where}: field 'prompt' is empty")
    elif isinstance(prompt, list):
        if not prompt:
            raise LmmixupError(f"{where}: field 'prompt' is an empty message list")
        for m in prompt:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise LmmixupError(f"{where}: field 'prompt' must hold {{role, content}} string pairs")
        if not any(m["content"].strip() for m in prompt):
            raise LmmixupError(f"{where}: field 'prompt' has only empty messages")
    else:
        raise LmmixupError(f"{where}: field 'prompt' must be a string or a message list, "
                           f"got {type(prompt).__name__}")
    for key in ("reference", "target", "task"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise LmmixupError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
    task = obj.get("task")
    if task is not None and task not in TASKS:
        raise LmmixupError(f"{where}: field 'task' is {task!r}; known: {', '.join(TASKS)}")
    known = {"prompt", "reference", "task", "target"}
    return PromptRow(prompt=prompt, reference=obj.get("reference"), task=task,
                     target=obj.get("target"), line=line,
                     extra={k: v for k, v in obj.items() if k not in known})


def load_rows(path: str) -> List[PromptRow]:
    """Read and validate every line; the first bad line raises an error naming file and line."""
    rows = [_parse_row(obj, f"{path}:{line}", line) for line, obj in iter_jsonl(path)]
    if not rows:
        raise LmmixupError(f"{path}: no rows (the file is empty or holds only blank lines)")
    return rows


def render_prompt(tokenizer, row: PromptRow) -> str:
    """The prompt as the model sees it: chat template applied, assistant turn opened (and
    started with row.prefill)."""
    opened = tokenizer.apply_chat_template(row.messages(), tokenize=False, add_generation_prompt=True)
    return opened + row.prefill


def _prompt_ids(tokenizer, rows: List[PromptRow], max_prompt_tokens: int,
                source: str) -> List[List[int]]:
    """Token ids of every rendered prompt; a prompt over the limit names its file line."""
    texts = [render_prompt(tokenizer, r) for r in rows]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for r, ids in zip(rows, enc):
        if len(ids) > max_prompt_tokens:
            raise LmmixupError(f"{source}:{r.line}: prompt has {len(ids)} tokens, over "
                               f"data.max_prompt_tokens={max_prompt_tokens}")
    return enc


def check_prompt_lengths(tokenizer, rows: List[PromptRow], max_prompt_tokens: int,
                         source: str, chunk: int = 256) -> None:
    """Fail at start-up, not at the step that first samples a too-long prompt."""
    for start in range(0, len(rows), chunk):
        _prompt_ids(tokenizer, rows[start : start + chunk], max_prompt_tokens, source)


def encode_prompts(tokenizer, rows: List[PromptRow], max_prompt_tokens: int, source: str = ""):
    """Rows -> left-padded (B, P) ids and mask. A prompt over the limit names its file line."""
    enc = _prompt_ids(tokenizer, rows, max_prompt_tokens, source)
    width = max(len(ids) for ids in enc)
    input_ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(enc), width), dtype=torch.long)  # (B, P)
    for i, ids in enumerate(enc):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    return input_ids, mask


class PromptSampler:
    """Serves batches of rows in a fresh seeded permutation each epoch.

    Its whole state is (epoch, position): saving and restoring those two integers resumes the
    exact same sequence of batches.
    """

    def __init__(self, rows: List[PromptRow], seed: int):
        self.rows, self.seed = rows, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> List[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def next_batch(self, batch_size: int) -> List[PromptRow]:
        batch = []
        while len(batch) < batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            batch.append(self.rows[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
