"""The terminal report, with rich: config in brief, curves as sparklines, attribution,
reward-hacking warnings, and the K groups with the widest advantage spread at one step."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from lmmixup.hacking import HackingConfig, replay
from lmmixup.inspect.load import RunData

_BARS = "▁▂▃▄▅▆▇█"

CURVES = [("grpo/kl", "KL"), ("grpo/entropy", "entropy"), ("grpo/clip_frac_low", "clip low"),
          ("grpo/clip_frac_high", "clip high"), ("grpo/ratio_max", "ratio max"),
          ("rollout/completion_len_mean", "length"), ("rollout/frac_truncated", "truncated"),
          ("grpo/frac_zero_std_groups", "flat groups"), ("time/step_s", "step s"),
          ("time/dump_s", "dump s")]


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Values -> a string of block characters (resampled to at most `width` points)."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[int(i * len(values) / width)] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return _BARS[3] * len(values)
    return "".join(_BARS[int((v - lo) / (hi - lo) * (len(_BARS) - 1))] for v in values)


def _get(config: Dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "-"
        node = node[part]
    return node


def config_table(run: RunData) -> Table:
    t = Table(title=f"run {run.path}", show_header=False, title_justify="left")
    for key in ("model.name_or_path", "steps", "prompts_per_step", "algo.group_size", "algo.loss",
                "algo.beta", "algo.adv_scale", "algo.ratio_level", "algo.eps_low",
                "algo.eps_high", "optim.lr", "rollout.max_new_tokens", "rollout.temperature",
                "reward.weights", "reward.normalize_per_group", "data.train_file"):
        t.add_row(key, str(_get(run.config, key)))
    return t


def _curve_row(t: Table, run: RunData, key: str, label: str) -> None:
    values = [v for _, v in run.series(key)]
    if values:
        t.add_row(label, f"{values[0]:.4g}", f"{values[-1]:.4g}", f"{min(values):.4g}",
                  f"{max(values):.4g}", sparkline(values))


def curves_table(run: RunData) -> Table:
    t = Table(title=f"over {len(run.metrics)} steps", title_justify="left")
    for col in ("metric", "first", "last", "min", "max", "trend"):
        t.add_column(col)
    _curve_row(t, run, "reward/total_mean", "reward total")
    for name in run.reward_names():
        _curve_row(t, run, f"reward/{name}_mean", f"reward {name}")
    for key, label in CURVES:
        _curve_row(t, run, key, label)
    for e in run.evals:
        t.add_row(f"held-out @ {e['step']}", "", f"{e['eval/total_mean']:.4g}", "", "",
                  " ".join(f"{k[5:-5]}={v:.3f}" for k, v in e.items()
                           if k.startswith("eval/") and k.endswith("_mean") and k != "eval/total_mean"))
    return t


def attribution_summary(run: RunData) -> Dict[str, Dict[str, float]]:
    """reward -> {metric: mean over the steps that logged it}."""
    out: Dict[str, Dict[str, float]] = {}
    for name in run.reward_names():
        for metric, key in (("abs_share", f"attr/{name}_abs_share"),
                            ("sign_agree", f"attr/{name}_sign_agree"),
                            ("corr", f"attr/{name}_corr"),
                            ("decides_group", f"attr/frac_groups_decided_by_{name}")):
            values = [v for _, v in run.series(key)]
            if values:
                out.setdefault(name, {})[metric] = statistics.fmean(values)
    return out


def attribution_table(run: RunData) -> Table:
    t = Table(title="advantage attribution (mean over steps)", title_justify="left")
    for col in ("reward", "weight", "share of |A|", "sign agrees", "corr with A",
                "decides group alone", "share trend"):
        t.add_column(col)
    weights = _get(run.config, "reward.weights")
    for name, m in attribution_summary(run).items():
        t.add_row(name, str(weights.get(name, "-")) if isinstance(weights, dict) else "-",
                  *(f"{m[k]:.3f}" if k in m else "-" for k in
                    ("abs_share", "sign_agree", "corr", "decides_group")),
                  sparkline([v for _, v in run.series(f"attr/{name}_abs_share")]))
    return t


def hacking_firings(run: RunData) -> Dict[str, Dict[str, Any]]:
    """The run's hacking.json when the trainer wrote one, else the rules replayed over its
    metrics with the run's thresholds (a run from before the monitor existed)."""
    if run.hacking is not None:
        return run.hacking["firings"]
    cfg = HackingConfig(**run.config["hacking"]) if "hacking" in run.config else HackingConfig()
    return replay(run.metrics + run.evals, cfg).as_dict()


def hacking_panel(run: RunData) -> Panel:
    firings = hacking_firings(run)
    if not firings:
        return Panel("no reward-hacking rule fired", title="reward-hacking signals")
    lines = [f"[bold red]{f['rule']}[/] first at step {f['first_step']} (last {f['last_step']}, "
             f"{f['steps_fired']} steps): {f['message']}" for f in firings.values()]
    return Panel("\n".join(lines), title="reward-hacking signals")


def top_groups(rows: List[Dict[str, Any]], k: int) -> List[List[Dict[str, Any]]]:
    """The k groups of one dump with the largest advantage spread (max - min), widest first."""
    groups: Dict[int, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    spread = {g: max(r["advantage"] for r in m) - min(r["advantage"] for r in m)
              for g, m in groups.items()}
    return [sorted(groups[g], key=lambda r: r["member"])
            for g in sorted(groups, key=lambda g: -spread[g])[:k]]


def group_table(members: List[Dict[str, Any]], reward_names: Sequence[str], chars: int) -> Table:
    first = members[0]
    t = Table(title=f"group {first['group']} (prompt line {first['prompt_id']}, task "
                    f"{first['task']}, mean {first['group_mean']:.3f}, std {first['group_std']:.3f})",
              title_justify="left", show_lines=True)
    t.add_column("")
    for r in members:
        t.add_column(f"#{r['member']}", overflow="fold")
    t.add_row("completion", *(r["completion"][:chars] + ("…" if len(r["completion"]) > chars else "")
                              for r in members))
    for name in reward_names:
        t.add_row(name, *(f"{r[f'reward_{name}']:.3f}" for r in members))
    t.add_row("total", *(f"{r['reward_total']:.3f}" for r in members))
    t.add_row("advantage", *(f"{r['advantage']:+.3f}" for r in members))
    for name in reward_names:
        t.add_row(f"  from {name}", *(f"{r[f'adv_{name}']:+.3f}" for r in members))
    t.add_row("len / trunc / answer",
              *(f"{r['length']} / {'y' if r['truncated'] else 'n'} / {'y' if r['has_answer'] else 'n'}"
                for r in members))
    return t


def pick_step(run: RunData, step: Optional[int]) -> Optional[int]:
    """--step if given (must have a dump), else the last dumped step."""
    if not run.dumps:
        return None
    if step is None:
        return max(run.dumps)
    return step if step in run.dumps else None


def report(run: RunData, console: Console, step: Optional[int] = None, top_k: int = 3,
           chars: int = 240) -> None:
    console.print(config_table(run))
    console.print(curves_table(run))
    console.print(attribution_table(run))
    console.print(hacking_panel(run))
    chosen = pick_step(run, step)
    if chosen is None:
        console.print(f"no rollout dump{'' if step is None else f' for step {step}'} "
                      f"(dumped steps: {sorted(run.dumps) or 'none'})")
        return
    rows = run.dump(chosen)
    names = run.reward_names()
    console.print(f"[bold]step {chosen}: the {top_k} groups with the widest advantage spread[/]")
    for members in top_groups(rows, top_k):
        console.print(group_table(members, names, chars))


def compare_table(runs: Sequence[RunData]) -> Table:
    t = Table(title="runs compared (last step; held-out where evaluated)", title_justify="left")
    names = sorted({n for r in runs for n in r.reward_names()})
    for col in ["run", "steps", "total"] + names + ["held-out total", "KL", "entropy", "length"] + \
            [f"share {n}" for n in names]:
        t.add_column(col)
    for run in runs:
        last = run.metrics[-1] if run.metrics else {}

        def fmt(key):
            return f"{last[key]:.3f}" if key in last else "-"

        held = f"{run.evals[-1]['eval/total_mean']:.3f}" if run.evals else "-"
        shares = attribution_summary(run)
        t.add_row(run.name, str(len(run.metrics)), fmt("reward/total_mean"),
                  *(fmt(f"reward/{n}_mean") for n in names), held, fmt("grpo/kl"),
                  fmt("grpo/entropy"), fmt("rollout/completion_len_mean"),
                  *(f"{shares[n]['abs_share']:.3f}" if n in shares and "abs_share" in shares[n]
                    else "-" for n in names))
    return t


