"""Distillation throughput: clusters per second, our rollout engine against HF `generate`.

    python -m benchmarks.distill [--pool sharegpt:120] [--batch 8] [--max-new-tokens 128]
                                 [--reps 3] [--model embedded:smollm2-135m-instruct] [--json]
    (also a section of `python -m lmmixup.bench`)

What is timed is distill.py's own generation call, `lmmixup.distill.generate.distill_batch`
(training's prompt layout, greedy, `lmmixup.sampling.policy.Policy.sample`), with `distill.engine` = static
(ours) or hf, over the SAME clusters in the same batches. The clusters are real: the first
pool rows of --pool, clustered by distill.py's capacity-limited k-means on bag-of-words hashing
embeddings (which clusters form does not matter for speed, and it needs no embedding model).
The two engines alternate batch by batch so that load from other processes hits both alike;
clusters/s = clusters / median over --reps of the summed batch times. Greedy decoding makes the
two engines' completions comparable: the table also says how many came out identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Dict, List, Optional


def real_clusters(pool: str, member_chars: int):
    """Distillation prompts (ClusterPrompt: task, members, chat messages) of the pool's
    clusters, in pool order, rendered as distill.py renders them."""
    from lmmixup.data.cluster import hash_embed
    from lmmixup.distill.cluster import PoolClusterConfig, cluster_by_source
    from lmmixup.distill.formats import PoolConfig, iter_pool, pair_text, parse_input, question_text
    from lmmixup.distill.generate import GenerateConfig, cluster_prompt
    from lmmixup.distill.task import member_task

    rows = [{"instruction": r.instruction, "input": r.input, "output": r.output, "source": r.source,
             "task": member_task(question_text(r.instruction, r.input), r.output)}
            for r in iter_pool(parse_input(pool), PoolConfig())]
    emb = hash_embed([pair_text(r) for r in rows])  # (n, 512)
    groups, _ = cluster_by_source([r["source"] for r in rows], emb, PoolClusterConfig(), seed=0)
    cfg = GenerateConfig(member_chars=member_chars)
    return [cluster_prompt([rows[i] for i in members], cfg) for _, members in groups]


def bench_distill(reps: int, table: List, pool: str = "sharegpt:120", batch: int = 8,
                  max_new_tokens: int = 128, model_name: str = "",
                  member_chars: int = 400) -> Dict:
    from lmmixup.distill.generate import GenerateConfig, distill_batch
    from lmmixup.models import ModelConfig, load_model, load_tokenizer
    from lmmixup.rollout import RolloutConfig
    from lmmixup.sampling.policy import Policy

    mcfg = ModelConfig(name_or_path=model_name) if model_name else ModelConfig()
    tok = load_tokenizer(mcfg)
    model = load_model(mcfg, tok).eval()
    policy = Policy.build(model, tok, "cpu", RolloutConfig())  # each attempt sets its engine
    prompts = real_clusters(pool, member_chars)
    batches = [prompts[s:s + batch] for s in range(0, len(prompts), batch)]
    cfgs = {e: GenerateConfig(engine=e, batch_size=batch, max_new_tokens=max_new_tokens,
                              member_chars=member_chars, max_prompt_tokens=4096)
            for e in ("static", "hf")}
    warm = GenerateConfig(engine="static", max_new_tokens=4, max_prompt_tokens=4096)
    for e in cfgs:  # warm-up: weight preparation, allocator, first-call overheads
        distill_batch(policy, batches[0][:2], dataclasses.replace(warm, engine=e))
    seconds = {e: [] for e in cfgs}
    texts = {e: [] for e in cfgs}
    tokens = {e: 0 for e in cfgs}
    for _ in range(reps):
        spent = {e: 0.0 for e in cfgs}
        for b in batches:
            for e, cfg in cfgs.items():  # alternate engines batch by batch
                t0 = time.perf_counter()
                gens = distill_batch(policy, b, cfg)
                spent[e] += time.perf_counter() - t0
                if len(texts[e]) < len(prompts):
                    texts[e] += [g.completion for g in gens]
                    tokens[e] += sum(g.tokens for g in gens)
        for e in cfgs:
            seconds[e].append(spent[e])
    rate = {e: len(prompts) / statistics.median(s) for e, s in seconds.items()}
    same = sum(a == b for a, b in zip(texts["static"], texts["hf"]))
    table += [
        ("distill", f"HF generate, {len(prompts)} clusters of {pool}, batch {batch}, "
                    f"<= {max_new_tokens} new tok", f"{rate['hf']:.3f} clusters/s",
         f"median of {reps}: {statistics.median(seconds['hf']):.1f} s"),
        ("distill", "static engine (ours)", f"{rate['static']:.3f} clusters/s",
         f"median of {reps}: {statistics.median(seconds['static']):.1f} s"),
        ("distill", "speed-up ours / HF", f"{rate['static'] / rate['hf']:.2f}x",
         f"goal >= 2x; identical greedy completions {same}/{len(prompts)}"),
    ]
    return {"distill_speedup_vs_hf": rate["static"] / rate["hf"],
            "distill_clusters_s_ours": rate["static"], "distill_clusters_s_hf": rate["hf"],
            "distill_clusters": len(prompts), "distill_identical_completions": same,
            "distill_tokens_ours": tokens["static"], "distill_tokens_hf": tokens["hf"]}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.distill",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--pool", default="sharegpt:120", help="pool spec, as distill.py input=")
    ap.add_argument("--batch", type=int, default=8, help="clusters per rollout call")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="completion budget")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    ap.add_argument("--model", default="", help="model.name_or_path (default: embedded SmolLM2)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    table: List = []
    result = bench_distill(args.reps, table, args.pool, args.batch, args.max_new_tokens, args.model)
    if not args.json:
        for row in table:
            print("  ".join(str(c) for c in row))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
