"""Distilling a cluster: the evaluation path's prompt, the rollout engine, the parsed pair.

The product path is the evaluation path (issue 27). Each cluster is rendered with
`lmmixup.data.layout.prompt_messages`, the function that builds MIXTURE's training and
held-out prompts, in the layout of the task its members are (`lmmixup.distill.task`:
qa | mcq | tfq | cs | para, or `distill.task` forced). Generation is `Policy.sample`
(lmmixup/sampling/policy.py) with held-out evaluation's greedy settings (temperature 1,
top_k 1: the argmax), one completion per cluster, on the configured rollout engine: the code
training samples with.
`benchmarks/distill_parity.py` checks that the two paths score alike on MIXTURE's test split.

Retries. Greedy decoding of a small model fails in ways another decode often does not: a loop
inside the think notes that runs to the budget (`truncated`), the notes written as the pair,
an answer in another task's shape. A cluster whose greedy pair fails any check below (not
prompt_too_long) is decoded again, up to distill.retries times; the first pair that passes is
kept, and the row records how many rollouts it took (`attempts`). The retries follow a fixed
schedule:

    attempt  think notes                          decoding
    0        the model's                          greedy (held-out evaluation's settings)
    1        written by rule                      greedy
    2        written by rule                      sampled at distill.retry_temperature
    3, ...   the model's                          sampled at distill.retry_temperature

Notes written by rule are `lmmixup.data.notes.visible_notes` of the members as the prompt shows
them: the function that wrote every SFT target's notes, quoting the members' majority answer
where training would. The assistant turn starts with them and an opened answer block, so the
model writes only the pair, and a loop inside the notes cannot happen. A sampled retry draws
from its cluster's own stream (lmmixup.dist.shard.group_seed of the run's seed, the cluster's
index and the attempt), so a pair does not depend on the batch or the rank it ran in, and a
resumed run writes the same bytes. The stored completion of a retry is the whole assistant
turn, given notes included. docs/LOG.md (2026-12-06, third session) has what each attempt
rescued on MIXTURE's test pool.

Budget. A completion stops at its first `</answer>` (a stop sequence of the static engine; the
text is cut there for any engine), and each cluster gets its own token budget,
    budget = 40 + 24 k + 1.5 * (tokens of its longest member pair),   capped by distill.max_new_tokens
for k members: a think block of one note line per member (MIXTURE's targets: a median of 19
tokens per member, at most 30) and a pair up to 1.5x the longest member (targets: a median of
0.98x, at most 1.67x). No SFT target of the default MIXTURE build exceeds 40 + 24 k + 1.2 x.
A completion cut by its budget is `truncated`, the same whatever batch it ran in.

Members are cut to `distill.member_chars` characters each for the question and the output
(ShareGPT replies run to thousands of characters); a cluster whose prompt is still longer than
`distill.max_prompt_tokens` is not generated and is kept with reason prompt_too_long.

Parsing the completion (the rewards' rule: the last complete `<answer>...</answer>` block):
    no_answer    no complete answer block, and the completion ended by itself
    truncated    no complete answer block, and the completion hit its budget
    empty        an answer block with nothing in it
    wrong_shape  the block does not have its task's shape (the format reward's own check,
                 lmmixup.rewards.task_format)
    no_output    the shape holds no instruction/output split
then the pair is checked for degenerate content (lmmixup.distill.degenerate: notes_in_answer,
template_echo, answer_repeats_question, repetition, copied_member), each its own reason.
A parsed pair is (instruction, output) in the pool's own convention, the inverse of
`lmmixup.data.schema.render_pair`: qa Q/A; mcq the stem with its option lines / the letter;
tfq the statement / True|False; cs the statement / the category; para the first paragraph /
the rest.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from lmmixup.data.layout import prompt_messages, target_text
from lmmixup.data.notes import majority_answer, visible_notes
from lmmixup.data.prompts import PromptRow, render_prompt
from lmmixup.data.schema import split_pair
from lmmixup.dist.shard import group_seed, group_uniforms
from lmmixup.distill.degenerate import DEGENERATE_REASONS, degenerate_reason
from lmmixup.distill.formats import question_text
from lmmixup.distill.task import TASK_CHOICES, cluster_task
from lmmixup.errors import require
from lmmixup.rewards.answer import extract_answer
from lmmixup.rewards.task_format import answer_matches_task
from lmmixup.rollout import RolloutConfig

PARSE_FAILURES = ("no_answer", "truncated", "empty", "wrong_shape", "no_output", "prompt_too_long")
FAILURE_REASONS = PARSE_FAILURES + DEGENERATE_REASONS
ANSWER_CLOSE = "</answer>"
BUDGET_BASE, BUDGET_PER_MEMBER, BUDGET_PAIR_FACTOR = 40, 24, 1.5  # module docstring, "Budget"
_EMPTY_BLOCK = re.compile(r"<answer>\s*</answer>")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
@dataclass
class GenerateConfig:
    engine: str = "static"
    """rollout engine: static (ours) | hf (transformers generate)"""
    task: str = "auto"
    """layout each cluster is rendered, rated and parsed in: auto (detected from its members,
    lmmixup/distill/task.py) | qa | mcq | tfq | cs | para (forced for every cluster)"""
    batch_size: int = 8
    """clusters per rollout call, which is also one resumable shard"""
    max_new_tokens: int = 512
    """cap of a cluster's token budget (think + answer; the budget itself follows the members'
    lengths, module docstring); longer completions are truncated"""
    max_prompt_tokens: int = 1280
    """clusters whose prompt is longer are kept as failures (prompt_too_long), not generated"""
    member_chars: int = 400
    """each member's question and output are cut to this many characters in the prompt"""
    keep_threshold: float = 3.5
    """distilled pairs re-rated at or above this are kept for the mix. The paper keeps >= 4 on
    its judge's scale; the learned rater's is compressed (9% of MIXTURE's clean held-out
    references reach 4), and on MIXTURE's test pool 3.5 kept 26 pairs, 92% fully repaired,
    against 2 at 4 (docs/LOG.md, 2026-12-06)"""
    min_gain: Optional[float] = None
    """when set, a pair is kept only when its rating beats its cluster's best member's by more
    than this. Off by default: on MIXTURE's test pool every pair that min_gain 0 removed from
    the defect-free pairs at 3.5 was fully repaired (the rater's scores of noisy members are
    noise the gate adds; docs/LOG.md, 2026-12-06)"""
    retries: int = 4
    """a cluster whose greedy pair fails (any reason but prompt_too_long) is decoded again up to
    this many times, on the module docstring's schedule (notes by rule greedy, notes by rule
    sampled, then the model's notes sampled); the first pair that passes is kept. On MIXTURE's
    test pool the third retry took the clusters in shape from 93.6% to 95.2%; the fourth passed
    1 (1-epoch SFT) and 3 (20-step SFT) more clusters of 125, a fifth none (docs/LOG.md)"""
    retry_temperature: float = 0.7
    """sampling temperature of the sampled retries (top-k and top-p off)"""
    reject_defects: bool = True
    """a pair with a surface defect the notes' detectors find (lmmixup/distill/defects.py) is
    not kept, whatever its rating"""

    def validate(self) -> None:
        require(self.engine in ("static", "hf"), "distill.engine", "must be static or hf")
        require(self.task in TASK_CHOICES, "distill.task",
                f"unknown task {self.task!r}; known: {', '.join(TASK_CHOICES)}")
        require(self.batch_size > 0, "distill.batch_size", "must be > 0")
        require(self.max_new_tokens > 0, "distill.max_new_tokens", "must be > 0")
        require(self.max_prompt_tokens > 0, "distill.max_prompt_tokens", "must be > 0")
        require(self.member_chars >= 20, "distill.member_chars", "must be >= 20")
        require(0 <= self.keep_threshold <= 5, "distill.keep_threshold", "must be in [0, 5]")
        require(self.min_gain is None or -5 <= self.min_gain <= 5, "distill.min_gain",
                "must be in [-5, 5] or null")
        require(self.retries >= 0, "distill.retries", "must be >= 0")
        require(self.retry_temperature > 0, "distill.retry_temperature", "must be > 0")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary and marked with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + "…"


def member_pairs(members: Sequence[Dict], member_chars: int) -> List[Tuple[str, str]]:
    """Pool rows of one cluster -> (question, answer) as the prompt shows them."""
    return [(clip(question_text(m["instruction"], m["input"]), member_chars),
             clip(m["output"], member_chars)) for m in members]


class ClusterPrompt(NamedTuple):
    task: str  # the layout the cluster is rendered and parsed in
    members: List[Tuple[str, str]]  # (question, answer) as shown
    messages: List[Dict[str, str]]  # the chat prompt, training's layout


def cluster_prompt(members: Sequence[Dict], cfg: GenerateConfig) -> ClusterPrompt:
    """Pool rows of one cluster -> its task and distillation prompt (training's layout)."""
    pairs = member_pairs(members, cfg.member_chars)
    task = cluster_task(pairs, cfg.task)
    return ClusterPrompt(task, pairs, prompt_messages(pairs, task))


class Parsed(NamedTuple):
    ok: bool
    reason: str  # '' when ok, else one of FAILURE_REASONS
    instruction: str
    output: str
    answer: str  # the whole answer block ('' when there is none)


def parse_distilled(completion: str, truncated: bool, task: str,
                    members: Sequence[Tuple[str, str]]) -> Parsed:
    """A completion -> the distilled instruction and output, or the reason there are none."""
    answer = extract_answer(completion)
    if answer is None:
        if _EMPTY_BLOCK.search(completion):
            return Parsed(False, "empty", "", "", "")
        return Parsed(False, "truncated" if truncated else "no_answer", "", "", "")
    if not answer_matches_task(answer, task):
        return Parsed(False, "wrong_shape", "", "", answer)
    instruction, output = split_pair(task, answer)  # the pool's (question, answer) convention
    if not instruction or not output:
        return Parsed(False, "no_output", instruction, output, answer)
    reason = degenerate_reason(answer, instruction, output, members)
    return Parsed(not reason, reason, instruction, output, answer)


def attempt_rollout_config(cfg: GenerateConfig, max_new_tokens: int, attempt: int) -> RolloutConfig:
    """Attempts 0 and 1: held-out evaluation's greedy settings (lmmixup/evaluate.py); a later
    retry samples the full distribution at distill.retry_temperature. All on distill's budget."""
    greedy = attempt <= 1
    return dataclasses.replace(RolloutConfig(engine=cfg.engine, max_new_tokens=max_new_tokens),
                               temperature=1.0 if greedy else cfg.retry_temperature,
                               top_k=1 if greedy else 0, top_p=1.0)


def rule_notes(attempt: int) -> bool:
    """Does this attempt start from the rule-written notes (module docstring, "Retries")?"""
    return attempt in (1, 2)


def rule_notes_prefill(members: Sequence[Tuple[str, str]]) -> str:
    """The assistant turn a retry starts from: the SFT target's layout up to the pair, with the
    notes training would write for these members (the majority answer quoted where there is
    one, as training quotes the reference's when most members give it)."""
    major = majority_answer(members)
    notes = visible_notes(members, members[major][1] if major is not None else "")
    head = target_text(notes, "")  # "<think>\n...\n</think>\n\n<answer>\n\n</answer>"
    return head[: head.rindex("\n</answer>")]  # up to and including "<answer>\n"


def token_lengths(tokenizer, texts: Sequence[str]) -> List[int]:
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def prompt_lengths(tokenizer, prompts: Sequence[List[Dict[str, str]]]) -> List[int]:
    return token_lengths(tokenizer, [render_prompt(tokenizer, PromptRow(prompt=p)) for p in prompts])


def token_budget(tokenizer, members: Sequence[Tuple[str, str]], cap: int) -> int:
    """The cluster's completion budget (module docstring, "Budget")."""
    longest = max(token_lengths(tokenizer, [f"Q: {q}\nA: {a}" for q, a in members]))
    return min(cap, BUDGET_BASE + BUDGET_PER_MEMBER * len(members)
               + math.ceil(BUDGET_PAIR_FACTOR * longest))


def stop_sequences(tokenizer) -> List[List[int]]:
    """The token ids `</answer>` takes after a word, a space or a newline (SmolLM2: '</' or
    ' </', then 'answer', '>'), each once."""
    out: List[List[int]] = []
    for before in ("x", "x ", "x\n"):
        alone, joined = tokenizer([before, before + ANSWER_CLOSE], add_special_tokens=False)["input_ids"]
        common = 0  # "x " is [x, " "] alone but [x, " </", ...] joined: keep the shared head only
        while common < min(len(alone), len(joined)) and alone[common] == joined[common]:
            common += 1
        ids = joined[common:]
        if ids and ids not in out:
            out.append(ids)
    return out


def cut_at_answer_close(text: str) -> Tuple[str, bool]:
    """(text up to and including its first `</answer>`, whether one was there)."""
    end = text.find(ANSWER_CLOSE)
    return (text, False) if end < 0 else (text[: end + len(ANSWER_CLOSE)], True)


def think_tokens(tokenizer, completion: str) -> int:
    """Tokens inside the completion's first <think> block (0 when it has none)."""
    m = _THINK.search(completion)
    return token_lengths(tokenizer, [m.group(1).strip()])[0] if m else 0


class Generation(NamedTuple):
    completion: str  # decoded text up to its first </answer>, special tokens stripped
    truncated: bool  # hit the cluster's budget before </answer> or the stop token
    tokens: int  # completion tokens, stop token included
    prompt_tokens: int  # the rendered prompt's length; over max_prompt_tokens = not generated
    budget: int  # the cluster's token budget (0 when not generated)
    think_tokens: int  # tokens of the think block


def distill_batch(policy, prompts: Sequence[ClusterPrompt], cfg: GenerateConfig,
                  attempt: int = 0, seeds: Optional[Sequence[int]] = None) -> List[Generation]:
    """B cluster prompts -> B generations in one rollout call (prompts that are too long skip
    it). Attempt 0: greedy, the model writes its notes. A retry (attempt >= 1) starts from the
    rule-written notes (rule_notes_prefill); attempt 1 is greedy, later ones sample with each
    prompt's own stream (seeds (B,), one per cluster), so no row depends on the batch it ran
    in. Each row is held to its own budget of generated tokens. policy: the distilling model
    (lmmixup.sampling.policy.Policy: tokenizer, stop ids, device, sampling precision)."""
    tokenizer = policy.tokenizer
    lengths = prompt_lengths(tokenizer, [p.messages for p in prompts])
    out = [Generation("", False, 0, n, 0, 0) for n in lengths]
    fits = [i for i, n in enumerate(lengths) if n <= cfg.max_prompt_tokens]
    if not fits:
        return out
    budgets = {i: token_budget(tokenizer, prompts[i].members, cfg.max_new_tokens) for i in fits}
    prefills = {i: rule_notes_prefill(prompts[i].members) if rule_notes(attempt) else ""
                for i in fits}
    rows = [PromptRow(prompt=list(prompts[i].messages), task=prompts[i].task, prefill=prefills[i])
            for i in fits]
    rollout_cfg = attempt_rollout_config(cfg, max(budgets.values()), attempt)
    uniforms = (None if rollout_cfg.top_k == 1 else  # (B', T) one stream per cluster
                group_uniforms([seeds[i] for i in fits], 1, rollout_cfg.max_new_tokens))
    # whether a cluster fits is decided on its prompt alone, the same at every attempt; the
    # given notes ride on top of the limit
    max_prompt = cfg.max_prompt_tokens + max(token_lengths(tokenizer, list(prefills.values())))
    rollout = policy.sample(rows, 1, max_prompt_tokens=max_prompt, source="clusters.jsonl",
                            uniforms=uniforms, stop_sequences=stop_sequences(tokenizer),
                            config=rollout_cfg)
    ids = rollout.completion_ids.masked_fill(rollout.completion_mask == 0, tokenizer.pad_token_id)
    for j, i in enumerate(fits):
        own = ids[j, : budgets[i]]  # (budget,) the row as its own budget would have cut it
        length = int(rollout.completion_mask[j].sum())  # tokens up to its stop, or all it ran
        stopped = not bool(rollout.truncated[j]) and length <= budgets[i]
        text, closed = cut_at_answer_close(
            prefills[i] + tokenizer.decode(own.tolist(), skip_special_tokens=True))
        out[i] = Generation(text, not (stopped or closed), min(length, budgets[i]), lengths[i],
                            budgets[i], think_tokens(tokenizer, text))
    return out


def parse_generation(gen: Generation, prompt: ClusterPrompt, cfg: GenerateConfig) -> Parsed:
    if gen.prompt_tokens > cfg.max_prompt_tokens:
        return Parsed(False, "prompt_too_long", "", "", "")
    return parse_distilled(gen.completion, gen.truncated, prompt.task, prompt.members)


class Distilled(NamedTuple):
    generation: Generation  # the attempt kept: the first that passed, else the closest one
    parsed: Parsed
    attempts: int  # rollouts this cluster took (1 = greedy only)
    reasons: Tuple[str, ...]  # each attempt's failure reason, in order ('' for the one that passed)


def closeness(reason: str) -> int:
    """How far a pair got: passed > parsed but degenerate > an answer block without a pair >
    one in another shape > an empty block > no block at all (truncated or no_answer)."""
    if not reason:
        return 5
    if reason in DEGENERATE_REASONS:
        return 4
    return {"no_output": 3, "wrong_shape": 2, "empty": 1}.get(reason, 0)


def distill_clusters(policy, prompts: Sequence[ClusterPrompt], seeds: Sequence[int],
                     cfg: GenerateConfig) -> List[Distilled]:
    """B cluster prompts -> B distilled pairs: greedy first; a cluster whose pair fails is
    decoded again up to distill.retries times on the module docstring's schedule (a sampled
    retry with seeds (B,): each cluster's own, so its text does not depend on the other
    clusters), and its first passing pair is kept. A cluster that never passes keeps its
    closest attempt (`closeness`; the earliest of equals) with that attempt's reason: a
    cluster whose greedy notes looped but whose retry wrote a pair the checks reject is
    reported by what the retry wrote, and `reasons` keeps every attempt's."""
    gens = distill_batch(policy, prompts, cfg)
    out = []
    for g, p in zip(gens, prompts):
        parsed = parse_generation(g, p, cfg)
        out.append(Distilled(g, parsed, 1, (parsed.reason,)))
    for attempt in range(1, cfg.retries + 1):
        again = [i for i, d in enumerate(out) if not d.parsed.ok and d.parsed.reason != "prompt_too_long"]
        if not again:
            break
        retry_seeds = [group_seed(seeds[i], attempt, 0) for i in again]
        regen = distill_batch(policy, [prompts[i] for i in again], cfg, attempt, retry_seeds)
        for i, gen in zip(again, regen):
            parsed = parse_generation(gen, prompts[i], cfg)
            reasons = out[i].reasons + (parsed.reason,)
            closer = closeness(parsed.reason) > closeness(out[i].parsed.reason)
            out[i] = (Distilled(gen, parsed, attempt + 1, reasons) if closer
                      else out[i]._replace(attempts=attempt + 1, reasons=reasons))
    return out
