"""The downstream experiment: build the sets, fine-tune the base model on each with train.py's
SFT code, score every fine-tuned model with lm-eval, and report CIs and paired deltas.

    <out>/sets/<set>.jsonl              the set as train.py SFT rows (prompt, target)
    <out>/train/<set>/                  a train.py stage=sft run folder: checkpoints/, metrics,
                                        adapter/ (LoRA) and model/ (merged, a save_pretrained
                                        folder usable as model.name_or_path)
    <out>/scores/<set>/<benchmark>.json per-example lm-eval scores
    <out>/results.{json,md}, scores.png   scores, paired deltas, power, and each set's cost
                                        (steps, seconds, target tokens)

Choices, and why:
  * Fine-tuning is a `train.py stage=sft` subprocess per set (as lmmixup.pipeline runs its
    stages): the one SFT code path (encoding, prompt masking, chunked loss, checkpoints,
    resume), LoRA included (`model.lora.*`). No second trainer.
  * Resume: a set whose model/ exists and whose recorded train.py arguments equal today's is
    skipped; an interrupted one continues from its checkpoint (`resume=auto`); one trained with
    other arguments is refused, naming them, rather than silently reused. A benchmark whose
    scores file exists with today's eval settings is skipped.
  * Every check (config, the distill folder, the benchmarks' packaged data) runs before the
    first training step, so a bad input costs seconds and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from lmmixup.data.jsonl import atomic_write_text
from lmmixup.device import resolve_device
from lmmixup.downstream.config import DownstreamConfig
from lmmixup.downstream.cost import training_cost
from lmmixup.downstream.report import write_report
from lmmixup.downstream.sets import build_sets, write_set
from lmmixup.errors import LmmixupError
from lmmixup.eval.harness import BenchmarkScores, check_benchmarks, evaluate_benchmark, limit_note
from lmmixup.models import ModelConfig, load_model, load_tokenizer, resolve_path
from lmmixup.sft import encode_rows

ROOT = Path(__file__).resolve().parent.parent.parent
TRAIN_ARGS = "downstream_train_args.json"


def flatten(prefix: str, node) -> List[str]:
    """A config dataclass as Hydra overrides: ModelConfig -> ['model.dtype=float32', ...]."""
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            out += flatten(key, value)
        elif isinstance(value, (list, tuple)):
            out.append(f"{key}=[{','.join(map(str, value))}]")
        elif isinstance(value, bool):
            out.append(f"{key}={str(value).lower()}")
        else:
            out.append(f"{key}={value}")
    return out


def set_steps(cfg: DownstreamConfig, rows: int) -> int:
    """Optimizer steps for a set of `rows` rows under the configured budget."""
    t = cfg.train
    steps = math.ceil(t.epochs * rows / t.examples_per_step) if t.budget == "epochs" else t.steps
    return min(steps, t.max_steps) if t.max_steps else steps


def train_args(cfg: DownstreamConfig, data: Path, steps: int) -> List[str]:
    t = cfg.train
    return ["stage=sft", f"data.train_file={data.resolve()}", f"steps={steps}",
            f"sft.examples_per_step={t.examples_per_step}", f"micro_batch_size={t.micro_batch_size}",
            f"sft.max_seq_len={t.max_seq_len}", f"optim.lr={t.lr}", f"optim.warmup_frac={t.warmup_frac}",
            f"logger={t.logger}", "logger.progress_bar=false", f"seed={cfg.seed}",
            f"device={cfg.device}", *flatten("model", cfg.model), *flatten("precision", cfg.precision)]


def train_set(cfg: DownstreamConfig, name: str, data: Path, steps: int, run_dir: Path) -> str:
    """Fine-tune on one set unless that exact run is finished; returns what happened."""
    args = train_args(cfg, data, steps)
    record = run_dir / TRAIN_ARGS
    if (run_dir / "model" / "config.json").exists() and record.exists():
        before = json.loads(record.read_text())
        if before == args:
            return "skipped (finished)"
        changed = sorted(set(before) ^ set(args))
        raise LmmixupError(f"out={cfg.out}: set {name!r} was trained with other arguments "
                           f"({', '.join(changed[:4])}); use another out= or delete {run_dir}")
    cmd = [sys.executable, str(ROOT / "train.py"), *args, "resume=auto", f"hydra.run.dir={run_dir}"]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise LmmixupError(f"fine-tuning set {name!r} failed; its log is {run_dir / 'train.log'}")
    if not (run_dir / "model" / "config.json").exists():  # stopped by SIGTERM/SIGINT: exit 0
        raise LmmixupError(f"fine-tuning set {name!r} stopped before its last step (checkpoint "
                           f"saved in {run_dir}); rerun the same command to resume")
    atomic_write_text(record, json.dumps(args, indent=1))
    return f"trained ({steps} steps)"


def eval_settings(cfg: DownstreamConfig) -> dict:
    e = cfg.eval
    return {"limit": e.limit, "batch_size": e.batch_size, "max_gen_toks": e.max_gen_toks,
            "seed": e.seed}


def score_set(cfg: DownstreamConfig, name: str, model_dir: Path, out: Path) -> Dict[str, BenchmarkScores]:
    """Every requested benchmark for one fine-tuned model; finished ones are read back."""
    settings = eval_settings(cfg)
    done, todo = {}, []
    for bench in cfg.benchmarks:
        path = out / f"{bench}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["settings"] == settings:
                done[bench] = BenchmarkScores.from_json(saved["scores"])
                print(f"{name}/{bench}: skipped (scored)", file=sys.stderr)
                continue
        todo.append(bench)
    if todo:
        mcfg = ModelConfig(name_or_path=str(model_dir), dtype=cfg.model.dtype)
        tokenizer = load_tokenizer(mcfg)
        device = resolve_device(cfg.device)
        model = load_model(mcfg, tokenizer).to(device).eval()
        model.config.use_cache = True  # generation (GSM8K, IFEval) wants the KV cache
        for bench in todo:
            t0 = time.time()
            scores = evaluate_benchmark(model, tokenizer, bench, cfg.eval)
            atomic_write_text(out / f"{bench}.json", json.dumps(
                {"settings": settings, "scores": scores.to_json()}) + "\n")
            print(f"{name}/{bench}: {scores.aggregate:.3f} on {len(scores.scores)} examples "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            done[bench] = scores
    return {b: done[b] for b in cfg.benchmarks}


def rows_within_length(cfg: DownstreamConfig, sets) -> Dict[str, int]:
    """Rows of each set that train.py's SFT keeps (prompt + target <= train.max_seq_len),
    counted with the same encoder and the base model's tokenizer."""
    tokenizer = load_tokenizer(cfg.model)
    counts = {}
    for name, ts in sets.items():
        examples, _ = encode_rows(tokenizer, ts.rows, cfg.train.max_seq_len, name)
        if not examples:
            raise LmmixupError(f"set {name!r}: every row is longer than "
                               f"train.max_seq_len={cfg.train.max_seq_len}")
        counts[name] = len(examples)
    return counts


def run(cfg: DownstreamConfig) -> Path:
    out = Path(cfg.out)
    check_benchmarks(cfg.benchmarks)
    sets = build_sets(Path(cfg.distilled), cfg.sets, cfg.high_threshold, cfg.seed)
    if cfg.model.name_or_path not in ("tiny",) and not cfg.model.name_or_path.startswith("embedded:"):
        resolve_path(cfg.model.name_or_path)  # a missing local folder fails now, not per set
    notes, steps = {}, {}
    trainable = rows_within_length(cfg, sets)
    for name, ts in sets.items():
        write_set(ts, out / "sets" / f"{name}.jsonl")
        # train.py skips rows over sft.max_seq_len; an epoch is a pass over the rest
        steps[name] = set_steps(cfg, trainable[name])
        notes[name + ":rows"] = (str(len(ts.rows)) if trainable[name] == len(ts.rows) else
                                 f"{len(ts.rows)} ({trainable[name]} fit train.max_seq_len)")
        capped = cfg.train.max_steps and steps[name] == cfg.train.max_steps and cfg.train.budget == "epochs"
        notes[name] = "; ".join(x for x in (ts.note, "steps capped by train.max_steps" if capped else "") if x)
    for name in sets:
        status = train_set(cfg, name, out / "sets" / f"{name}.jsonl", steps[name], out / "train" / name)
        print(f"{name}: {status}", file=sys.stderr, flush=True)
    costs = {name: training_cost(out / "train" / name / "metrics.jsonl") for name in sets}
    scores = {name: score_set(cfg, name, out / "train" / name / "model", out / "scores" / name)
              for name in sets}
    for bench in cfg.benchmarks:  # once per run, not once per set
        note = limit_note(bench, cfg.eval.limit, max(len(s[bench].scores) for s in scores.values()))
        if note:
            print(note, file=sys.stderr)
    write_report(out, scores, cfg.eval.n_boot, cfg.eval.seed, cfg.eval.limit, notes, costs,
                 cfg.train.budget)
    print((out / "results.md").read_text())
    return out
