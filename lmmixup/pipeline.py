"""The paper's pipeline at small scale: MIXTURE -> base eval -> SFT -> [RAFT] -> GRPO ->
[the validation-chosen GRPO step on test] -> table with CIs.

    python -m lmmixup.pipeline                      # `make train`: defaults sized for a 2-core CPU
    python -m lmmixup.pipeline experiment=distill_small        # conf/pipeline/experiment/: ~2 h
    python -m lmmixup.pipeline experiment=decide               # + RAFT, validation, 137 rows
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

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.data.validation import write_validation_split
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
    val_rows: int = 0
    """GRPO rows carved out (whole seeds, lmmixup/data/validation.py) as a validation split:
    GRPO is scored on them every `val_every` steps and the step with the best validation R is
    the one scored on test (stage grpo_test). 0: no split, GRPO's last step is scored"""
    val_every: int = 10
    """with val_rows: validation evaluations (and checkpoints kept) every N GRPO steps"""
    raft_n: int = 0
    """RAFT row (rejection-sampling fine-tuning, lmmixup/raft): completions sampled per training
    prompt from the SFT model; each prompt's best is kept where it beats its group's mean by more
    than the scorer's noise, and the SFT model is fine-tuned on those. 0: no RAFT row"""
    raft_prompts: int = 160
    """RAFT's training prompts: raft_prompts x raft_n completions sampled (GRPO samples
    grpo_steps x grpo_prompts_per_step x G, more with DAPO's refill)"""
    raft_steps: int = 10
    """RAFT's fine-tuning steps of sft_examples_per_step examples (the kept rows cycle)"""
    raft_lr: float = 2e-5
    """RAFT's fine-tuning learning rate (it starts from the SFT model, not the base)"""

    def validate(self) -> None:
        for key in ("sft_steps", "sft_examples_per_step", "grpo_steps", "grpo_prompts_per_step",
                    "max_new_tokens", "eval_rows", "val_every", "raft_prompts", "raft_steps"):
            require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("val_rows", "raft_n"):
            require(getattr(self, key) >= 0, key, "must be >= 0 (0 turns it off)")
        require(self.raft_n != 1, "raft_n", "must be 0 (off) or >= 2: a best of one is no choice")
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


def finished(run_dir: Path, overrides: List[str]) -> bool:
    """A stage=eval run is finished once it has scored; a training run once it saved its final
    model and scored its last step (GRPO with validation scores earlier steps on the way)."""
    if "stage=eval" in overrides:
        return eval_step(run_dir) is not None
    steps = int([o for o in overrides if o.startswith("steps=")][-1].split("=", 1)[1])
    return (run_dir / "model").is_dir() and eval_step(run_dir) == steps


def build_mixture(mixture: Path) -> None:
    """The MIXTURE builder as its own command, called with key=value arguments."""
    cmd = [sys.executable, "-m", "lmmixup.data.build_mixture", f"out={mixture}"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"building MIXTURE into {mixture} failed")


def model_checks(samples_path: Path) -> Dict[str, "np.ndarray"]:
    """Per row of a model's samples file: the two checks R does not choose by
    (lmmixup/headroom/checks.py), `check_cos` (continuous alignment to the reference) and
    `check_keeps` (the reference answer's words kept); rows without a reference count 0."""
    # lazy: numpy, OmegaConf and the embedder, needed only once every stage has run
    import numpy as np
    from omegaconf import OmegaConf

    # lazy: the checks load torch and sentence-transformers (seconds), for the final table only
    from lmmixup.headroom.checks import alignment_cos, keeps_answer
    from lmmixup.rewards.embedder import EmbedderConfig, get_embedder

    rows = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    completions = [r["completion"] for r in rows]
    refs = [r.get("reference") for r in rows]
    # the embedder the stage's alignment reward used (its resolved config.yaml)
    stage_cfg = OmegaConf.load(samples_path.parent / "config.yaml")
    embedder = get_embedder(EmbedderConfig(**stage_cfg.reward.embedder))
    cos = alignment_cos(completions, refs, embedder.encode)
    keeps = [keeps_answer(c, ref, r.get("task")) for c, ref, r in zip(completions, refs, rows)]
    return {"check_cos": np.array([c or 0.0 for c in cos]),
            "check_keeps": np.array([k or 0.0 for k in keeps])}


def write_table(out: Path, systems_at: Dict[str, Path], rows: int, note: str = "") -> str:
    """Per-row scores of every model (system name -> its stage folder; the baselines are read
    from the SFT stage's file) -> table.md / table.json; returns the markdown. Models also get
    the two independent checks (model_checks)."""
    # lazy: numpy, needed only once every stage has run (a refused config never loads it)
    from lmmixup.eval.table import (SystemScores, format_markdown, load_scores, mean_cis,
                                    metric_columns, paired_delta_cis, table_json)

    systems = {}
    for name, folder in systems_at.items():
        samples = folder / f"eval_samples_step_{eval_step(folder)}.jsonl"
        scores = load_scores(samples, name)
        model = scores[0]
        systems[name] = SystemScores(name, model.lines, {**model.values, **model_checks(samples)})
        if name == "sft":  # the baselines do not depend on the model: one copy is enough
            systems.update({s.name: s for s in scores[1:]})
    trained_last = [s for s in ("raft", "grpo") if s in systems]
    order = [s for s in systems_at if s not in trained_last]
    order += [n for n in systems if n.startswith("baseline")] + trained_last
    means = {name: mean_cis(systems[name]) for name in order}
    pairs = [("grpo", "sft"), ("raft", "sft"), ("grpo", "raft"), ("grpo", "baseline: copy_first")]
    deltas = {f"{a} - {b.replace('baseline: ', '')}": paired_delta_cis(systems[a], systems[b])
              for a, b in pairs if a in systems and b in systems}
    columns = metric_columns(list(systems.values()))
    header = (f"Held-out MIXTURE test rows: {rows}, greedy decoding; total R = 0.5Q + 0.4A + 0.1F "
              f"+ w*P (P = -1 when no answer closes; w = reward.weights.no_answer). Checks R "
              f"does not choose by: check_cos, the answer's cosine to the reference; "
              f"check_keeps, the share of the reference answer's words kept.{note}")
    text = format_markdown(means, deltas, columns, header)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps({"rows": rows, **table_json(means, deltas)},
                                                     indent=2))
    return text


def stage_overrides(cfg: PipelineConfig) -> Dict[str, List[str]]:
    """stage -> the train.py overrides of its run (resume and run folder are added by run_train).
    Stages run in this order; with val_rows, grpo_test follows (test_overrides)."""
    out, mixture = Path(cfg.out), Path(cfg.mixture)
    common = [
        "data=mixture", "reward=paper", f"logger={cfg.logger}",
        f"data.rated_file={mixture / 'rated.jsonl'}", f"rollout.max_new_tokens={cfg.max_new_tokens}",
        *cfg.overrides,
    ]
    on_test = [f"data.eval_file={mixture / 'grpo_test.jsonl'}", f"eval_max_rows={cfg.eval_rows}"]
    sft_model = sft_model_dir(cfg)
    stages = ({"base": [*common, *on_test, f"model.name_or_path={cfg.model}", "stage=eval"]}
              if cfg.eval_base else {})
    fine_tune = [f"sft.examples_per_step={cfg.sft_examples_per_step}", "optim.warmup_frac=0.05",
                 "micro_batch_size=4"]
    if cfg.sft_model:  # reuse a trained SFT model: score it on the same rows, no training
        stages["sft"] = [*common, *on_test, f"model.name_or_path={sft_model}", "stage=eval"]
    else:
        stages["sft"] = [
            *common, *on_test, f"model.name_or_path={cfg.model}", "stage=sft",
            f"data.train_file={mixture / 'sft.jsonl'}", f"steps={cfg.sft_steps}",
            f"optim.lr={cfg.sft_lr}", *fine_tune]
    if cfg.raft_n:  # the SFT code path, on the rows lmmixup.raft kept (raft_data/rows.jsonl)
        stages["raft"] = [
            *common, *on_test, f"model.name_or_path={sft_model}", "stage=sft",
            f"data.train_file={out / 'raft_data' / 'rows.jsonl'}", f"steps={cfg.raft_steps}",
            f"optim.lr={cfg.raft_lr}", *fine_tune]
    if cfg.val_rows:  # choose the step on validation rows; the test rows score only the choice
        scored_on = [f"data.eval_file={out / 'split' / 'val.jsonl'}", f"eval_max_rows={cfg.val_rows}",
                     f"eval_every={cfg.val_every}", f"checkpoint.every={cfg.val_every}",
                     "checkpoint.save_hf=true",
                     f"checkpoint.keep_last={cfg.grpo_steps // cfg.val_every + 1}"]
    else:
        scored_on = on_test
    stages["grpo"] = [
        *common, *scored_on, f"model.name_or_path={sft_model}", "stage=grpo",
        f"data.train_file={grpo_train_file(cfg)}",
        "algo=paper", f"steps={cfg.grpo_steps}", f"prompts_per_step={cfg.grpo_prompts_per_step}",
        f"optim.lr={cfg.grpo_lr}", "micro_batch_size=8", *cfg.grpo_overrides]
    return stages


def sft_model_dir(cfg: PipelineConfig) -> Path:
    """The SFT model RAFT and GRPO start from: sft_model, or the SFT stage's own (absolute)."""
    folder = Path(cfg.sft_model) if cfg.sft_model else Path(cfg.out) / "sft" / "model"
    return folder.resolve()


def grpo_train_file(cfg: PipelineConfig) -> Path:
    """GRPO's (and RAFT's) training rows: grpo_train.jsonl less the validation split, if any."""
    if cfg.val_rows:
        return Path(cfg.out) / "split" / "fit.jsonl"
    return Path(cfg.mixture) / "grpo_train.jsonl"


def test_overrides(cfg: PipelineConfig, model_dir: Path) -> List[str]:
    """grpo_test: the chosen GRPO model scored on the test rows exactly as the SFT stage was."""
    return stage_overrides(dataclasses.replace(cfg, sft_model=str(model_dir)))["sft"]


def validation_curve(grpo_dir: Path) -> Dict[int, float]:
    """GRPO step -> validation R (eval_step_<s>.json, written at every val_every steps)."""
    curve = {}
    for path in grpo_dir.glob("eval_step_*.json"):
        curve[int(path.stem.split("_")[-1])] = float(json.loads(path.read_text())["eval/total_mean"])
    return dict(sorted(curve.items()))


def chosen_model(cfg: PipelineConfig, grpo_dir: Path) -> Tuple[int, Path]:
    """The GRPO step with the best validation R (ties: the earliest, the least drift from SFT)
    as a model folder: its checkpoint's weights (hf/) plus every file of the SFT model folder
    that hf/ lacks, the tokenizer and chat template training never changes
    (grpo/chosen_step_<s>, written atomically)."""
    curve = validation_curve(grpo_dir)
    best = max(curve, key=lambda s: (curve[s], -s))
    dst = grpo_dir / f"chosen_step_{best}"
    if not dst.exists():
        weights = grpo_dir / "checkpoints" / f"step_{best:06d}" / "hf"
        require(weights.is_dir(), "val_every",
                f"{weights} is missing: the checkpoint of the chosen step was not kept")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-chosen-", dir=grpo_dir))
        shutil.copytree(weights, tmp, dirs_exist_ok=True)
        for f in sft_model_dir(cfg).iterdir():  # tokenizer files and chat template: what hf/ lacks
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        os.rename(tmp, dst)
    return best, dst


def run_raft_sampling(cfg: PipelineConfig) -> None:
    """raft_data/: sample raft_n completions of raft_prompts training prompts from the SFT model,
    scored by the reward GRPO trains on (common and GRPO overrides), and keep each prompt's best
    where it clears the noise (lmmixup/raft)."""
    out = Path(cfg.out)
    cmd = [sys.executable, "-m", "lmmixup.raft", f"model.name_or_path={sft_model_dir(cfg)}",
           "data=mixture", "reward=paper", f"data.rated_file={Path(cfg.mixture) / 'rated.jsonl'}",
           f"data.train_file={grpo_train_file(cfg)}",
           f"rollout.max_new_tokens={cfg.max_new_tokens}", "algo=paper",
           *cfg.overrides, *cfg.grpo_overrides,
           f"prompts={cfg.raft_prompts}", f"n={cfg.raft_n}", f"out={out / 'raft_data'}"]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"RAFT's sampling into {out / 'raft_data'} failed")


def main(argv: Optional[List[str]] = None) -> None:
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    out = Path(cfg.out)
    t0 = time.time()
    if not (Path(cfg.mixture) / "manifest.json").exists():
        build_mixture(Path(cfg.mixture))
    if cfg.val_rows:  # rewritten identically on a re-run (seeded), so a resume trains on the same rows
        write_validation_split(Path(cfg.mixture) / "grpo_train.jsonl", out / "split",
                               cfg.val_rows, seed=0)
    stages = stage_overrides(cfg)
    for stage, overrides in stages.items():  # in order: base, sft, raft, grpo (from the SFT model)
        if stage == "raft" and not (out / "raft_data" / "rows.jsonl").exists():
            run_raft_sampling(cfg)
        if not finished(out / stage, overrides):
            run_train(out / stage, overrides)
    systems_at = {stage: out / stage for stage in stages}
    note = ""
    if cfg.val_rows:  # GRPO's row is the step validation chose, scored on test
        step, model_dir = chosen_model(cfg, out / "grpo")
        overrides = test_overrides(cfg, model_dir)
        if not finished(out / "grpo_test", overrides):
            run_train(out / "grpo_test", overrides)
        systems_at["grpo"] = out / "grpo_test"
        curve = ", ".join(f"{s}: {r:.3f}" for s, r in validation_curve(out / "grpo").items())
        note = (f" GRPO's row is step {step}, chosen by R on {cfg.val_rows} validation rows "
                f"carved from grpo_train (step: R = {curve}).")
    text = write_table(out, systems_at, cfg.eval_rows, note)
    print("\n" + text + f"\n(pipeline wall time {time.time() - t0:.0f} s; table in {out / 'table.md'})")


if __name__ == "__main__":
    report_errors(main)
