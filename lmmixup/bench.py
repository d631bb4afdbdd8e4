"""`python -m lmmixup.bench`: the benchmarks of benchmarks/ (outside the library), one entry point.

    python -m lmmixup.bench [--json] [--only rollout,logprob,roofline,step,distill] [--reps 3] [--steps 4]
                            [--rounds 2]

Prints a table, then one JSON line (always the last line; --json prints only that line) of
ratios; what each section measures: benchmarks/grpo.py. A new section is a function
`bench_x(reps, table) -> dict` in its own benchmarks/ module, added to SECTIONS and `runners`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

import torch

from lmmixup.kernel_choice import current_choice, describe_precision

# benchmarks/ is a package of the checkout, beside lmmixup/, and not installed with it (its
# benchmarks import TRL, and its name is too generic to claim in site-packages). `python -m`
# puts the working directory first on sys.path, so from the checkout's root (as `make bench`
# runs it) it imports like any package; anywhere else, say so instead of a bare traceback.
try:
    from benchmarks.distill import bench_distill as _bench_distill
    from benchmarks.grpo import (SECTIONS as GRPO_SECTIONS, bench_logprob, bench_rollout,
                                 bench_roofline, bench_step, child_logprob, child_step_ours,
                                 child_step_trl)
except ModuleNotFoundError as e:
    if e.name != "benchmarks":
        raise
    raise ModuleNotFoundError("python -m lmmixup.bench: run it from the checkout's root, where "
                              "benchmarks/ is (it is not part of the installed package)",
                              name="benchmarks") from None

SECTIONS = GRPO_SECTIONS + ("distill",)


def bench_distill(reps: int, table: List) -> Dict:
    """distill.py's generation, clusters/s of ours vs HF generate (benchmarks/distill.py)."""
    return _bench_distill(reps, table)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lmmixup.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per trainer (first = warm-up)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="child runs per step contender, alternating (benchmarks/grpo.py)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # internal: one measurement in a fresh process, JSON on the last line
        kind, _, variant = args.child.partition(":")
        if kind == "logprob":
            res = child_logprob(variant, args.reps)
        elif variant == "ours":
            res = child_step_ours(args.steps)
        else:  # trl-fp32 | trl-bf16
            res = child_step_trl(args.steps, bf16=variant == "trl-bf16")
        print(json.dumps(res))
        return

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    table: List = []
    results: Dict = {"rollout_speedup_vs_hf": None, "step_speedup_vs_trl": None,
                     "step_peak_rss_ratio_trl_over_ours": None, "logprob_peak_mem_reduction": None,
                     "train_fwd_bwd_frac_of_matmul_peak": None}
    runners = {"rollout": lambda: bench_rollout(args.reps, table),
               "logprob": lambda: bench_logprob(args.reps, table),
               "roofline": lambda: bench_roofline(args.reps, table),
               "step": lambda: bench_step(args.steps, table, args.rounds),
               "distill": lambda: bench_distill(args.reps, table)}
    for name in SECTIONS:
        if name in only:
            done = len(table)
            results.update(runners[name]())
            for row in table[done:]:  # progress, in case a later section fails
                print("  ".join(str(c) for c in row), file=sys.stderr, flush=True)
    results["threads"] = torch.get_num_threads()
    results["torch"] = torch.__version__
    kernels = current_choice()  # the CPU and the GEMM kernels chosen on it (lmmixup.kernel_choice)
    results["cpu_model"] = kernels.cpu_model
    results["kernels"] = {"decode_gemm": kernels.decode_gemm, "training_gemm": kernels.training_gemm}
    # what precision.*=auto picks here, and the probe's timings behind it (lmmixup/kernel_choice.py)
    results["precision"] = {"cpu_bf16_flags": kernels.bf16_flags,
                            "auto_train": kernels.train_precision,
                            "auto_rollout": kernels.rollout_precision,
                            "probe_ms": kernels.precision_ms, "why": describe_precision(kernels)}
    if not args.json:
        widths = [max(len(str(r[i])) for r in table) for i in range(4)] if table else [0] * 4
        for r in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
