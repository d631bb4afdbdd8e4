"""The root config: every component's dataclass composed into one schema for Hydra.

The schema is registered with Hydra's ConfigStore as `schema` and named first in
conf/config.yaml's defaults, so an unknown key or a wrongly typed value fails when the config is
composed. `to_train_config` then builds the typed dataclasses and runs every `validate()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmmixup.checkpoint import CheckpointConfig
from lmmixup.data.prompts import DataConfig
from lmmixup.dist.context import DistConfig
from lmmixup.errors import ConfigError, require
from lmmixup.grpo import AlgoConfig
from lmmixup.hacking import HackingConfig
from lmmixup.logging import LoggerConfig
from lmmixup.models import ModelConfig
from lmmixup.optim import OptimConfig
from lmmixup.precision import PrecisionConfig
from lmmixup.rewards.config import RewardConfig
from lmmixup.rollout import RECORDS_LOGPROBS, RolloutConfig


@dataclass
class SFTConfig:
    examples_per_step: int = 8
    """training examples per optimizer step (split into micro_batch_size chunks)"""
    max_seq_len: int = 1024
    """examples longer than this (prompt + target tokens) are skipped and counted"""

    def validate(self) -> None:
        require(self.examples_per_step > 0, "sft.examples_per_step", "must be > 0")
        require(self.max_seq_len > 0, "sft.max_seq_len", "must be > 0")


@dataclass
class TrainConfig:
    stage: str = "grpo"
    """grpo (RL) | sft (supervised cold start on data.train_file targets) | eval (score only)"""
    seed: int = 0
    """seed of every random choice; step s of a run re-seeds with (seed, s) for exact resume"""
    steps: int = 20
    """optimizer steps to run (GRPO: one rollout batch per step)"""
    prompts_per_step: int = 4
    """B: prompts per rollout batch (each sampled algo.group_size times)"""
    mini_batch_prompts: int = 0
    """prompts per optimizer update; 0 = all B (one update per rollout batch per iteration)"""
    micro_batch_size: int = 8
    """sequences per forward/backward; gradients accumulate to exactly the mini-batch gradient"""
    logprob_chunk_size: int = 1024
    """positions per lm_head+log-softmax chunk (bounds the logits held in memory)"""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda"""
    resume: str = ""
    """'' = new run | auto = newest checkpoint in the run folder | a checkpoint folder"""
    on_nonfinite: str = "skip"
    """when the loss, a reward or a gradient is NaN/inf: skip the batch | stop"""
    max_nonfinite_skips: int = 3
    """with on_nonfinite=skip: stop after this many skipped batches"""
    eval_every: int = 0
    """score data.eval_file every N steps with greedy decoding (0 = only at the end, if set)"""
    eval_max_rows: int = 64
    """rows of data.eval_file used for evaluation"""
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    hacking: HackingConfig = field(default_factory=HackingConfig)
    """thresholds of the reward-hacking signals logged every GRPO step (lmmixup/hacking.py)"""
    dist: DistConfig = field(default_factory=DistConfig)
    """data parallelism under torchrun (lmmixup/dist/); inert in one process"""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """fp32 or bf16 (or auto, measured) for training GEMMs and the sampler (lmmixup/precision.py)"""

    def validate(self) -> None:
        require(self.stage in ("grpo", "sft", "eval"), "stage",
                f"must be grpo, sft or eval, got {self.stage!r}")
        require(self.stage != "eval" or bool(self.data.eval_file), "data.eval_file",
                "stage=eval needs a JSONL file of rows to score")
        require(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.mini_batch_prompts >= 0, "mini_batch_prompts", "must be >= 0")
        require(self.mini_batch_prompts == 0 or self.prompts_per_step % self.mini_batch_prompts == 0,
                "mini_batch_prompts", f"must divide prompts_per_step={self.prompts_per_step}")
        require(self.micro_batch_size > 0, "micro_batch_size", "must be > 0")
        require(self.logprob_chunk_size > 0, "logprob_chunk_size", "must be > 0")
        require(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        require(self.on_nonfinite in ("skip", "stop"), "on_nonfinite", "must be skip or stop")
        require(self.max_nonfinite_skips >= 0, "max_nonfinite_skips", "must be >= 0")
        require(self.eval_every >= 0, "eval_every", "must be >= 0")
        require(not (self.algo.max_resample_rounds > 0 and not self.algo.filter_zero_std_groups),
                "algo.max_resample_rounds", "needs algo.filter_zero_std_groups=true")
        require(self.algo.rollout_is in ("none", "auto") or self.rollout.engine in RECORDS_LOGPROBS,
                "algo.rollout_is",  # (vllm records them too; it is experimental, not advertised)
                "needs an engine that records sampling log-probs (rollout.engine=static)")
        require(self.precision.rollout != "bf16" or self.rollout.engine == "static",
                "precision.rollout", "only rollout.engine=static samples in another precision")


def validate_all(node) -> None:
    """Call validate() on the root and on every nested config dataclass."""
    if hasattr(node, "validate"):
        node.validate()
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            validate_all(value)


def register_configs() -> None:
    ConfigStore.instance().store(name="schema", node=TrainConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Typed, validated config; every problem is a one-line ConfigError naming the key."""
    return to_typed_config(cfg)


def to_typed_config(cfg: DictConfig):
    """Any Hydra-composed config whose schema was registered with the ConfigStore (train.py,
    distill.py, ...) as its dataclass, with every nested validate() run: one front-end for every
    command, each problem a one-line ConfigError naming the key."""
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    # Hydra lets `+key=value` add a key to a structured config and to_object drops it silently,
    # so a typo such as `+algo.bta=0.1` would train with the default: refuse it here.
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False), typed)
    if unknown:
        key, owner = unknown[0]
        raise ConfigError(f"{key}: Key '{key.rsplit('.', 1)[-1]}' not in '{owner}'")
    validate_all(typed)
    return typed


def unknown_keys(node: dict, typed, prefix: str = "") -> list:
    """(dotted key, dataclass name) of every key in `node` that `typed`'s dataclass lacks."""
    fields = {f.name for f in dataclasses.fields(typed)}
    found = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            found.append((dotted, type(typed).__name__))
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(typed, key)):
            found += unknown_keys(value, getattr(typed, key), dotted + ".")
    return found
