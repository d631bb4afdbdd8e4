"""One self-contained report.html: no server, no network, no JavaScript.

Sections (each a <section id=...>, which the tests check):
    config        the run's config in brief
    plots         the six panels of lmmixup/inspect/plots.py, inline as base64 PNGs
    attribution   each reward's share of the advantage, sign agreement, correlation, decisions
    hacking       reward-hacking rules that fired, with their steps
    rollouts      a browser: step -> group -> completions with every reward and the advantage
                  split, built from nested <details> elements so it folds without scripts
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lmmixup.data.jsonl import atomic_write_text
from lmmixup.inspect import plots
from lmmixup.inspect.load import RunData
from lmmixup.inspect.terminal import _get, attribution_summary, hacking_firings, top_groups

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { color: #0a6e2a; } td.neg { color: #b3261e; }
pre { white-space: pre-wrap; max-width: 32em; max-height: 18em; overflow: auto; margin: 0;
      font-size: .85em; background: #fafafa; }
details { margin: .3em 0 .3em 1em; } summary { cursor: pointer; }
img { max-width: 100%; border: 1px solid #eee; }
.warn { color: #b3261e; font-weight: bold; }
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(v: float, signed: bool = False) -> str:
    cls = "num" + ((" pos" if v > 0 else " neg" if v < 0 else "") if signed else "")
    return f'<td class="{cls}">{v:+.3f}</td>' if signed else f'<td class="{cls}">{v:.3f}</td>'


def _config_section(run: RunData) -> str:
    keys = ("model.name_or_path", "steps", "prompts_per_step", "algo.group_size", "algo.loss",
            "algo.beta", "algo.adv_scale", "optim.lr", "rollout.max_new_tokens",
            "reward.weights", "reward.normalize_per_group", "data.train_file")
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_get(run.config, k))}</td></tr>" for k in keys)
    return f'<section id="config"><h2>Config</h2><table>{rows}</table></section>'


def _plots_section(runs: Sequence[RunData], pngs: Dict[str, bytes]) -> str:
    imgs = []
    for name in plots.PANELS:
        png = pngs[name] if name in pngs else plots.png_bytes(plots.figure([name], runs, cols=1))
        data = base64.b64encode(png).decode()
        imgs.append(f'<img alt="{name}" src="data:image/png;base64,{data}" width="480">')
    return f'<section id="plots"><h2>Curves</h2>{"".join(imgs)}</section>'


def _attribution_section(run: RunData) -> str:
    head = "<tr><th>reward</th><th>share of &Sigma;|A_ik|</th><th>sign agrees with A</th>" \
           "<th>corr with A</th><th>decides its group alone</th></tr>"
    body = ""
    for name, m in attribution_summary(run).items():
        body += f"<tr><th>{_e(name)}</th>" + "".join(
            _num(m[k]) if k in m else "<td>-</td>"
            for k in ("abs_share", "sign_agree", "corr", "decides_group")) + "</tr>"
    return ('<section id="attribution"><h2>Advantage attribution</h2>'
            "<p>A_i = &Sigma;_k A_ik exactly; means over the steps that logged each metric.</p>"
            f"<table>{head}{body}</table></section>")


def _hacking_section(run: RunData) -> str:
    firings = hacking_firings(run)
    if not firings:
        inner = "<p>No reward-hacking rule fired.</p>"
    else:
        inner = "<ul>" + "".join(
            f'<li><span class="warn">{_e(f["rule"])}</span> first at step {f["first_step"]} '
            f'(last {f["last_step"]}, {f["steps_fired"]} steps): {_e(f["message"])}</li>'
            for f in firings.values()) + "</ul>"
    return f'<section id="hacking"><h2>Reward-hacking signals</h2>{inner}</section>'


def _group_html(members: List[Dict[str, Any]], names: Sequence[str], is_open: bool) -> str:
    first = members[0]
    spread = max(r["advantage"] for r in members) - min(r["advantage"] for r in members)
    head = "<tr><th></th>" + "".join(f"<th>#{r['member']}</th>" for r in members) + "</tr>"
    rows = "<tr><th>completion</th>" + "".join(
        f"<td><pre>{_e(r['completion'])}</pre></td>" for r in members) + "</tr>"
    for n in names:
        rows += f"<tr><th>{_e(n)}</th>" + "".join(_num(r[f"reward_{n}"]) for r in members) + "</tr>"
    rows += "<tr><th>total</th>" + "".join(_num(r["reward_total"]) for r in members) + "</tr>"
    rows += "<tr><th>advantage</th>" + "".join(_num(r["advantage"], True) for r in members) + "</tr>"
    for n in names:
        rows += f"<tr><th>&nbsp;&nbsp;from {_e(n)}</th>" + "".join(
            _num(r[f"adv_{n}"], True) for r in members) + "</tr>"
    rows += "<tr><th>length / truncated / answer</th>" + "".join(
        f"<td>{r['length']} / {'yes' if r['truncated'] else 'no'} / "
        f"{'yes' if r['has_answer'] else 'no'}</td>" for r in members) + "</tr>"
    return (f'<details class="group"{" open" if is_open else ""}><summary>group {first["group"]} &middot; task '
            f'{_e(first["task"])} &middot; mean {first["group_mean"]:.3f} &middot; advantage '
            f'spread {spread:.3f}</summary><details><summary>prompt and reference</summary>'
            f'<pre>{_e(first["prompt"])}</pre><pre>{_e(first["reference"])}</pre></details>'
            f"<table>{head}{rows}</table></details>")


def _rollouts_section(run: RunData) -> str:
    names = run.reward_names()
    parts = []
    last = max(run.dumps, default=None)
    for step in sorted(run.dumps):
        rows = run.dump(step)
        groups = top_groups(rows, k=len(rows))  # every group, widest advantage spread first
        # the last step and its widest group start unfolded: the report opens on an example
        parts.append(f'<details class="step"{" open" if step == last else ""}><summary>step '
                     f'{step} &middot; {len(groups)} groups &middot; {len(rows)} completions'
                     "</summary>" + "".join(_group_html(g, names, step == last and i == 0)
                                            for i, g in enumerate(groups)) + "</details>")
    inner = "".join(parts) or "<p>No rollout dumps in this run (logger.dump_every=0?).</p>"
    return ('<section id="rollouts"><h2>Rollouts</h2><p>Step &rarr; group (widest advantage '
            f"spread first) &rarr; completions.</p>{inner}</section>")


def write_html(run: RunData, path: Path, compare: Sequence[RunData] = (),
               pngs: Optional[Dict[str, bytes]] = None) -> Path:
    """pngs: panel name -> PNG bytes already drawn (by --plot), so they are not drawn twice."""
    runs = [run, *compare]
    doc = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>lmmixup inspect: {_e(run.name)}</title><style>{CSS}</style></head><body>"
           f"<h1>lmmixup inspect: {_e(run.path)}</h1>"
           + _config_section(run) + _plots_section(runs, pngs or {}) + _attribution_section(run)
           + _hacking_section(run) + _rollouts_section(run) + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, doc)
    return path
