"""The schema of `python -m lmmixup.downstream` (conf/downstream/downstream.yaml), registered
with Hydra's ConfigStore as `downstream_schema`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from lmmixup.errors import require
from lmmixup.eval.harness import BENCHMARKS, EvalConfig
from lmmixup.lora import LoraConfig
from lmmixup.models import ModelConfig
from lmmixup.precision import PrecisionConfig

from lmmixup.downstream.sets import SETS

BUDGETS = ("epochs", "steps")


@dataclass
class FinetuneConfig:
    budget: str = "epochs"
    """epochs: every set sees `epochs` passes (the paper's comparison; bigger sets get more
    steps) | steps: every set gets the same `steps` optimizer steps"""
    epochs: int = 1
    """with budget=epochs: passes over each set (steps = ceil(epochs * rows / examples_per_step))"""
    steps: int = 100
    """with budget=steps: optimizer steps for every set"""
    max_steps: int = 0
    """a cap on any set's steps (0 = none); a capped set is flagged in results.md"""
    examples_per_step: int = 8
    """training examples per optimizer step"""
    micro_batch_size: int = 4
    """examples per forward/backward (gradients accumulate exactly)"""
    lr: float = 1e-4
    """peak learning rate (the paper's LoRA runs: 1e-4)"""
    warmup_frac: float = 0.03
    """fraction of the steps spent warming the lr up"""
    max_seq_len: int = 1024
    """rows longer than this (prompt + target tokens) are skipped and counted by train.py"""
    logger: str = "none"
    """train.py's logger group for each run: none | wandb (offline)"""

    def validate(self) -> None:
        require(self.budget in BUDGETS, "train.budget",
                f"must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        for key in ("epochs", "steps", "examples_per_step", "micro_batch_size", "max_seq_len"):
            require(getattr(self, key) > 0, f"train.{key}", "must be > 0")
        require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(0 <= self.warmup_frac < 1, "train.warmup_frac", "must be in [0, 1)")
        require(self.logger in ("none", "wandb"), "train.logger", "must be none or wandb")


def _lora_model() -> ModelConfig:
    return ModelConfig(lora=LoraConfig(enabled=True))


@dataclass
class DownstreamConfig:
    distilled: str = ""
    """a distill.py output folder (mix.jsonl, rated.jsonl, normalized.jsonl)"""
    out: str = "runs/downstream"
    """where the sets, the fine-tuned models, the scores and results.{json,md,png} go"""
    sets: List[str] = field(default_factory=lambda: list(SETS))
    """training sets to compare: full, random, high, mix"""
    benchmarks: List[str] = field(default_factory=lambda: list(BENCHMARKS))
    """lm-eval benchmarks: mmlu, arc_challenge, arc_easy, hellaswag, gsm8k, ifeval,
    ref_nll_alpaca (the reference answer's NLL per byte, lower is better)"""
    high_threshold: Optional[float] = None
    """set `high`: rated.jsonl rows with score >= this; null = the distill run's own
    rate.high_threshold (its config.json), or 4.0 (distill.py's default) when it has none"""
    seed: int = 0
    """seed of the random/high subsets and of every train.py run"""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda, for training and evaluation"""
    model: ModelConfig = field(default_factory=_lora_model)
    """the base model every set fine-tunes (LoRA on by default: r 64, alpha 16, dropout 0.1)"""
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    """the fine-tuning budget and optimizer, the same for every set"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """lm-eval settings, the same for every set"""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """train.py's precision for every fine-tune (lmmixup/precision.py). The benchmarks score in
    the model's own dtype: under CPU autocast lm-eval's log-softmax would run in bf16"""

    def validate(self) -> None:
        require(bool(self.distilled), "distilled", "must name a distill.py output folder")
        require(bool(self.sets), "sets", "must name at least one set")
        for name in self.sets:
            require(name in SETS, "sets", f"unknown set {name!r}; known: {', '.join(SETS)}")
        require(len(set(self.sets)) == len(self.sets), "sets", "names a set twice")
        require(bool(self.benchmarks), "benchmarks", "must name at least one benchmark")
        for name in self.benchmarks:
            require(name in BENCHMARKS, "benchmarks",
                    f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        require(len(set(self.benchmarks)) == len(self.benchmarks), "benchmarks",
                "names a benchmark twice")
        require(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")


def register_configs() -> None:
    ConfigStore.instance().store(name="downstream_schema", node=DownstreamConfig)
