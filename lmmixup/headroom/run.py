"""`python -m lmmixup.headroom`: sample n completions per held-out prompt, score them with the
training rewards, and report the headroom (lmmixup/headroom/__init__.py says what and why).

    python -m lmmixup.headroom model.name_or_path=M data.eval_file=F rows=64 n=8 [out=DIR]
        [any train.py override: experiment=..., reward=paper, reward.quality.mode=expected, ...]

The command line holds two kinds of key:
  * headroom's own (`HeadroomConfig` below: rows, n, out, prompts_per_call, n_boot);
  * every other key is train.py's, composed from conf/config.yaml as train.py composes it, so a
    GRPO run's own overrides (reward, rollout, precision, data) mean the same here and the
    headroom is measured on the reward and the sampler that run trains with.
Any problem is one `error:` line and exit code 2 (lmmixup/cli.py), before anything is written.

Writes, atomically, into `out`: headroom.json (every number), headroom.md (the table, also
printed) and samples.jsonl (each completion with its scores and checks, `best` marking the
sample R chose).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from hydra import compose, initialize_config_dir

from lmmixup.cli import parse_key_values, precheck_overrides, report_errors
from lmmixup.config import TrainConfig, register_configs, to_train_config
from lmmixup.data.jsonl import atomic_write_jsonl, atomic_write_text
from lmmixup.data.prompts import PromptRow, check_prompt_lengths, load_rows
from lmmixup.device import resolve_device
from lmmixup.errors import require
from lmmixup.headroom.checks import alignment_cos, keeps_answer
from lmmixup.headroom.measure import best_of_n
from lmmixup.headroom.report import TOTAL, markdown, summarize
from lmmixup.headroom.variants import versions
from lmmixup.models import load_model, load_tokenizer
from lmmixup.precision import NAMES, describe, run_precision
from lmmixup.rewards import build_rewards, compute_rewards
from lmmixup.rewards.batch import RewardBatch
from lmmixup.rewards.embedder import get_embedder
from lmmixup.rollout import RECORDS_LOGPROBS
from lmmixup.sampling.policy import Policy

ROOT = Path(__file__).resolve().parent.parent.parent
CONF = ROOT / "conf"  # train.py's config root: the same groups and the same schema


@dataclass
class HeadroomConfig:
    rows: int = 64
    """held-out prompts: the first `rows` rows of data.eval_file (fewer when it has fewer)"""
    n: int = 8
    """completions sampled per prompt at the rollout's temperature: the group"""
    out: str = ""
    """output folder; empty = runs/headroom/<date>_<time>"""
    prompts_per_call: int = 4
    """prompts sampled in one batch (times n sequences): the sampler's memory grows with it"""
    n_boot: int = 10_000
    """bootstrap resamples of every 95% CI"""

    def validate(self) -> None:
        require(self.rows >= 1, "rows", f"must be >= 1, got {self.rows}")
        require(self.n >= 2, "n", f"must be >= 2 (a best of n and a group's spread need two "
                                  f"samples), got {self.n}")
        require(self.prompts_per_call >= 1, "prompts_per_call", "must be >= 1")
        require(self.n_boot >= 100, "n_boot", f"must be >= 100, got {self.n_boot}")


def load_configs(argv: Sequence[str], own_cls=HeadroomConfig, needs: str = "data.eval_file",
                 what: str = "the held-out prompt rows") -> Tuple[TrainConfig, Any]:
    """The command line -> (train.py's config, the command's own `own_cls`); a problem is one
    `error:` line. `needs`: the data key holding `what`, the rows it samples (must be set)."""
    own_keys = {f.name for f in dataclasses.fields(own_cls)}
    own = [a for a in argv if a.partition("=")[0] in own_keys]
    overrides = [a for a in argv if a.partition("=")[0] not in own_keys]
    ocfg = parse_key_values(own_cls, own)
    precheck_overrides(overrides, CONF, "config", register_configs)  # exits with one line
    # Hydra's compose API, as lmmixup.pipeline: no Hydra run folder or log, only `out`
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_train_config(compose("config", overrides=overrides))
    require(bool(getattr(cfg.data, needs.split(".")[1])), needs,
            f"name {what} to sample (a JSONL file), e.g. data=mixture")
    return cfg, ocfg


def build_policy(cfg: TrainConfig, rows: List[PromptRow], source: str) -> Tuple[Policy, str]:
    """The model and sampler as train.py builds them (precision.rollout; auto is measured), after
    checking the rows fit data.max_prompt_tokens -> (policy, the precision described)."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the tiny random model's weights and the samples
    tokenizer = load_tokenizer(cfg.model)
    check_prompt_lengths(tokenizer, rows, cfg.data.max_prompt_tokens, source)
    model = load_model(cfg.model, tokenizer).to(device)
    prec = run_precision(cfg.precision, device, cfg.rollout.engine,
                         cfg.rollout.engine in RECORDS_LOGPROBS, cfg.algo.rollout_is,
                         next(model.parameters()).dtype)
    print(describe(cfg.precision, prec, device), flush=True)
    return Policy.build(model, tokenizer, device, cfg.rollout, dtype=prec.rollout), NAMES[prec.rollout]


def raw_reward(cfg: TrainConfig):
    """(reward config, reward functions) of R as GRPO's advantage sees it before any scaling."""
    # R is the raw mix sum_i w_i * r_i: group normalisation would rescale every group to mean 0,
    # and the trivial variants of one answer are not a group. With reward.normalize_per_group
    # false (every shipped preset) this is exactly the R that GRPO's advantage is built from.
    reward_cfg = dataclasses.replace(cfg.reward, normalize_per_group=False)
    return reward_cfg, build_rewards(reward_cfg)


def sample_groups(policy: Policy, rows: List[PromptRow], n: int, per_call: int,
                  max_prompt_tokens: int, source: str) -> RewardBatch:
    """n completions of every row at the job's rollout settings: N = len(rows) * n texts."""
    batches = []
    for start in range(0, len(rows), per_call):
        t0 = time.perf_counter()
        chunk = rows[start:start + per_call]
        batches.append(policy.generate(chunk, n, max_prompt_tokens=max_prompt_tokens,
                                       source=source).texts)
        print(f"sampled {start + len(chunk)}/{len(rows)} prompts x {n} "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return RewardBatch.concat(batches)


def as_table(values: List[Optional[float]], n: int) -> torch.Tensor:
    """(N,) per-sample values, None where a check does not apply -> (P, n), NaN there."""
    return torch.tensor([math.nan if v is None else v for v in values]).view(-1, n)  # (P, n)


def variant_batch(texts: RewardBatch, chosen: List[int]) -> Tuple[RewardBatch, int]:
    """Each chosen sample's versions (itself, then variants.VARIANTS), V consecutive rows per
    prompt, everything but the text as the sample had it -> (batch of P * V rows, V)."""
    per_prompt = [versions(texts.completions[i]) for i in chosen]  # P lists of V texts
    V = len(per_prompt[0])
    repeated = texts.select([i for i in chosen for _ in range(V)])  # (P * V,)
    return dataclasses.replace(repeated, completions=[v for vs in per_prompt for v in vs]), V


def score_groups(reward_fns, reward_cfg, texts: RewardBatch,
                 n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """N = P * n sampled texts -> (reward name -> (P, n) scores, R under TOTAL; best (P,), the
    index of each group's best by R; (P, V) R of each best answer and its trivial variants)."""
    result = compute_rewards(reward_fns, reward_cfg, texts, n)
    P = len(texts.completions) // n
    scores: Dict[str, torch.Tensor] = {TOTAL: result.total.view(P, n)}  # (P, n) each
    scores.update({name: v.view(P, n) for name, v in result.components.items()})
    best = best_of_n(scores[TOTAL])  # (P,)
    chosen = [p * n + int(b) for p, b in enumerate(best)]  # (P,) rows of `texts`
    vbatch, V = variant_batch(texts, chosen)
    versions_R = compute_rewards(reward_fns, reward_cfg, vbatch, V).total.view(P, V)  # (P, V)
    return scores, best, versions_R


def default_out() -> Path:
    return Path("runs") / "headroom" / time.strftime("%Y-%m-%d_%H-%M-%S")


def run(cfg: TrainConfig, hcfg: HeadroomConfig) -> Path:
    rows = load_rows(cfg.data.eval_file)[: hcfg.rows]  # a bad file fails before the model loads
    if len(rows) < hcfg.rows:
        print(f"{cfg.data.eval_file} has {len(rows)} rows: rows={hcfg.rows} measures all of them",
              file=sys.stderr)
    policy, precision = build_policy(cfg, rows, cfg.data.eval_file)
    reward_cfg, reward_fns = raw_reward(cfg)
    out = Path(hcfg.out) if hcfg.out else default_out()

    n, P = hcfg.n, len(rows)
    texts = sample_groups(policy, rows, n, hcfg.prompts_per_call, cfg.data.max_prompt_tokens,
                          cfg.data.eval_file)  # N = P * n
    scores, best, versions_R = score_groups(reward_fns, reward_cfg, texts, n)

    def embed(batch_texts):  # the alignment reward's embedder, loaded only if an answer exists
        return get_embedder(cfg.reward.embedder).encode(batch_texts)

    cos = alignment_cos(texts.completions, texts.references, embed)  # (N,)
    keeps = [keeps_answer(c, r, t) for c, r, t in
             zip(texts.completions, texts.references, texts.tasks)]  # (N,)
    checks = {"alignment_cos": as_table(cos, n), "keeps_answer": as_table(keeps, n)}
    summary = summarize(scores, checks, versions_R, hcfg.n_boot, cfg.seed)

    weights = " + ".join(f"{w}*{name}" for name, w in reward_cfg.weights.items())
    r = cfg.rollout
    header = (f"model `{cfg.model.name_or_path}`; {P} prompts of `{cfg.data.eval_file}` x n = {n} "
              f"samples at temperature {r.temperature} (top_p {r.top_p}, top_k {r.top_k}, "
              f"max_new_tokens {r.max_new_tokens}, {precision}); R = {weights}. "
              f"95% bootstrap CIs over prompts.")
    record = {"model": cfg.model.name_or_path, "eval_file": cfg.data.eval_file, "rows": P, "n": n,
              "seed": cfg.seed, "rollout": dataclasses.asdict(r),
              "rollout_precision": precision, "weights": dict(reward_cfg.weights),
              **summary}
    table = markdown(summary, header)
    atomic_write_jsonl(out / "samples.jsonl", sample_rows(rows, texts, scores, checks, best))
    atomic_write_text(out / "headroom.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "headroom.md", table)
    print(table)
    print(f"wrote {out / 'headroom.json'}, headroom.md and samples.jsonl", file=sys.stderr)
    return out


def sample_rows(rows: List[PromptRow], texts: RewardBatch, scores: Dict[str, torch.Tensor],
                checks: Dict[str, torch.Tensor], best: torch.Tensor) -> List[dict]:
    """samples.jsonl: one object per completion, in group order."""
    n = scores[TOTAL].shape[1]
    out = []
    for i, completion in enumerate(texts.completions):
        p, s = divmod(i, n)
        values = {name: round(v[p, s].item(), 6) for name, v in scores.items()}
        values.update({name: None if math.isnan(v[p, s].item()) else round(v[p, s].item(), 6)
                       for name, v in checks.items()})
        out.append({"line": rows[p].line, "sample": s, "best": s == int(best[p]),
                    "completion": completion, **values})
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    report_errors(lambda: run(*load_configs(args)))
