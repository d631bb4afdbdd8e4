"""The paper's pipeline at small scale: MIXTURE -> base eval -> SFT -> GRPO -> table.

    python -m lmmixup.pipeline                      # `make train`: defaults sized for a 2-core CPU
    python -m lmmixup.pipeline grpo_steps=50 model=Qwen/Qwen2.5-1.5B-Instruct out=runs/qwen

Each stage is a real `train.py` run in its own folder under `out`, so every stage has its own
config.yaml, metrics.jsonl, checkpoints and W&B run. The pipeline is resumable: a finished
stage is skipped, an interrupted one continues with `resume=auto`. All three models are scored
on the same held-out rows (grpo_test.jsonl) with greedy decoding and the paper's rewards; the
table goes to <out>/table.md and <out>/table.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from lmmixup.cli import parse_key_values, report_errors
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.errors import LmmixupError, require

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"
    """folder for the stage runs and the final table"""
    mixture: str = "data/mixture"
    """MIXTURE folder; built with lmmixup.data.build_mixture if it has no manifest.json"""
    model: str = "embedded:smollm2-135m-instruct"
    """the base model: embedded:..., tiny, a hub id or a local folder"""
    sft_steps: int = 20
    """SFT optimizer steps"""
    sft_examples_per_step: int = 8
    """SFT examples per optimizer step"""
    sft_lr: float = 5e-5
    """SFT peak learning rate (5% warm-up)"""
    grpo_steps: int = 4
    """GRPO steps (one rollout batch each)"""
    grpo_prompts_per_step: int = 4
    """GRPO prompts per step (x algo.group_size completions)"""
    grpo_lr: float = 2e-6
    """GRPO learning rate"""
    max_new_tokens: int = 256
    """completion budget for GRPO rollouts and for evaluation (MIXTURE targets: p50 ~140
    SmolLM2 tokens; at 128, 7 of 16 SFT completions were cut off before </answer>)"""
    eval_rows: int = 16
    """held-out rows scored for every model"""
    logger: str = "wandb"
    """wandb (offline) | none"""

    def validate(self) -> None:
        for key in ("sft_steps", "sft_examples_per_step", "grpo_steps", "grpo_prompts_per_step",
                    "max_new_tokens", "eval_rows"):
            require(getattr(self, key) > 0, key, "must be > 0")
        require(self.logger in ("wandb", "none"), "logger", "must be wandb or none")


STAGES = ("base", "sft", "grpo")


def run_train(run_dir: Path, overrides: List[str]) -> None:
    """One train.py run; resume=auto makes a re-run continue where an interrupted one stopped."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "resume=auto",
           f"hydra.run.dir={run_dir}"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"stage {run_dir.name} failed; its log is {run_dir / 'train.log'}")


def eval_file(run_dir: Path) -> Optional[Path]:
    found = sorted(run_dir.glob("eval_step_*.json"), key=lambda p: int(p.stem.split("_")[-1]))
    return found[-1] if found else None


def build_table(out: Path) -> Dict[str, Dict[str, float]]:
    table = {}
    for stage in STAGES:
        summary = json.loads(eval_file(out / stage).read_text())
        table[stage] = {name: summary[f"eval/{name}_mean"]
                        for name in ("quality", "alignment", "format", "total")}
        table[stage]["truncated"] = summary["eval/frac_truncated"]
    return table


def format_table(table: Dict[str, Dict[str, float]], rows: int) -> str:
    lines = [f"Held-out MIXTURE test rows: {rows}, greedy decoding, R = 0.5Q + 0.4A + 0.1F",
             "", "| model | quality Q | alignment A | format F | total R | truncated |",
             "|---|---|---|---|---|---|"]
    for stage, values in table.items():
        lines.append(f"| {stage} | " + " | ".join(f"{values[k]:.3f}" for k in
                                                   ("quality", "alignment", "format", "total",
                                                    "truncated")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    cfg = parse_key_values(PipelineConfig, sys.argv[1:] if argv is None else argv)
    out = Path(cfg.out)
    mixture = Path(cfg.mixture)
    t0 = time.time()
    if not (mixture / "manifest.json").exists():
        from lmmixup.data.build_mixture import main as build

        if build([f"out={mixture}"]) != 0:
            raise LmmixupError(f"building MIXTURE into {mixture} failed")
    common = [
        "data=mixture", "reward=paper", f"logger={cfg.logger}",
        f"data.eval_file={mixture / 'grpo_test.jsonl'}",
        f"data.rated_file={mixture / 'rated.jsonl'}",
        f"eval_max_rows={cfg.eval_rows}", f"rollout.max_new_tokens={cfg.max_new_tokens}",
    ]
    model = [f"model.name_or_path={cfg.model}"]
    if eval_file(out / "base") is None:
        run_train(out / "base", [*common, *model, "stage=eval"])
    if eval_file(out / "sft") is None:
        run_train(out / "sft", [
            *common, *model, "stage=sft", f"data.train_file={mixture / 'sft.jsonl'}",
            f"steps={cfg.sft_steps}", f"sft.examples_per_step={cfg.sft_examples_per_step}",
            f"optim.lr={cfg.sft_lr}", "optim.warmup_frac=0.05", "micro_batch_size=4"])
    if eval_file(out / "grpo") is None:
        run_train(out / "grpo", [
            *common, f"model.name_or_path={(out / 'sft' / 'model').resolve()}", "stage=grpo",
            f"data.train_file={mixture / 'grpo_train.jsonl'}",
            "algo=paper", f"steps={cfg.grpo_steps}", f"prompts_per_step={cfg.grpo_prompts_per_step}",
            f"optim.lr={cfg.grpo_lr}", "micro_batch_size=8"])
    table = build_table(out)
    text = format_table(table, cfg.eval_rows)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps(table, indent=2))
    print("\n" + text + f"\n(pipeline wall time {time.time() - t0:.0f} s; table in {out / 'table.md'})")


if __name__ == "__main__":
    report_errors(main)
