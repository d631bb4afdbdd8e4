"""Audit a built MIXTURE folder: what its targets ask of a model that sees only the prompt.

    python -m lmmixup.data.audit DIR [SEEDS_JSONL]     (SEEDS_JSONL defaults to DIR/.work/seeds.jsonl)

Per split it prints one JSON object:
    rows, by_task                 row counts
    numbered_prompts              rows whose user turn lists its k members as "Pair 1:".."Pair k:"
    reasoning_tokens              median / p90 / max SmolLM2 tokens inside <think>
    rows_naming_pair_above_k      rows whose notes name "Pair i" with i > k members
    rows_with_more_note_lines_than_k
    rows_with_uncheckable_note    rows with a "Pair i" claim that the text-only detectors
                                  (notes.py) do not confirm on member i, or with a "Background"
                                  paragraph (evidence that is not in the prompt)
    rows_with_background          of those, the rows with a Background paragraph
    rows_unrecoverable            rows whose target has content words no member has (content.py);
                                  needs the seeds file for each target's (question, answer)
Old notes (built before the grounded notes, "Pair 3 gives a wrong answer and is vague.") are
read with OLD_PHRASES; a phrase with no detector ("is vague") counts as uncheckable.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from lmmixup.data.content import Pair, unrecoverable_content
from lmmixup.data.jsonl import iter_jsonl
from lmmixup.data.notes import DETECTORS, findings, parse_note_lines
from lmmixup.models import ModelConfig, load_tokenizer

# The operator-record phrases of the first notes -> the detector that could confirm each.
OLD_PHRASES: Dict[str, Optional[str]] = {
    "has typos": "misspelled",
    "is missing words": "missing_words",
    "has scrambled word order": None,
    "is cut off": "cut_off",
    "is vague": None,
    "gives a wrong answer": "answer_differs",
    "gives an incomplete answer": "cut_off",
    "is padded with filler": "filler",
    "has broken casing or punctuation": "casing",
    "is a rephrasing": "filler",
    "is a paraphrase": None,
    "is about a different question, so I leave it out": "different_question",
}
_THINK = re.compile(r"<think>\n(.*?)\n</think>", re.S)


def claim_checkable(index: int, text: str, members: Sequence[Pair]) -> bool:
    """Does the text-only evidence confirm every claim of one "Pair i" note line?"""
    if not 1 <= index <= len(members):
        return False
    i, body = index - 1, text.rstrip(".")
    found = findings(i, members)
    if body == "no surface defect found":
        return not found
    if body in found or all(part in found for part in body.split(", ")):
        return True  # the grounded notes: each finding is one detector's phrase
    if body == "is about a different question, so I leave it out":
        return DETECTORS["different_question"](i, members) is not None
    for phrase in re.split(r", | and ", body):  # the old notes: "<phrase>, <phrase> and <phrase>"
        detector = OLD_PHRASES.get(phrase)
        if detector is None or DETECTORS[detector](i, members) is None:
            return False
    return True


def _pct(values: List[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def audit_split(path: Path, seeds: Dict[str, Pair], tokenizer) -> Dict:
    rows = [obj for _, obj in iter_jsonl(path)]
    stats = Counter()
    lengths: List[int] = []
    for row in rows:
        members = [(m["question"], m["answer"]) for m in row["members"]]
        k = len(members)
        user = row["prompt"][-1]["content"]
        stats["numbered_prompts"] += all(f"Pair {i}:\nQ: " in user for i in range(1, k + 1)) \
            and f"Pair {k + 1}:" not in user
        think = _THINK.search(row["target"])
        reasoning = think.group(1) if think else ""
        lengths.append(len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]))
        notes = parse_note_lines(reasoning)
        notes = [(i, text) for i, text in notes if not text.startswith("keeps the most content")]
        stats["rows_naming_pair_above_k"] += any(int(n) > k for n in re.findall(r"Pair (\d+)", reasoning))
        stats["rows_with_more_note_lines_than_k"] += len(notes) > k
        background = "Background:" in reasoning
        stats["rows_with_background"] += background
        stats["rows_with_uncheckable_note"] += background or not all(
            claim_checkable(i, text, members) for i, text in notes)
        if row["seed_id"] in seeds:
            stats["rows_with_seed"] += 1
            stats["rows_unrecoverable"] += bool(unrecoverable_content(seeds[row["seed_id"]], members))
    n = max(len(rows), 1)
    return {
        "rows": len(rows),
        "by_task": dict(sorted(Counter(r["task"] for r in rows).items())),
        "reasoning_tokens": {"median": statistics.median(lengths) if lengths else 0,
                             "p90": _pct(lengths, 0.9), "max": max(lengths, default=0)},
        **{key: {"rows": stats[key], "fraction": round(stats[key] / n, 4)}
           for key in ("numbered_prompts", "rows_naming_pair_above_k",
                       "rows_with_more_note_lines_than_k", "rows_with_uncheckable_note",
                       "rows_with_background")},
        "rows_unrecoverable": {"rows": stats["rows_unrecoverable"], "of": stats["rows_with_seed"],
                               "fraction": round(stats["rows_unrecoverable"]
                                                 / max(stats["rows_with_seed"], 1), 4)},
    }


def load_seeds(path: Path) -> Dict[str, Pair]:
    if not path.is_file():
        return {}
    return {r["seed_id"]: (r["question"], r["answer"]) for _, r in iter_jsonl(path)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m lmmixup.data.audit DIR [SEEDS_JSONL]", file=sys.stderr)
        return 2
    folder = Path(args[0])
    seeds = load_seeds(Path(args[1]) if len(args) == 2 else folder / ".work" / "seeds.jsonl")
    tokenizer = load_tokenizer(ModelConfig())
    for split in ("grpo_test", "sft"):
        report = audit_split(folder / f"{split}.jsonl", seeds, tokenizer)
        print(json.dumps({"split": split, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
