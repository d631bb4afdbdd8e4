"""Degradation: turn one high-quality seed into 2-20 low-quality variants, each rated 0-5.

Every operator takes (question, answer, rng, ctx) and returns the damaged pair, or None when
it does not apply (too few words, nothing to replace). Randomness comes only from the
`random.Random` passed in, so a seed's variants are a pure function of (seed, config, rng seed).
For mcq the question-side operators touch only the stem, so the A)-D) option lines survive.

    operator           severity  what it does
    typos              1.0   3-8% of the question's letters (and, half the time, the answer's,
                             if it has >= 4 letters) swapped, dropped, doubled or replaced by a
                             keyboard neighbour
    drop_words         1.0   15-30% of the question's words removed (>= 3 words; >= 2 are kept)
    shuffle_words      1.5   a window of 3-6 consecutive question words put in a new order
    truncate_question  2.0   the question cut to its first 40-70% of words, then '...'
    vague_question     1.5   1-3 specific words (numbers, names, long words) replaced by vague
                             ones ('something', 'this', ...)
    wrong_answer       3.5   the answer replaced by a wrong one: another mcq letter, the flipped
                             True/False, a SciQ distractor, or another seed's answer
    partial_answer     2.0   qa/cs/para: the answer cut to its first 30-60% of words (a one-word
                             answer of >= 4 characters: its first half), then '...'
    verbose_filler     1.0   1-2 of: a filler opening on the question, a hedging or chatty tail
                             on the answer, the answer said twice
    casing_punct       0.5   one of: all lower case, ALL UPPER CASE, punctuation stripped,
                             end punctuation tripled, random word casing
    reword             0.5   a templated rephrasing ('Quick question: ...'): a redundant variant
    llm_paraphrase     0.5   the question paraphrased by a teacher LLM (off unless
                             degrade.teacher is set, and then listed in degrade.operators);
                             a reply that is not a question (an answer) is rejected

A variant applies 1..max_ops distinct operators. Its severity is the sum of theirs and its
score is `max(0, 4 - floor(severity))`: e.g. casing only (0.5) -> 4, typos (1.0) -> 3,
typos + truncate (3.0) -> 1, a wrong answer with anything >= 0.5 more -> 0. Seeds themselves,
having passed the sanity filter in sources.py, score 5.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from lmmixup.data.schema import Seed, render_pair, split_mcq
from lmmixup.errors import require
from lmmixup.models import ModelConfig, load_model, load_tokenizer, stop_token_ids

Pair = Tuple[str, str]
Paraphraser = Callable[[str], str]

ORIGINAL_SCORE = 5


@dataclass
class DegradeConfig:
    variants_min: int = 2
    """fewest variants made per seed (the paper: 2)"""
    variants_max: int = 8
    """most variants made per seed (the paper: up to 20; more only grows rated.jsonl)"""
    max_ops: int = 3
    """each variant applies between 1 and this many distinct operators"""
    operators: str = ("typos,drop_words,shuffle_words,truncate_question,vague_question,"
                      "wrong_answer,partial_answer,verbose_filler,casing_punct,reword")
    """comma list of enabled operators (see the table in lmmixup/data/degrade.py)"""
    teacher: str = ""
    """model.name_or_path of the paraphrasing teacher for llm_paraphrase; empty = no LLM"""
    teacher_max_new_tokens: int = 64
    """longest teacher paraphrase, in tokens"""

    def validate(self) -> None:
        require(2 <= self.variants_min <= self.variants_max <= 20, "degrade.variants_min",
                f"need 2 <= variants_min <= variants_max <= 20, got "
                f"{self.variants_min}..{self.variants_max}")
        require(self.max_ops >= 1, "degrade.max_ops", "must be >= 1")
        names = self.operator_names()
        require(bool(names), "degrade.operators", "names no operator")
        for name in names:
            require(name in OPERATORS, "degrade.operators",
                    f"unknown operator {name!r}; known: {', '.join(OPERATORS)}")
        require("llm_paraphrase" not in names or bool(self.teacher), "degrade.operators",
                "llm_paraphrase needs degrade.teacher=<model>")
        require(self.teacher_max_new_tokens > 0, "degrade.teacher_max_new_tokens", "must be > 0")

    def operator_names(self) -> List[str]:
        return [s.strip() for s in self.operators.split(",") if s.strip()]


@dataclass
class DegradeContext:
    task: str
    wrong_answers: Sequence[str] = ()
    """candidate wrong answers for wrong_answer"""
    paraphrase: Optional[Paraphraser] = None
    """the teacher, for llm_paraphrase"""


@dataclass(frozen=True)
class Variant:
    """One degraded copy of a seed."""

    seed_id: str
    task: str
    question: str
    answer: str
    operators: Tuple[str, ...]
    severity: float
    score: int

    @property
    def text(self) -> str:
        return render_pair(self.task, self.question, self.answer)


def severity_to_score(severity: float) -> int:
    """0.5 -> 4, 1.0-1.5 -> 3, 2.0-2.5 -> 2, 3.0-3.5 -> 1, >= 4 -> 0."""
    return max(0, 4 - math.floor(severity))


# ----------------------------------------------------------------------------- helpers

_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbour(c: str, rng: random.Random) -> str:
    """A key next to `c` on a QWERTY keyboard (same case); another letter if `c` is not on it."""
    low = c.lower()
    for row in _KEYBOARD:
        i = row.find(low)
        if i >= 0:
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            out = rng.choice(near)
            return out.upper() if c.isupper() else out
    return rng.choice("etaoinshr")


def _typo_text(text: str, rng: random.Random, rate: float) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    if not letters:
        return text
    k = min(len(letters), max(1, round(rate * len(letters))))
    for i in sorted(rng.sample(letters, k), reverse=True):  # right to left: indices stay valid
        kind, c = rng.choice(("swap", "drop", "double", "near")), chars[i]
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        if kind == "swap" and len(nxt) == 1 and nxt.isalpha() and nxt != c:
            chars[i], chars[i + 1] = nxt, c
        elif kind == "drop":
            chars[i] = ""
        elif kind == "double":
            chars[i] = c + c
        else:
            chars[i] = _neighbour(c, rng)
    out = "".join(chars)
    if out == text:  # edits that cancelled out: force one visible change
        i = rng.choice(letters)
        out = text[:i] + _neighbour(text[i], rng) + text[i + 1:]
    return out


def _on_question(q: str, task: str, fn: Callable[[str], Optional[str]]) -> Optional[str]:
    """Apply fn to the question, or only to the stem of an mcq question."""
    stem, options = split_mcq(q) if task == "mcq" else (q, "")
    new = fn(stem)
    return None if new is None or new == stem else new + options


def _strip_end(word: str) -> Tuple[str, str]:
    m = re.match(r"^(.*?)([^\w]*)$", word)
    return m.group(1), m.group(2)


# ----------------------------------------------------------------------------- operators

def op_typos(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    rate = rng.uniform(0.03, 0.08)
    new_q = _on_question(q, ctx.task, lambda s: _typo_text(s, rng, rate))
    if sum(c.isalpha() for c in a) >= 4 and rng.random() < 0.5:
        a = _typo_text(a, rng, rate)
    return None if new_q is None else (new_q, a)


def op_drop_words(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    def drop(s: str) -> Optional[str]:
        words = s.split()
        if len(words) < 3:
            return None
        n = min(len(words) - 2, max(1, round(len(words) * rng.uniform(0.15, 0.30))))
        gone = set(rng.sample(range(len(words)), n))
        return " ".join(w for i, w in enumerate(words) if i not in gone)

    new_q = _on_question(q, ctx.task, drop)
    return None if new_q is None else (new_q, a)


def op_shuffle_words(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    def shuffle(s: str) -> Optional[str]:
        words = s.split()
        if len(words) < 3 or len(set(words)) < 2:
            return None
        width = min(len(words), rng.randint(3, 6))
        start = rng.randint(0, len(words) - width)
        window = words[start:start + width]
        for _ in range(10):
            mixed = window[:]
            rng.shuffle(mixed)
            if mixed != window:
                return " ".join(words[:start] + mixed + words[start + width:])
        return None  # a window of identical words

    new_q = _on_question(q, ctx.task, shuffle)
    return None if new_q is None else (new_q, a)


def op_truncate_question(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    def cut(s: str) -> Optional[str]:
        words = s.split()
        if len(words) < 4:
            return None
        keep = min(len(words) - 1, max(1, int(len(words) * rng.uniform(0.4, 0.7))))
        return " ".join(words[:keep]) + "..."

    new_q = _on_question(q, ctx.task, cut)
    return None if new_q is None else (new_q, a)


_VAGUE = ("something", "this", "that thing", "some stuff", "whatever")


def op_vague_question(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    def blur(s: str) -> Optional[str]:
        words = s.split()
        specific = [i for i, w in enumerate(words)
                    if (core := _strip_end(w)[0]) and (any(ch.isdigit() for ch in core)
                                                       or (i > 0 and core[0].isupper())
                                                       or (core.isalpha() and len(core) >= 7))]
        if not specific:
            return None
        for i in rng.sample(specific, min(len(specific), rng.randint(1, 3))):
            words[i] = rng.choice(_VAGUE) + _strip_end(words[i])[1]
        return " ".join(words)

    new_q = _on_question(q, ctx.task, blur)
    return None if new_q is None else (new_q, a)


def op_wrong_answer(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    wrong = sorted({w for w in ctx.wrong_answers if w.strip() and w.strip() != a.strip()})
    return (q, rng.choice(wrong)) if wrong else None


def op_partial_answer(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    if ctx.task not in ("qa", "cs", "para"):
        return None
    words = a.split()
    if len(words) >= 2:
        keep = min(len(words) - 1, max(1, int(len(words) * rng.uniform(0.3, 0.6))))
        return q, " ".join(words[:keep]) + "..."
    if len(a) >= 4:
        return q, a[: len(a) // 2] + "..."
    return None


_FILLER_OPEN = ("So, um, basically, ", "Okay so I have a question, ", "I was just wondering, like, ",
                "Hi! Random thought, but ")
_FILLER_TAIL = (" I hope this helps, let me know if you have any other questions!",
                " ...or at least that's what I think.", " Anyway, that's basically it, more or less.",
                " (not 100% sure though)")


def op_verbose_filler(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    kinds = rng.sample(("open", "tail", "repeat"), rng.randint(1, 2))
    if "open" in kinds:
        q = _on_question(q, ctx.task, lambda s: rng.choice(_FILLER_OPEN) + s[:1].lower() + s[1:]) or q
    if "tail" in kinds:
        a = a + rng.choice(_FILLER_TAIL)
    if "repeat" in kinds:
        a = f"{a} So yeah, to repeat: {a}"
    return q, a


def _recase(s: str, mode: str, rng: random.Random) -> str:
    if mode == "lower":
        return s.lower()
    if mode == "upper":
        return s.upper()
    if mode == "strip_punct":
        return re.sub(r"[.,;:!?'\"]", "", s)
    if mode == "triple_end":
        return re.sub(r"([.?!])\s*$", lambda m: m.group(1) * 3, s) if re.search(r"[.?!]\s*$", s) else s + "???"
    return " ".join(w.swapcase() if rng.random() < 0.5 else w for w in s.split(" "))  # random


def op_casing_punct(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    modes = ["lower", "upper", "strip_punct", "triple_end", "random"]
    rng.shuffle(modes)
    for mode in modes:
        new_q = _on_question(q, ctx.task, lambda s: _recase(s, mode, rng))
        if new_q is not None:
            if ctx.task in ("qa", "para", "cs") and rng.random() < 0.5:
                a = _recase(a, mode, rng)
            return new_q, a
    return None


_REWORD = ("Quick question: ", "Can you tell me: ", "I'd like to know: ", "Question - ",
           "Help me with this one: ")


# Every phrase the operators add, for the target notes' filler detector (notes.py), which looks
# for them in the member text itself, never in the degradation record.
FILLERS: Tuple[str, ...] = _FILLER_OPEN + _FILLER_TAIL + ("So yeah, to repeat:",) + _REWORD


def op_reword(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    new_q = _on_question(q, ctx.task, lambda s: rng.choice(_REWORD) + s[:1].lower() + s[1:])
    return None if new_q is None else (new_q, a)


def _checked_paraphrase(text: str, paraphrase: Paraphraser) -> Optional[str]:
    """The teacher's rewrite, or None when it looks like an answer rather than a question:
    a question must stay a question, and not grow past twice its length. (SmolLM2-135M, asked
    to paraphrase, mostly answers instead: those replies are rejected here.)"""
    out = (paraphrase(text) or "").strip()
    if not out or len(out) > 2 * len(text) + 20:
        return None
    if text.rstrip().endswith("?") and not out.endswith("?"):
        return None
    return out


def op_llm_paraphrase(q: str, a: str, rng: random.Random, ctx: DegradeContext) -> Optional[Pair]:
    if ctx.paraphrase is None:
        return None
    new_q = _on_question(q, ctx.task, lambda s: _checked_paraphrase(s, ctx.paraphrase))
    return None if new_q is None else (new_q, a)


@dataclass(frozen=True)
class Operator:
    fn: Callable[[str, str, random.Random, DegradeContext], Optional[Pair]]
    severity: float


OPERATORS: Dict[str, Operator] = {
    "typos": Operator(op_typos, 1.0),
    "drop_words": Operator(op_drop_words, 1.0),
    "shuffle_words": Operator(op_shuffle_words, 1.5),
    "truncate_question": Operator(op_truncate_question, 2.0),
    "vague_question": Operator(op_vague_question, 1.5),
    "wrong_answer": Operator(op_wrong_answer, 3.5),
    "partial_answer": Operator(op_partial_answer, 2.0),
    "verbose_filler": Operator(op_verbose_filler, 1.0),
    "casing_punct": Operator(op_casing_punct, 0.5),
    "reword": Operator(op_reword, 0.5),
    "llm_paraphrase": Operator(op_llm_paraphrase, 0.5),
}


def apply_operators(seed: Seed, names: Sequence[str], rng: random.Random,
                    ctx: DegradeContext) -> Optional[Variant]:
    """Apply `names` in order; operators that do not apply are skipped (and not recorded)."""
    q, a, applied = seed.question, seed.answer, []
    for name in names:
        out = OPERATORS[name].fn(q, a, rng, ctx)
        if out is not None and out != (q, a):
            (q, a), applied = out, applied + [name]
    if not applied:
        return None
    severity = sum(OPERATORS[n].severity for n in applied)
    return Variant(seed.seed_id, seed.task, q, a, tuple(applied), severity,
                   severity_to_score(severity))


def degrade_seed(seed: Seed, cfg: DegradeConfig, rng: random.Random,
                 wrong_answers: Sequence[str] = (), paraphrase: Optional[Paraphraser] = None,
                 ) -> List[Variant]:
    """variants_min..variants_max distinct variants (fewer only if the seed is too short for
    enough distinct damage; the caller drops a seed left with fewer than 2). wrong_answer uses
    the seed's own distractors, else `wrong_answers` (e.g. other seeds' answers)."""
    ctx = DegradeContext(seed.task, seed.distractors or wrong_answers, paraphrase)
    names = cfg.operator_names()
    target = rng.randint(cfg.variants_min, cfg.variants_max)
    seen, out = {seed.pair}, []
    for _ in range(10 * target):
        if len(out) == target:
            break
        k = rng.randint(1, min(cfg.max_ops, len(names)))
        v = apply_operators(seed, rng.sample(names, k), rng, ctx)
        if v is not None and v.text not in seen:
            seen.add(v.text)
            out.append(v)
    return out


# Operators that damage form but keep every word (a typo still supplies its word, content.py):
# the ones a "keeper" variant may use when no drawn variant keeps some content of the seed.
CONTENT_KEEPING = ("typos", "shuffle_words", "verbose_filler", "casing_punct", "reword")


def keeper_variant(seed: Seed, cfg: DegradeConfig, rng: random.Random, taken: Sequence[str],
                   keeps: Callable[[Variant], bool], tries: int = 10) -> Optional[Variant]:
    """One more variant, made only with enabled CONTENT_KEEPING operators, for which `keeps`
    holds and whose text is not in `taken`; None after `tries` draws (or if none is enabled).
    The builder asks for it when no drawn variant keeps some content word of the seed."""
    names = [n for n in cfg.operator_names() if n in CONTENT_KEEPING]
    ctx = DegradeContext(seed.task)
    for _ in range(tries if names else 0):
        k = rng.randint(1, min(cfg.max_ops, len(names)))
        v = apply_operators(seed, rng.sample(names, k), rng, ctx)
        if v is not None and v.text not in taken and v.text != seed.pair and keeps(v):
            return v
    return None


class TeacherParaphraser:
    """llm_paraphrase's teacher: greedy decoding (deterministic) of a chat model through
    lmmixup.models; results are memoised, so a resumed build asks it nothing twice per run."""

    PROMPT = ("Rewrite the following question in different words, keeping its meaning. "
              "Reply with the rewritten question only.\n\n{text}")

    def __init__(self, name_or_path: str, max_new_tokens: int = 64):
        cfg = ModelConfig(name_or_path=name_or_path)
        self.torch = torch
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_model(cfg, self.tokenizer).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.max_new_tokens = max_new_tokens
        self._memo: Dict[str, str] = {}

    def __call__(self, text: str) -> str:
        if text not in self._memo:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": self.PROMPT.format(text=text)}],
                tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            with self.torch.no_grad():
                out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids),
                                          do_sample=False, max_new_tokens=self.max_new_tokens,
                                          eos_token_id=self.stop_ids,
                                          pad_token_id=self.tokenizer.pad_token_id)
            reply = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            self._memo[text] = (reply.strip().splitlines() or [""])[0].strip()
        return self._memo[text]
