"""One model on ref_nll_alpaca: the mean NLL per byte with its 95% bootstrap CI, the smallest
effect a comparison at this n could detect before any pair exists, and the wall time.

    python -m benchmarks.ref_nll_base [--model embedded:smollm2-135m-instruct] [--limit 100]
                                      [--batch-size 4] [--out scores.json]
                                      [--against DOWNSTREAM_OUT ...]

The number a downstream run's `ref_nll_alpaca` column starts from (the base model, before any
fine-tuning), and the power figure lmmixup/downstream/report.py prints when no pair exists yet
(stats.unpaired_difference_half_width, about 1.96 sqrt(2) s / sqrt(n)). It shrinks like
1/sqrt(n), so the figure for all 805 examples is printed beside it as that extrapolation.

`--against` takes `python -m lmmixup.downstream` out= folders and prints, for each fine-tuned
set there, set - base with its paired 95% CI over the examples both scored: whether fine-tuning
on a set moved the model at all, and which way (negative = the set predicts the references
better than the base model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np
    import torch

    from lmmixup.data.jsonl import atomic_write_text
    from lmmixup.eval.harness import EvalConfig, evaluate_benchmark
    from lmmixup.eval.stats import bootstrap_mean_ci, unpaired_difference_half_width
    from lmmixup.models import ModelConfig, load_model, load_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--limit", type=int, default=100, help="the first N of the 805 examples")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="", help="write the per-example scores here (JSON)")
    p.add_argument("--against", action="append", default=[],
                   help="a downstream out= folder: print each set's paired delta against the base")
    args = p.parse_args(argv)
    runs = [Path(d) for d in args.against]
    for run in runs:  # a typo fails now, not after minutes of scoring
        if not (run / "scores").is_dir():
            p.error(f"--against {run}: no scores/ folder (a python -m lmmixup.downstream out=)")

    cfg = ModelConfig(name_or_path=args.model, dtype="float32")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer).eval()
    t0 = time.perf_counter()
    scores = evaluate_benchmark(model, tokenizer, "ref_nll_alpaca",
                                EvalConfig(limit=args.limit, batch_size=args.batch_size))
    seconds = time.perf_counter() - t0
    x = np.asarray(scores.scores)  # (n,) nats per byte
    ci = bootstrap_mean_ci(x)
    h = unpaired_difference_half_width(x)
    print(f"model {args.model}, ref_nll_alpaca, n = {ci.n}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"mean NLL per byte {ci} nats (= {ci.estimate / np.log(2):.3f} bits per byte); "
          f"sd {x.std():.3f}, min {x.min():.3f}, max {x.max():.3f}")
    print(f"smallest detectable effect before pairs (bootstrap estimate) at n = {ci.n}: {h:.4f}; "
          f"at n = 805 about {h * (ci.n / 805) ** 0.5:.4f}")
    print(f"lm-eval aggregate {scores.aggregate:.4f}; scored in {seconds:.1f} s "
          f"({seconds / ci.n:.2f} s per example)")
    if args.out:
        atomic_write_text(args.out, json.dumps(scores.to_json()) + "\n")
    for run in runs:
        for label, ci in deltas_against_base(scores, run):
            print(f"{label} - base: {ci.estimate:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}] "
                  f"over {ci.n} paired examples")
    return 0


def deltas_against_base(base, run):
    """[(run/set, Interval of set - base)] for every set of a downstream out= folder that
    scored ref_nll_alpaca, paired on doc ids (lmmixup/downstream/report.py: paired_delta)."""
    from lmmixup.downstream.report import paired_delta
    from lmmixup.eval.harness import BenchmarkScores

    out = []
    for path in sorted(run.glob("scores/*/ref_nll_alpaca.json")):
        fine_tuned = BenchmarkScores.from_json(json.loads(path.read_text())["scores"])
        ci = paired_delta(fine_tuned, base, n_boot=10_000, seed=0)
        if ci is not None:
            out.append((f"{run.name}/{path.parent.name}", ci))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
