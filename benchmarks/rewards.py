"""Benchmark of the paper rewards on one rollout batch.

    python -m benchmarks.rewards [--runs 7] [--batch 64] [--group 8] [--library-rows 10000]
                                 [--judge] [--entry-out FILE]

Builds a synthetic rated library (lmmixup/rewards/synthetic.py), embeds it once (cached on
disk like any library), then scores a batch of `--batch` completions of 3-5 sentences
(B = batch/group prompts, each reference shared by its G completions) `--runs` times and
prints the median wall time: all three rewards through `compute_rewards`, and each alone,
with quality on its default backend (learned); then the quality reward on the paper's kNN
backend (`quality alone, knn backend`) beside it, so the two costs per batch read side by side.
The embedder's memo is cleared before every run, so each run pays for embedding as a fresh
rollout batch would. `--entry-out` writes a dated markdown entry for docs/LOG.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _answer(rng: random.Random) -> str:
    from lmmixup.rewards.synthetic import fluent_sentence

    return " ".join(fluent_sentence(rng) for _ in range(rng.randint(3, 5)))


def make_batch(n: int, group: int, seed: int = 0):
    from lmmixup.rewards import RewardBatch

    rng = random.Random(seed)
    refs = [_answer(rng) for _ in range(n // group)]
    completions = [f"<think>{_answer(rng)}</think>\n<answer>{_answer(rng)}</answer>"
                   for _ in range(n)]
    return RewardBatch(prompts=[""] * n, completions=completions,
                       references=[refs[i // group] for i in range(n)],
                       tasks=["para"] * n, completion_tokens=[0] * n)


def median_time(fn, runs: int, before=None):
    """Median (wall seconds, process CPU seconds) of `runs` calls. CPU time is reported too
    because this machine is shared: wall time alone mixes in other people's jobs."""
    wall, cpu = [], []
    for _ in range(runs):
        if before is not None:
            before()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def matmul_gflops(size: int = 512, reps: int = 40) -> float:
    """fp32 matmul throughput right now: a yardstick for how busy the (shared) machine is."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main(argv=None) -> None:
    from lmmixup.rewards import RewardConfig, build_rewards, compute_rewards
    from lmmixup.rewards.embedder import get_embedder
    from lmmixup.rewards.quality import QualityConfig, write_library
    from lmmixup.rewards.synthetic import synthetic_rated_rows

    p = argparse.ArgumentParser(prog="python -m benchmarks.rewards")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--library-rows", type=int, default=10_000)
    p.add_argument("--judge", action="store_true", help="also time the LLM-judge backend")
    p.add_argument("--entry-out", help="write a dated docs/LOG.md entry to this file")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lmmixup-bench-") as tmp:
        lib = Path(tmp) / "library.jsonl"  # same content every time: its embeddings get cached
        write_library(lib, synthetic_rated_rows(args.library_rows, seed=0))
        cfg = RewardConfig(weights={"alignment": 0.4, "quality": 0.5, "format": 0.1},
                           quality=QualityConfig(library=str(lib)))
        cfg.validate()
        t0 = time.perf_counter()
        fns = build_rewards(cfg)  # loads MiniLM, fits the learned quality model (or loads it)
        build_s = time.perf_counter() - t0
        knn_cfg = RewardConfig(weights={"quality": 1.0},
                               quality=QualityConfig(backend="knn", library=str(lib)))
        t0 = time.perf_counter()
        knn_quality = build_rewards(knn_cfg)["quality"]  # embeds the library (or cache), fits
        knn_build_s = time.perf_counter() - t0
    embedder = get_embedder(cfg.embedder)
    batch = make_batch(args.batch, args.group)
    G = args.group

    results = {
        "all three (compute_rewards)": median_time(
            lambda: compute_rewards(fns, cfg, batch, G), args.runs, embedder.clear_memo),
    }
    for name in ("quality", "alignment", "format"):
        results[name + " alone"] = median_time(lambda: fns[name](batch), args.runs,
                                               embedder.clear_memo)
    results["quality alone, knn backend"] = median_time(
        lambda: knn_quality(batch), args.runs, embedder.clear_memo)
    if args.judge:
        from lmmixup.rewards.judge import JudgeConfig, load_judge
        from lmmixup.rewards.answer import extract_answer

        judge = load_judge(JudgeConfig())
        answers = [extract_answer(c) for c in batch.completions]
        results["judge backend (E only)"] = median_time(lambda: judge.judge_scores(answers),
                                                        max(1, args.runs // 3))

    lines = [f"start-up (load MiniLM, fit or load the learned quality model): {build_s:.2f} s; "
             f"knn backend start-up (library embeddings, fit T/p): {knn_build_s:.2f} s",
             f"batch: {args.batch} completions (B={args.batch // G} x G={G}), "
             f"library {args.library_rows} rows, quality backend {cfg.quality.backend} "
             f"(knn k={knn_cfg.quality.k}), "
             f"torch threads {torch.get_num_threads()}, median of {args.runs} runs, "
             f"machine load average at the end {os.getloadavg()[0]:.1f}, fp32 matmul "
             f"{matmul_gflops():.0f} GFLOP/s (docs: ~317 on an idle machine)"]
    lines += [f"{name}: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU"
              for name, (wall, cpu) in results.items()]
    print("\n".join(lines))
    if args.entry_out:
        today = datetime.date.today().isoformat()
        flags = sys.argv[1:] if argv is None else list(argv)
        cmd = "python -m benchmarks.rewards " + " ".join(flags)
        entry = [f"\n## {today} — paper rewards benchmark (quality + alignment + format)",
                 f"- Command: `{cmd.strip()}`"] + [f"- {line}" for line in lines]
        Path(args.entry_out).write_text("\n".join(entry) + "\n")


if __name__ == "__main__":
    main()
