"""The root config of distill.py: each part's dataclass, composed and registered with Hydra.

Registered in the ConfigStore as `distill_schema` and named first in conf/distill.yaml's
defaults, so a typo or a wrongly typed value fails when the config is composed, in one line;
`lmmixup.config.to_typed_config` then builds the dataclasses and runs every `validate()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore

from lmmixup.distill.cluster import PoolClusterConfig
from lmmixup.distill.formats import PoolConfig, parse_input
from lmmixup.distill.generate import GenerateConfig
from lmmixup.distill.longtail import LongTailConfig
from lmmixup.distill.mix import MixConfig
from lmmixup.distill.rate import RateConfig
from lmmixup.errors import require
from lmmixup.models import ModelConfig
from lmmixup.precision import PrecisionConfig


@dataclass
class DistillConfig:
    input: str = "sharegpt:200"
    """the pool: sharegpt:N | selfinstruct:N | a JSONL/JSON file | hf:<dataset id>[:split]"""
    out: str = "runs/distill"
    """output folder; a rerun with the same config resumes, a different config is refused"""
    reuse: str = ""
    """an earlier run's out folder: a new out folder copies its complete stages up to the first
    one a changed key affects (a mix sweep then distils once; lmmixup/distill/state.py)"""
    seed: int = 0
    """seed of the clustering and of the mix's shuffle"""
    device: str = "auto"
    """device of the distiller: auto (cuda if available) | cpu | cuda"""
    progress: bool = True
    """show a progress bar per stage"""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """reading the pool"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the distiller: a train.py model folder, or the embedded SmolLM2 by default"""
    rate: RateConfig = field(default_factory=RateConfig)
    """the 0-5 rater, the high-quality threshold, the embedder"""
    cluster: PoolClusterConfig = field(default_factory=PoolClusterConfig)
    """capacity-limited k-means of the low-quality samples"""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """the distiller's sampler precision (precision.rollout; train.py's setting and meaning,
    lmmixup/precision.py); precision.train is unused here: distillation does not train"""
    distill: GenerateConfig = field(default_factory=GenerateConfig)
    """generation of the distilled pairs, and the keep threshold"""
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    """the long-tail diversity score"""
    mix: MixConfig = field(default_factory=MixConfig)
    """the final training set"""

    def validate(self) -> None:
        parse_input(self.input)
        require(bool(self.out), "out", "must name an output folder")
        if self.reuse:
            require(Path(self.reuse).is_dir(), "reuse", f"no run folder at {self.reuse!r}")
            require(Path(self.reuse).resolve() != Path(self.out).resolve(), "reuse",
                    "is the out folder itself; a rerun in place already reuses its stages")
        require(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")


def register_distill_configs() -> None:
    ConfigStore.instance().store(name="distill_schema", node=DistillConfig)
