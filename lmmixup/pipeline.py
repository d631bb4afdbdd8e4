"""The paper's pipeline at small scale: MIXTURE -> base eval -> SFT -> GRPO -> table with CIs.

    python -m lmmixup.pipeline                      # `make train`: defaults sized for a 2-core CPU
    python -m lmmixup.pipeline experiment=distill_small        # conf/pipeline/experiment/: ~2 h
    python -m lmmixup.pipeline grpo_steps=50 model=Qwen/Qwen2.5-1.5B-Instruct out=runs/qwen

Configured like train.py: conf/pipeline/pipeline.yaml is the root, `PipelineConfig` below its
schema (registered with Hydra's ConfigStore), so a typo or a wrong type is one `error:` line. The
pipeline composes its config with Hydra's compose API rather than `@hydra.main`: it is a driver
of train.py runs with its own folder layout, so Hydra's run folder and logging have no role
here (and `-m` sweeps of the whole pipeline are not supported; sweep train.py instead).

Each stage is a real `train.py` run in its own folder under `out`, so every stage has its own
config.yaml, metrics.jsonl, checkpoints and W&B run. The pipeline is resumable: a finished
stage is skipped, an interrupted one continues with `resume=auto`. Every model is scored on the
same held-out rows (grpo_test.jsonl) with greedy decoding and the same rewards, next to the
baselines of lmmixup/eval/baselines.py; the table (means with 95% bootstrap CIs, GRPO - SFT
with its paired CI) goes to <out>/table.md and <out>/table.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.errors import LmmixupError, require

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "pipeline"  # its own root: `model` and `logger` are values, not groups


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"
    """folder for the stage runs and the final table"""
    mixture: str = "data/mixture"
    """MIXTURE folder; built with lmmixup.data.build_mixture if it has no manifest.json"""
    model: str = "embedded:smollm2-135m-instruct"
    """the base model: embedded:..., tiny, a hub id or a local folder"""
    sft_steps: int = 75
    """SFT optimizer steps: 75 x 8 examples is one epoch of the default build's 597 SFT rows. It
    beat 30 steps by R +0.057 [0.007, 0.114] (paired, 48 held-out rows) and made distill.py's
    pool bars (docs/LOG.md, 2026-12-06, fourth session); 20 before bf16, 30 until then"""
    sft_examples_per_step: int = 8
    """SFT examples per optimizer step"""
    sft_lr: float = 5e-5
    """SFT peak learning rate (5% warm-up)"""
    sft_model: str = ""
    """an SFT model folder to start GRPO from instead of training one: the sft stage then only
    scores it (e.g. the SFT model of an earlier `make train`)"""
    grpo_steps: int = 6
    """GRPO steps (one rollout batch each; 4 before bf16)"""
    grpo_prompts_per_step: int = 4
    """GRPO prompts per step (x algo.group_size completions)"""
    grpo_lr: float = 2e-6
    """GRPO learning rate"""
    max_new_tokens: int = 256
    """completion budget for GRPO rollouts and for evaluation (MIXTURE targets: p50 ~140
    SmolLM2 tokens; at 128, 7 of 16 SFT completions were cut off before </answer>)"""
    eval_rows: int = 48
    """held-out rows scored for every model and baseline (at 16 rows a CI is about +/-0.2)"""
    eval_base: bool = False
    """score the base model too. Off by default: it never writes the think/answer layout, so
    its row is 0 on every reward (R = -0.2) in every run so far, and it cost 6 of make train's
    29 minutes; those minutes now train (README, "the main job")"""
    logger: str = "wandb"
    """wandb (offline) | none"""
    overrides: List[str] = field(default_factory=list)
    """train.py overrides for every stage, e.g. [reward.quality.mode=expected]: every model
    is scored by the same rewards"""
    grpo_overrides: List[str] = field(default_factory=list)
    """train.py overrides for the GRPO stage only, e.g. [algo.beta=0.02, algo.group_size=8]"""

    def validate(self) -> None:
        for key in ("sft_steps", "sft_examples_per_step", "grpo_steps", "grpo_prompts_per_step",
                    "max_new_tokens", "eval_rows"):
            require(getattr(self, key) > 0, key, "must be > 0")
        require(self.logger in ("wandb", "none"), "logger", "must be wandb or none")
        for key in ("overrides", "grpo_overrides"):
            for item in getattr(self, key):
                require("=" in item, key, f"{item!r} is not a train.py key=value override")
        require(not self.sft_model or Path(self.sft_model).is_dir(), "sft_model",
                f"{self.sft_model!r} is not a folder")


def register_configs() -> None:
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)


def load_config(argv: List[str]) -> PipelineConfig:
    """Compose conf/pipeline/pipeline.yaml with the command line; any problem is one `error:` line."""
    # lazy: lmmixup.config loads torch (~2 s); a mistyped override is refused before it
    from lmmixup.config import to_typed_config

    precheck_overrides(argv, CONF, "pipeline", register_configs)  # exits with one line on a typo
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_typed_config(compose("pipeline", overrides=list(argv)))


def run_train(run_dir: Path, overrides: List[str]) -> None:
    """One train.py run; resume=auto makes a re-run continue where an interrupted one stopped."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "resume=auto",
           f"hydra.run.dir={run_dir}"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"stage {run_dir.name} failed; its log is {run_dir / 'train.log'}")


def eval_step(run_dir: Path) -> Optional[int]:
    """The step of the stage's newest evaluation (eval_step_<s>.json is written last)."""
    found = [int(p.stem.split("_")[-1]) for p in run_dir.glob("eval_step_*.json")]
    return max(found) if found else None


def build_mixture(mixture: Path) -> None:
    """The MIXTURE builder as its own command, called with key=value arguments."""
    cmd = [sys.executable, "-m", "lmmixup.data.build_mixture", f"out={mixture}"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"building MIXTURE into {mixture} failed")


def write_table(out: Path, stages: List[str], rows: int) -> str:
    """Per-row scores of every stage (and the baselines, read from the SFT stage's file) ->
    table.md / table.json; returns the markdown."""
    # lazy: numpy, needed only once every stage has run (a refused config never loads it)
    from lmmixup.eval.table import (format_markdown, load_scores, mean_cis, metric_columns,
                                    paired_delta_cis, table_json)

    systems = {}
    for stage in stages:
        scores = load_scores(out / stage / f"eval_samples_step_{eval_step(out / stage)}.jsonl", stage)
        systems[stage] = scores[0]
        if stage == "sft":  # the baselines do not depend on the model: one copy is enough
            systems.update({s.name: s for s in scores[1:]})
    order = [s for s in stages if s != "grpo"] + [n for n in systems if n.startswith("baseline")]
    order += ["grpo"] if "grpo" in systems else []
    means = {name: mean_cis(systems[name]) for name in order}
    deltas = {"grpo - sft": paired_delta_cis(systems["grpo"], systems["sft"])}
    if "baseline: copy_first" in systems:
        deltas["grpo - copy_first"] = paired_delta_cis(systems["grpo"], systems["baseline: copy_first"])
    columns = metric_columns(list(systems.values()))
    header = (f"Held-out MIXTURE test rows: {rows}, greedy decoding; total R = 0.5Q + 0.4A + 0.1F "
              f"+ w*P (P = -1 when no answer closes; w = reward.weights.no_answer)")
    text = format_markdown(means, deltas, columns, header)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps({"rows": rows, **table_json(means, deltas)},
                                                     indent=2))
    return text


def stage_overrides(cfg: PipelineConfig) -> Dict[str, List[str]]:
    """stage -> the train.py overrides of its run (resume and run folder are added by run_train)."""
    out, mixture = Path(cfg.out), Path(cfg.mixture)
    common = [
        "data=mixture", "reward=paper", f"logger={cfg.logger}",
        f"data.eval_file={mixture / 'grpo_test.jsonl'}",
        f"data.rated_file={mixture / 'rated.jsonl'}",
        f"eval_max_rows={cfg.eval_rows}", f"rollout.max_new_tokens={cfg.max_new_tokens}",
        *cfg.overrides,
    ]
    sft_model = Path(cfg.sft_model).resolve() if cfg.sft_model else (out / "sft" / "model").resolve()
    stages = {"base": [*common, f"model.name_or_path={cfg.model}", "stage=eval"]} if cfg.eval_base else {}
    if cfg.sft_model:  # reuse a trained SFT model: score it on the same rows, no training
        stages["sft"] = [*common, f"model.name_or_path={sft_model}", "stage=eval"]
    else:
        stages["sft"] = [
            *common, f"model.name_or_path={cfg.model}", "stage=sft",
            f"data.train_file={mixture / 'sft.jsonl'}", f"steps={cfg.sft_steps}",
            f"sft.examples_per_step={cfg.sft_examples_per_step}", f"optim.lr={cfg.sft_lr}",
            "optim.warmup_frac=0.05", "micro_batch_size=4"]
    stages["grpo"] = [
        *common, f"model.name_or_path={sft_model}", "stage=grpo",
        f"data.train_file={mixture / 'grpo_train.jsonl'}",
        "algo=paper", f"steps={cfg.grpo_steps}", f"prompts_per_step={cfg.grpo_prompts_per_step}",
        f"optim.lr={cfg.grpo_lr}", "micro_batch_size=8", *cfg.grpo_overrides]
    return stages


def main(argv: Optional[List[str]] = None) -> None:
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    out = Path(cfg.out)
    t0 = time.time()
    if not (Path(cfg.mixture) / "manifest.json").exists():
        build_mixture(Path(cfg.mixture))
    stages = stage_overrides(cfg)
    for stage, overrides in stages.items():  # in order: base, sft, grpo (from the SFT model)
        if eval_step(out / stage) is None:
            run_train(out / stage, overrides)
    text = write_table(out, list(stages), cfg.eval_rows)
    print("\n" + text + f"\n(pipeline wall time {time.time() - t0:.0f} s; table in {out / 'table.md'})")


if __name__ == "__main__":
    report_errors(main)
