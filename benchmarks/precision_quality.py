"""Does bf16 training cost quality? The main job's SFT stage trained twice from the same start,
once per `precision.train`, and both models scored on the same held-out rows.

    python -m benchmarks.precision_quality --out runs/precision_quality [--steps 20 --rows 48]

Each run is `make train`'s SFT stage (lmmixup/pipeline.py `stage_overrides`: the same MIXTURE
rows, seed, learning rate and steps), with only `precision.train` changed. Both are evaluated
with `precision.rollout=fp32`, so the decode is the same code in the same precision and any
difference comes from the training. The table gives each model's mean rewards with 95%
bootstrap CIs and bf16 - fp32 with paired CIs over the rows (lmmixup/eval/table.py), and each
run's training wall time. A rerun resumes: a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train_seconds(run: Path) -> float:
    """The SFT run's summed step times (metrics.jsonl), evaluation excluded."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return round(sum(r.get("time/step_s", 0.0) for r in rows), 1)


def main(argv=None) -> int:
    from lmmixup.eval.table import format_markdown, load_scores, mean_cis, paired_delta_cis
    from lmmixup.pipeline import PipelineConfig, eval_step, run_train, stage_overrides

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/precision_quality")
    p.add_argument("--mixture", default="data/mixture")
    p.add_argument("--steps", type=int, default=20, help="SFT optimizer steps (the main job's: 20)")
    p.add_argument("--rows", type=int, default=48, help="held-out rows scored (the main job's: 48)")
    args = p.parse_args(argv)
    out = Path(args.out)
    cfg = PipelineConfig(out=str(out), mixture=args.mixture, sft_steps=args.steps,
                         eval_rows=args.rows, logger="none", eval_base=False)
    sft = stage_overrides(cfg)["sft"]
    systems, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        run = out / precision
        if eval_step(run) is None:
            run_train(run, [*sft, f"precision.train={precision}", "precision.rollout=fp32"])
        step = eval_step(run)
        systems[precision] = load_scores(run / f"eval_samples_step_{step}.jsonl", f"SFT, {precision}")[0]
        seconds[precision] = train_seconds(run)
    means = {s.name: mean_cis(s) for s in systems.values()}
    deltas = {"bf16 - fp32": paired_delta_cis(systems["bf16"], systems["fp32"])}
    columns = [c for c in ("quality", "alignment", "format", "total", "truncated")
               if c in systems["fp32"].values]
    text = format_markdown(means, deltas, columns,
                           f"SFT {args.steps} steps, {args.rows} held-out rows, decoded in fp32")
    text += (f"\nTraining time (summed step times): fp32 {seconds['fp32']} s, bf16 "
             f"{seconds['bf16']} s, ratio {seconds['fp32'] / max(seconds['bf16'], 1e-9):.2f}x\n")
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
