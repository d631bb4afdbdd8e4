"""Does `distill.py` deliver what the distiller can do? The product path against the evaluation
path on MIXTURE's held-out test clusters, and a distill run scored against known seeds.

    # 1. parity: the same clusters through train.py stage=eval and through distill.py
    python -m benchmarks.distill_parity parity --mixture data/mixture \\
        --model runs/pipeline/grpo/model --out runs/parity [--rows 48] [--max-new-tokens 256]
    # 2. a realistic pool: the test clusters' members flattened into one pool, seeds recorded
    python -m benchmarks.distill_parity pool --mixture data/mixture --pool runs/test_pool.jsonl
    python distill.py input=runs/test_pool.jsonl out=runs/dpool model.name_or_path=MODEL \\
        rate.quality.library=data/mixture/rated.jsonl mix.size=60 mix.allow_smaller=true
    # 3. score any distill run folder on that pool (today's code or an older one)
    python -m benchmarks.distill_parity score --mixture data/mixture --pool runs/test_pool.jsonl \\
        --run runs/dpool [--json]
    # 4. a free-text pool with no seeds (sharegpt:N): shape, truncation, echo, kept
    python -m benchmarks.distill_parity freetext --run runs/sg2000

parity. The first --rows rows of grpo_test.jsonl are scored twice with the same model, greedy:
  * evaluation path: `train.py stage=eval` with the pipeline's reward settings (reward=paper,
    the mixture's rated library), which renders each row's own prompt;
  * product path: the rows' members flattened into a pool whose `source` is the row (distill.py
    clusters per source, so each row's members form its cluster again), then `distill.py` with
    rate.high_threshold=5 (every sample counts as low quality and is distilled),
    distill.retries=0 (the eval decodes each row once; retries only add to the product path),
    distill.member_chars large enough to cut nothing, and distill.max_new_tokens equal to the
    eval's budget. Its completions are scored by the same rewards against the row's reference.
  The table gives both paths' means and the paired difference (product - eval, bootstrap 95%
  CI over rows) for R and each reward, and how many rendered prompts were identical.

score. Each cluster of the run is matched to the seed most of its members come from (purity =
that share), and its answer block is checked by one stated rule, `fully_repaired`:
  * alignment: cosine(answer block, the seed's reference) >= 0.8 (the alignment reward's bar);
  * the answer kept: the reference's answer (its letter, True/False, category, or content words)
    is in the pair's answer;
  * clean: no filler phrase of lmmixup.data.degrade.FILLERS, no "...", no word that is neither an
    English word (the embedder's vocabulary) nor in the reference (a misspelling left in);
  * not degenerate (lmmixup.distill.degenerate).
Reported: parse rate (the run's own `ok`), the in-shape rate (an answer block in its task's
shape with both fields, degenerate or not: the issue's "parsed"), echo/notes share of the parsed answers (by the
degenerate checks, whatever the run's code called them), purity, fully repaired among parsed
and among kept pairs, with 95% CIs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


def test_rows(mixture: Path, rows: Optional[int]) -> List[Dict]:
    from lmmixup.data.jsonl import iter_jsonl

    out = [r for _, r in iter_jsonl(mixture / "grpo_test.jsonl")]
    return out[:rows] if rows else out


def flatten(rows: List[Dict], per_row_source: bool) -> List[Dict]:
    """Test rows -> pool rows, one per member: {instruction, output, source, seed_id, row}.
    per_row_source: each row its own source (distill.py rebuilds the row's cluster)."""
    pool = []
    for i, r in enumerate(rows):
        for m in r["members"]:
            pool.append({"instruction": m["question"], "input": "", "output": m["answer"],
                         "source": f"row{i:04d}" if per_row_source else "mixture_test",
                         "seed_id": m["seed_id"], "row": i})
    return pool


def write_jsonl(path: Path, rows: List[Dict]) -> None:
    from lmmixup.data.jsonl import atomic_write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, rows)


# ----------------------------------------------------------------------------- the rule

def fully_repaired(answer: str, reference: str, task: str, cosine: float) -> bool:
    """The stated rule of the module docstring."""
    from lmmixup.data.content import content_words, tokens
    from lmmixup.data.degrade import FILLERS
    from lmmixup.data.notes import english_words
    from lmmixup.data.schema import split_pair
    from lmmixup.distill.degenerate import degenerate_reason

    if not answer or cosine < 0.8:
        return False
    ref_q, ref_a = split_pair(task, reference)
    got_q, got_a = split_pair(task, answer)
    if not got_a:
        return False
    if task in ("mcq", "tfq"):
        kept = got_a.strip(". ") == ref_a.strip(". ")
    else:
        want = set(content_words(ref_a)) or set(tokens(ref_a))
        kept = want <= set(tokens(got_a))
    low = " ".join(tokens(answer))
    noisy = "..." in answer or "\u2026" in answer or any(
        f" {' '.join(tokens(f))} " in f" {low} " for f in FILLERS if len(tokens(f)) >= 2)
    ref_words = set(tokens(reference))
    known = english_words()
    typo = any(w.isalpha() and len(w) >= 4 and w not in known and w not in ref_words
               for w in tokens(answer))
    return kept and not noisy and not typo and not degenerate_reason(answer, got_q, got_a, [])


def mean_ci(values: List[float]) -> str:
    from lmmixup.eval.stats import bootstrap_mean_ci

    return str(bootstrap_mean_ci(values)) if values else "n/a"


def score_run(run: Path, pool_file: Path, mixture: Path) -> Dict:
    """A distill run folder on a flattened test pool -> the module docstring's counts."""
    from lmmixup.data.jsonl import iter_jsonl
    from lmmixup.distill.degenerate import DEGENERATE_REASONS, degenerate_reason
    from lmmixup.distill.formats import sample_id
    from lmmixup.rewards.answer import extract_answer
    from lmmixup.rewards.embedder import EmbedderConfig, get_embedder

    rows = test_rows(mixture, None)
    seed_ref = {r["seed_id"]: (r["reference"], r["task"]) for r in rows}
    seed_of = {}
    for _, p in iter_jsonl(pool_file):
        seed_of[sample_id(p["instruction"], p["input"], p["output"])] = p["seed_id"]
    rerated = {r["cluster_id"]: r for _, r in iter_jsonl(run / "rerated.jsonl")} \
        if (run / "rerated.jsonl").is_file() else {}
    gen = [r for _, r in iter_jsonl(run / "generated.jsonl")]
    embedder = get_embedder(EmbedderConfig())
    items = []
    for g in gen:
        seeds = Counter(seed_of.get(m, "?") for m in g["member_ids"])
        seed, top = seeds.most_common(1)[0]
        answer = extract_answer(g["completion"]) or ""
        ref, task = seed_ref.get(seed, ("", "para"))
        rr = rerated.get(g["cluster_id"], {})
        items.append({"purity": top / len(g["member_ids"]), "ok": bool(g["ok"]),
                      "in_shape": bool(g["ok"]) or g["reason"] in DEGENERATE_REASONS,
                      "kept": bool(rr.get("kept", False)), "score": rr.get("score"),
                      "best_member": rr.get("best_member_score"),
                      "defects": rr.get("defects") or [], "attempts": g.get("attempts", 1),
                      "answer": answer, "ref": ref, "task": task,
                      "echo": degenerate_reason(answer, "", "", []) in ("template_echo", "notes_in_answer")
                      if answer else False})
    texts = [i["answer"] or " " for i in items]
    refs = [i["ref"] or " " for i in items]
    a, b = embedder.encode_many(texts).float(), embedder.encode_many(refs).float()  # (n, D) unit
    cos = (a * b).sum(dim=1).tolist()
    for i, c in zip(items, cos):
        i["repaired"] = fully_repaired(i["answer"], i["ref"], i["task"], c) if i["ref"] else False
    parsed = [i for i in items if i["ok"]]
    kept = [i for i in items if i["kept"]]
    return {
        "run": str(run), "clusters": len(items),
        "parse_rate": mean_ci([float(i["ok"]) for i in items]), "parsed": len(parsed),
        "in_shape_rate": mean_ci([float(i["in_shape"]) for i in items]),
        "echo_or_notes_of_parsed": mean_ci([float(i["echo"]) for i in parsed]),
        "echo_or_notes_parsed_n": sum(i["echo"] for i in parsed),
        "purity": mean_ci([i["purity"] for i in items]),
        "single_seed_clusters": sum(i["purity"] == 1.0 for i in items),
        "repaired_of_clusters": mean_ci([float(i["ok"] and i["repaired"]) for i in items]),
        "repaired_parsed_n": sum(i["repaired"] for i in parsed),
        "kept": len(kept), "repaired_kept_n": sum(i["repaired"] for i in kept),
        "repaired_of_kept": mean_ci([float(i["repaired"]) for i in kept]),
        "passed_on_retry": sum(i["ok"] and i["attempts"] > 1 for i in items),
        "gate": gate_table(parsed),
        "_items": items,
    }


def freetext_rows(run: Path) -> List[Dict]:
    """The run's generated rows: generated.jsonl, or a stopped run's finished shards (the
    shortest prompts come first)."""
    from lmmixup.data.jsonl import iter_jsonl

    files = ([run / "generated.jsonl"] if (run / "generated.jsonl").is_file()
             else sorted((run / ".work" / "generate").glob("shard_*.jsonl")))
    return [g for f in files for _, g in iter_jsonl(f)]


def score_freetext(run: Path, only: Optional[set] = None) -> Dict:
    """A distill run on a pool with no known seeds (ShareGPT): per cluster, the attempt the run
    kept. in_shape: the task's shape with both fields, degenerate or not; accepted: the run's
    own `ok`; echo: today's degenerate checks (lmmixup.distill.degenerate) on the answer block,
    whatever code wrote the run, so an older run is counted by today's rules. only: count just
    these cluster ids (two runs over the same clusters, one of them stopped early)."""
    from lmmixup.data.jsonl import iter_jsonl
    from lmmixup.distill.degenerate import DEGENERATE_REASONS, degenerate_reason
    from lmmixup.rewards.answer import extract_answer

    rerated = {r["cluster_id"]: r for _, r in iter_jsonl(run / "rerated.jsonl")} \
        if (run / "rerated.jsonl").is_file() else {}
    partial = not (run / "generated.jsonl").is_file()
    items = []
    for g in freetext_rows(run):
        if only is not None and g["cluster_id"] not in only:
            continue
        answer = extract_answer(g["completion"]) or ""
        reason = degenerate_reason(answer, g.get("instruction") or "", g.get("output") or "", [])
        items.append({"ok": bool(g["ok"]), "truncated": g["reason"] == "truncated",
                      "in_shape": bool(g["ok"]) or g["reason"] in DEGENERATE_REASONS,
                      "echo": reason in ("template_echo", "notes_in_answer"),
                      "kept": bool(rerated.get(g["cluster_id"], {}).get("kept", False)),
                      "reason": g["reason"] or "", "attempts": g.get("attempts", 1)})
    shaped = [i for i in items if i["in_shape"]]
    accepted = [i for i in items if i["ok"]]
    kept = [i for i in items if i["kept"]]
    return {
        "run": str(run), "partial": partial, "clusters": len(items),
        "truncated_rate": mean_ci([float(i["truncated"]) for i in items]),
        "truncated_n": sum(i["truncated"] for i in items),
        "in_shape_rate": mean_ci([float(i["in_shape"]) for i in items]), "in_shape_n": len(shaped),
        "accepted_rate": mean_ci([float(i["ok"]) for i in items]), "accepted_n": len(accepted),
        "echo_of_in_shape": mean_ci([float(i["echo"]) for i in shaped]),
        "echo_in_shape_n": sum(i["echo"] for i in shaped),
        "echo_of_accepted": mean_ci([float(i["echo"]) for i in accepted]),
        "echo_accepted_n": sum(i["echo"] for i in accepted),
        "kept": len(kept), "echo_kept_n": sum(i["echo"] for i in kept),
        "failures": dict(Counter(i["reason"] for i in items if not i["ok"]).most_common()),
        "all_attempts_used": sum(i["attempts"] == max(j["attempts"] for j in items) for i in items),
    }


def gate_table(parsed: List[Dict]) -> List[Dict]:
    """Precision and recall of the keep gate against `fully_repaired`, over the parsed pairs:
    kept = score >= keep and (score - best member > min_gain) and (no surface defect, when
    defects is True); min_gain None = no relative gate."""
    rows = []
    scored = [i for i in parsed if i["score"] is not None]
    good = sum(i["repaired"] for i in scored)
    for defects in (False, True):
        for keep in (2.5, 3.0, 3.5, 4.0):
            for gain in (None, 0.0, 0.25):
                kept = [i for i in scored if i["score"] >= keep and (
                    gain is None or i["best_member"] is None or i["score"] - i["best_member"] > gain)
                    and not (defects and i["defects"])]
                hit = sum(i["repaired"] for i in kept)
                rows.append({"reject_defects": defects, "keep_threshold": keep, "min_gain": gain,
                             "kept": len(kept), "repaired_kept": hit,
                             "precision": round(hit / len(kept), 3) if kept else None,
                             "recall": round(hit / good, 3) if good else None})
    return rows


# ----------------------------------------------------------------------------- parity

def eval_overrides(mixture: Path, rows: int, max_new_tokens: int) -> List[str]:
    """The pipeline's stage=eval reward settings (lmmixup/pipeline.py stage_overrides)."""
    return ["data=mixture", "reward=paper", f"data.eval_file={mixture / 'grpo_test.jsonl'}",
            f"data.rated_file={mixture / 'rated.jsonl'}", f"eval_max_rows={rows}",
            f"rollout.max_new_tokens={max_new_tokens}"]


def reward_scorer(mixture: Path, rows: int, max_new_tokens: int):
    """The eval run's reward functions and config, composed in process."""
    from hydra import compose, initialize_config_dir

    from lmmixup.config import register_configs, to_train_config
    from lmmixup.rewards import build_rewards

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = to_train_config(compose("config", overrides=eval_overrides(mixture, rows, max_new_tokens)))
    return build_rewards(cfg.reward), cfg.reward


def run_parity(args) -> Dict:
    import dataclasses

    from lmmixup.data.jsonl import iter_jsonl
    from lmmixup.eval.stats import paired_bootstrap_ci
    from lmmixup.rewards.registry import RewardBatch, compute_rewards

    out, mixture = Path(args.out), Path(args.mixture)
    rows = test_rows(mixture, args.rows)
    py = sys.executable
    eval_dir = out / "eval"
    if not (eval_dir / "eval_samples_step_0.jsonl").is_file():
        subprocess.run([py, str(ROOT / "train.py"), *eval_overrides(mixture, len(rows), args.max_new_tokens),
                        f"model.name_or_path={args.model}", "stage=eval", "logger=none",
                        f"hydra.run.dir={eval_dir}", "logger.progress_bar=false"], check=True, cwd=ROOT)
    evals = [r for _, r in iter_jsonl(eval_dir / "eval_samples_step_0.jsonl")]
    pool_file = out / "pool.jsonl"
    write_jsonl(pool_file, flatten(rows, per_row_source=True))
    dist_dir = out / "distill"
    proc = subprocess.run([py, str(ROOT / "distill.py"), f"input={pool_file}", f"out={dist_dir}",
                           f"model.name_or_path={args.model}", f"rate.quality.library={mixture / 'rated.jsonl'}",
                           "rate.high_threshold=5.0", "distill.retries=0", "distill.member_chars=100000",
                           "distill.max_prompt_tokens=4096", f"distill.max_new_tokens={args.max_new_tokens}",
                           "mix.size=1", "mix.distilled_fraction=1", "progress=false",
                           *args.distill_overrides], cwd=ROOT, capture_output=True, text=True)
    # Parity reads generated.jsonl. With every sample low (high_threshold=5) there are no
    # originals, so the mix stage may stop for lack of rows; a stage before it may not.
    from lmmixup.distill.state import RunState

    if not RunState(dist_dir).done("generate"):
        raise SystemExit(f"distill.py failed before its generate stage finished:\n{proc.stderr[-3000:]}")
    gen = {r["source"]: r for _, r in iter_jsonl(dist_dir / "generated.jsonl")}
    reward_fns, reward_cfg = reward_scorer(mixture, len(rows), args.max_new_tokens)
    reward_cfg = dataclasses.replace(reward_cfg, normalize_per_group=False)
    from lmmixup.data.layout import prompt_messages

    product, same_prompt, same_task = [], 0, 0
    for i, r in enumerate(rows):
        g = gen.get(f"row{i:04d}")
        text = g["completion"] if g else ""
        product.append((text, bool(g and g["truncated"])))
        if g:
            same_task += g["task"] == r["task"]
            members = [(m["question"], m["answer"]) for m in r["members"]]
            same_prompt += prompt_messages(members, g["task"]) == r["prompt"]
    batch = RewardBatch(prompts=[""] * len(rows), completions=[t for t, _ in product],
                        references=[r["reference"] for r in rows], tasks=[r["task"] for r in rows],
                        completion_tokens=[0] * len(rows), truncated=[tr for _, tr in product])
    result = compute_rewards(reward_fns, reward_cfg, batch, 1)
    names = list(result.components) + ["total"]
    prod = {k: [float(v) for v in result.components[k]] for k in result.components}
    prod["total"] = [float(v) for v in result.total]
    table = {}
    for k in names:
        ev = [float(e[k]) for e in evals]
        table[k] = {"eval": mean_ci(ev), "product": mean_ci(prod[k]),
                    "product_minus_eval": str(paired_bootstrap_ci(prod[k], ev))}
    return {"rows": len(rows), "same_prompt": same_prompt, "same_task": same_task,
            "generated": len(gen), "rewards": table}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill_parity", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("parity")
    a.add_argument("--mixture", required=True)
    a.add_argument("--model", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--rows", type=int, default=48)
    a.add_argument("--max-new-tokens", type=int, default=256)
    a.add_argument("distill_overrides", nargs="*", help="extra distill.py key=value overrides")
    b = sub.add_parser("pool")
    b.add_argument("--mixture", required=True)
    b.add_argument("--pool", required=True)
    c = sub.add_parser("score")
    c.add_argument("--mixture", required=True)
    c.add_argument("--pool", required=True)
    c.add_argument("--run", required=True, action="append")
    d = sub.add_parser("freetext")
    d.add_argument("--run", required=True, action="append")
    d.add_argument("--same-clusters-as", help="count only the clusters this (partial) run generated")
    args = p.parse_args(argv)
    if args.cmd == "freetext":
        only = ({g["cluster_id"] for g in freetext_rows(Path(args.same_clusters_as))}
                if args.same_clusters_as else None)
        for run in args.run:
            print(json.dumps(score_freetext(Path(run), only), indent=1))
        return 0
    if args.cmd == "pool":
        rows = flatten(test_rows(Path(args.mixture), None), per_row_source=False)
        write_jsonl(Path(args.pool), rows)
        print(f"{args.pool}: {len(rows)} samples from {len(set(r['row'] for r in rows))} clusters")
        return 0
    if args.cmd == "parity":
        print(json.dumps(run_parity(args), indent=1))
        return 0
    for run in args.run:
        res = score_run(Path(run), Path(args.pool), Path(args.mixture))
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
