"""Rollout dumps: a step's whole rollout batch, one row per completion, on disk.

Legend: B prompts, G completions per prompt, N = B*G sequences, T completion tokens.

`<run>/rollouts/step_NNNNNN.parquet` (pyarrow), or `step_NNNNNN.jsonl` when pyarrow is not
installed; both written to a temporary file and renamed, so a kill never leaves half a dump and a
resumed run simply rewrites the steps it repeats. `read_dump` reads either back as a list of
row dicts. Columns (`dump_columns` builds the schema):

    step, group, member            the step, the group index b in [0, B), the completion in [0, G)
    prompt_id                      1-based line of the prompt in data.train_file
    prompt, completion, reference, task
    reward_<k>, reward_total       each raw component and the mixed total that fed the advantage
    group_mean, group_std          of the total in this completion's group (std unbiased, as the
                                   advantage uses)
    advantage, adv_<k>             A_i and its exact per-reward split (lmmixup/attribution.py)
    length, truncated, has_answer  tokens incl. EOS; no stop token; a non-empty <answer> block
    logprob_mean, logprob_min      of the sampled tokens under the policy that sampled them
    kl                             mean over tokens of the KL estimator (algo.kl_estimator) from
                                   that policy to the reference; null when beta = 0 (no reference)
    entropy_mean, ratio_min, ratio_max, clip_frac
                                   null for now: these live inside `grpo_update`'s forward passes,
                                   which return batch aggregates only (grpo/entropy, grpo/ratio_*,
                                   grpo/clip_frac_*). `TokenTensors` has the slots for them.
    with logger.dump_tokens=true:  token_ids, token_logprob, token_old_logprob, token_ref_logprob,
                                   token_entropy, token_ratio (lists over the real tokens; null
                                   where the tensor does not exist in this run)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from lmmixup.data.jsonl import atomic_open, atomic_write_text
from lmmixup.grpo import kl_penalty
from lmmixup.rewards.answer import extract_answer

try:  # Parquet when available; the JSONL fallback keeps the same rows
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - pyarrow ships with `datasets`, a dependency
    pa = pq = None


@dataclass
class TokenTensors:
    """Per-token tensors of one rollout batch, each (N, T) aligned with the completion mask;
    None where this run does not have it."""

    token_ids: torch.Tensor  # (N, T) long
    mask: torch.Tensor  # (N, T) float, 1 on real completion tokens (EOS included)
    logprobs: Optional[torch.Tensor] = None  # (N, T) log pi_sample(token), from the rollout engine
    old_logprobs: Optional[torch.Tensor] = None  # (N, T) log pi_old (mu > 1 or mini-batches)
    ref_logprobs: Optional[torch.Tensor] = None  # (N, T) log pi_ref (beta > 0)
    entropy: Optional[torch.Tensor] = None  # (N, T) not yet available (see the module docstring)
    ratio: Optional[torch.Tensor] = None  # (N, T) not yet available


@dataclass
class SequenceSummary:
    """Per-completion summaries of `TokenTensors`, each (N,) or None."""

    logprob_mean: Optional[torch.Tensor]
    logprob_min: Optional[torch.Tensor]
    kl: Optional[torch.Tensor]
    entropy_mean: Optional[torch.Tensor]
    ratio_min: Optional[torch.Tensor]
    ratio_max: Optional[torch.Tensor]
    clip_frac: Optional[torch.Tensor]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)


def summarise_tokens(tok: TokenTensors, kl_estimator: str, kl_clamp: float, eps_low: float,
                     eps_high: float) -> SequenceSummary:
    """(N, T) tensors -> (N,) per-completion summaries."""
    m = tok.mask  # (N, T)
    behaviour = tok.logprobs if tok.logprobs is not None else tok.old_logprobs  # (N, T) or None
    inf = torch.tensor(float("inf"))
    lp_mean = lp_min = kl = ent = r_min = r_max = clip = None
    if behaviour is not None:
        lp_mean = _masked_mean(behaviour, m)  # (N,)
        lp_min = torch.where(m > 0, behaviour, inf).amin(dim=1)  # (N,)
        if tok.ref_logprobs is not None:
            per_token = kl_penalty(behaviour, tok.ref_logprobs, kl_estimator, kl_clamp)  # (N, T)
            kl = _masked_mean(per_token, m)  # (N,)
    if tok.entropy is not None:
        ent = _masked_mean(tok.entropy, m)  # (N,)
    if tok.ratio is not None:
        r_min = torch.where(m > 0, tok.ratio, inf).amin(dim=1)  # (N,)
        r_max = torch.where(m > 0, tok.ratio, -inf).amax(dim=1)  # (N,)
        outside = ((tok.ratio < 1 - eps_low) | (tok.ratio > 1 + eps_high)).float()  # (N, T)
        clip = _masked_mean(outside, m)  # (N,)
    return SequenceSummary(lp_mean, lp_min, kl, ent, r_min, r_max, clip)


SUMMARY_COLUMNS = ("logprob_mean", "logprob_min", "kl", "entropy_mean", "ratio_min",
                   "ratio_max", "clip_frac")
TOKEN_COLUMNS = ("token_ids", "token_logprob", "token_old_logprob", "token_ref_logprob",
                 "token_entropy", "token_ratio")


def dump_columns(reward_names: Sequence[str], with_tokens: bool):
    """The dump's pyarrow schema (also the column order of the JSONL fallback)."""
    f64, i64 = pa.float64(), pa.int64()
    fields = [("step", i64), ("group", i64), ("member", i64), ("prompt_id", i64),
              ("prompt", pa.string()), ("completion", pa.string()), ("reference", pa.string()),
              ("task", pa.string())]
    fields += [(f"reward_{k}", f64) for k in reward_names]
    fields += [("reward_total", f64), ("group_mean", f64), ("group_std", f64), ("advantage", f64)]
    fields += [(f"adv_{k}", f64) for k in reward_names]
    fields += [("length", i64), ("truncated", pa.bool_()), ("has_answer", pa.bool_())]
    fields += [(c, f64) for c in SUMMARY_COLUMNS]
    if with_tokens:
        fields += [("token_ids", pa.list_(i64))]
        fields += [(c, pa.list_(f64)) for c in TOKEN_COLUMNS[1:]]
    return pa.schema(fields)


def build_rows(*, step: int, group_size: int, prompt_ids: Sequence[int], prompts: Sequence[str],
               completions: Sequence[str], references: Sequence[Optional[str]],
               tasks: Sequence[Optional[str]], components: Dict[str, torch.Tensor],
               total: torch.Tensor, advantages: torch.Tensor, terms: Dict[str, torch.Tensor],
               truncated: torch.Tensor, tokens: TokenTensors, summary: SequenceSummary,
               with_tokens: bool) -> List[Dict[str, Any]]:
    """One dict per completion (N of them); `prompt_ids` has one entry per group (B)."""
    grouped = total.view(-1, group_size)  # (B, G)
    g_mean = grouped.mean(dim=1).repeat_interleave(group_size)  # (N,)
    g_std = grouped.std(dim=1).repeat_interleave(group_size)  # (N,)
    lengths = tokens.mask.sum(dim=1).long()  # (N,)

    def col(t: Optional[torch.Tensor]) -> List[Optional[float]]:
        return [None] * len(completions) if t is None else [float(x) for x in t.tolist()]

    summaries = {c: col(getattr(summary, c)) for c in SUMMARY_COLUMNS}
    rows = []
    for n, text in enumerate(completions):
        row: Dict[str, Any] = {
            "step": step, "group": n // group_size, "member": n % group_size,
            "prompt_id": int(prompt_ids[n // group_size]), "prompt": prompts[n],
            "completion": text, "reference": references[n], "task": tasks[n],
        }
        row.update({f"reward_{k}": float(v[n]) for k, v in components.items()})
        row.update({"reward_total": float(total[n]), "group_mean": float(g_mean[n]),
                    "group_std": float(g_std[n]), "advantage": float(advantages[n])})
        row.update({f"adv_{k}": float(v[n]) for k, v in terms.items()})
        row.update({"length": int(lengths[n]), "truncated": bool(truncated[n]),
                    "has_answer": extract_answer(text) is not None})
        row.update({c: summaries[c][n] for c in SUMMARY_COLUMNS})
        if with_tokens:
            real = tokens.mask[n] > 0  # (T,)

            def seq(t: Optional[torch.Tensor], cast=float):
                return None if t is None else [cast(x) for x in t[n][real].tolist()]

            row.update({"token_ids": seq(tokens.token_ids, int),
                        "token_logprob": seq(tokens.logprobs),
                        "token_old_logprob": seq(tokens.old_logprobs),
                        "token_ref_logprob": seq(tokens.ref_logprobs),
                        "token_entropy": seq(tokens.entropy), "token_ratio": seq(tokens.ratio)})
        rows.append(row)
    return rows


def dump_path(run_dir: Path, step: int) -> Path:
    suffix = ".parquet" if pq is not None else ".jsonl"
    return Path(run_dir) / "rollouts" / f"step_{step:06d}{suffix}"


def write_dump(run_dir: Path, step: int, rows: List[Dict[str, Any]], reward_names: Sequence[str],
               with_tokens: bool) -> Path:
    """Write one step's rows atomically; returns the file written."""
    path = dump_path(run_dir, step)
    if pq is not None:
        table = pa.Table.from_pylist(rows, schema=dump_columns(reward_names, with_tokens))
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
    else:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_dump(path: Path) -> List[Dict[str, Any]]:
    """A dump file (Parquet or JSONL) -> its rows as dicts."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def list_dumps(run_dir: Path) -> Dict[int, Path]:
    """step -> dump file of a run folder (Parquet preferred when both exist)."""
    found: Dict[int, Path] = {}
    for p in sorted((Path(run_dir) / "rollouts").glob("step_*.*")):
        if p.suffix not in (".parquet", ".jsonl") or p.name.startswith("."):
            continue
        step = int(p.stem.split("_")[1])
        if step not in found or p.suffix == ".parquet":
            found[step] = p
    return dict(sorted(found.items()))


def dump_interval(dump_every: int, total_steps: int) -> int:
    """logger.dump_every resolved: -1 (auto) = every step for runs under 50 steps, else every
    10; 0 = never."""
    if dump_every == -1:
        return 1 if total_steps < 50 else 10
    return dump_every


def should_dump(step: int, total_steps: int, dump_every: int) -> bool:
    """Dump on every interval-th step, and always on the first and the last step (so every
    dumping run can be compared start to end)."""
    every = dump_interval(dump_every, total_steps)
    return every > 0 and (step % every == 0 or step in (1, total_steps))
