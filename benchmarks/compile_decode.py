"""Does `torch.compile` (inductor) speed up the static engine's decode step on this machine?

    python -m benchmarks.compile_decode [--reps 3] [--max-new-tokens 128] [--json]

The rollout bench's shape (benchmarks/grpo.py): the embedded SmolLM2-135M, fp32, B=4 prompts x
G=4 completions x --max-new-tokens tokens, no stop ids (every row decodes every step),
`compact=False` so the decode step only ever sees the few static shapes of its KV buckets.
Variants, each with the decode GEMMs through oneDNN (prepacked weights, fused epilogues) and
through torch's default GEMM ("mkl"):
  eager      lmmixup.engine as shipped
  compiled   the same engine with `engine._decode_step` replaced by
             torch.compile(_decode_step, dynamic=False) (inductor, default mode)
For each compiled variant the first call's time (tracing and compiling every KV bucket) and the
number of graphs dynamo produced are printed; the timed calls come after it. Greedy decoding
(argmax) makes the variants comparable: the table says how many of the N sequences come out
token-identical to eager. Calls alternate between variants so that background load hits all
alike; times are medians of --reps calls. The last line is JSON.

Why a benchmark and not an engine option: the decoder's prepared weights are rebuilt on every
rollout call (the policy changes every optimizer step), so a compiled step must not recompile
per call; the run shows whether it does (graph count and the second call's time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Callable, Dict, List

import torch

from benchmarks.grpo import PROMPTS, _prompt_batch, _smollm2
import lmmixup.engine as engine
from lmmixup.kernel_choice import current_choice
from lmmixup.rollout import RolloutConfig

EAGER_STEP = engine._decode_step


def _with_gemm(kernel: str) -> Callable:
    """engine.current_choice, with the decode GEMM forced to `kernel` (onednn | mkl)."""
    choice = dataclasses.replace(current_choice(), decode_gemm=kernel)
    return lambda: choice


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compile_decode",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)

    model, tok = _smollm2()
    model.eval()
    ids, mask = _prompt_batch(tok)  # (B, P)
    g = 4
    cfg = RolloutConfig(max_new_tokens=args.max_new_tokens)
    n_tokens = len(PROMPTS) * g * args.max_new_tokens
    compiled_step = torch.compile(EAGER_STEP, dynamic=False)

    def run(kernel: str, compiled: bool):
        engine.current_choice = _with_gemm(kernel)
        engine._decode_step = compiled_step if compiled else EAGER_STEP
        try:
            t0 = time.perf_counter()
            out = engine.static_generate(model, ids, mask, cfg, g, [], tok.pad_token_id,
                                         greedy=True, compact=False)
            return time.perf_counter() - t0, out.completion_ids
        finally:
            engine._decode_step = EAGER_STEP
            engine.current_choice = current_choice

    variants = [(k, c) for k in ("onednn", "mkl") for c in (False, True)]
    first: Dict = {}
    graphs: Dict = {}
    failed: Dict = {}
    for kernel, compiled in list(variants):  # warm-up; the compiled variants compile here
        before = _graph_count()
        try:
            first[(kernel, compiled)] = run(kernel, compiled)
        except Exception as e:  # noqa: BLE001 -- a failed compile is a result, recorded below
            if not compiled:
                raise
            # e.g. inductor lowers mkldnn._linear_pointwise only for weights that are graph
            # constants (frozen), and ours are inputs, re-prepared every rollout call
            failed[kernel] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
            variants.remove((kernel, compiled))
            continue
        if compiled:
            graphs[kernel] = _graph_count() - before
            # the second call: a recompile per rollout call would show up here
            first[(kernel, "second")] = run(kernel, compiled)[0]
    times: Dict = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            # a variant compiled earlier stays in dynamo's cache (one graph per kernel choice,
            # the guards tell them apart), so alternating does not recompile
            times[v].append(run(*v)[0])
    eager_ids = {k: first[(k, False)][1] for k in ("onednn", "mkl")}

    table: List = []
    res: Dict = {"cpu_model": current_choice().cpu_model, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "shape": f"{len(PROMPTS)}x{g}x{args.max_new_tokens}"}
    for kernel, compiled in variants:
        med = statistics.median(times[(kernel, compiled)])
        name = f"{'compiled' if compiled else 'eager'} {kernel}"
        note = f"median of {args.reps}: {med:.2f} s"
        if compiled:
            same = int((first[(kernel, True)][1] == eager_ids[kernel]).all(dim=1).sum())
            note += (f"; first call {first[(kernel, True)][0]:.1f} s, second "
                     f"{first[(kernel, 'second')]:.2f} s, {graphs[kernel]} graph(s); "
                     f"{same}/{eager_ids[kernel].shape[0]} sequences identical to eager")
            res[f"compiled_{kernel}_first_call_s"] = first[(kernel, True)][0]
            res[f"compiled_{kernel}_identical_sequences"] = same
        table.append((name, f"{n_tokens / med:.1f} tok/s", note))
        res[f"tok_s_{'compiled' if compiled else 'eager'}_{kernel}"] = n_tokens / med
    for kernel, why in failed.items():
        table.append((f"compiled {kernel}", "failed", why))
        res[f"compiled_{kernel}_error"] = why
    for kernel in ("onednn", "mkl"):
        if kernel in failed:
            continue
        ratio = statistics.median(times[(kernel, False)]) / statistics.median(times[(kernel, True)])
        table.append((f"speed-up compiled / eager, {kernel}", f"{ratio:.2f}x", ""))
        res[f"compile_speedup_{kernel}"] = ratio
    best_eager = max(res["tok_s_eager_onednn"], res["tok_s_eager_mkl"])
    best_compiled = max(res.get("tok_s_compiled_onednn", 0.0), res.get("tok_s_compiled_mkl", 0.0))
    table.append(("speed-up best compiled / best eager", f"{best_compiled / best_eager:.2f}x",
                  f"eager kernel this machine chose: {current_choice().decode_gemm}"))
    res["compile_speedup_best"] = best_compiled / best_eager
    if not args.json:
        widths = [max(len(str(r[i])) for r in table) for i in range(3)]
        for r in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


if __name__ == "__main__":
    main()
