"""`--sweep MULTIRUN_DIR`: one cell per job of a Hydra multirun, against the swept values.

Which keys were swept, and each job's values, come from Hydra's own record: the sweep folder's
multirun.yaml holds `hydra.sweeper.params` and the command line's overrides, and Hydra's basic
sweeper runs job number i with the i-th element of the cartesian product of the swept values, in
that order (sweeper params first, then the command line; a key given twice keeps its first
position and its last value), in the sub-folder `i` (`hydra.sweep.subdir: ${hydra.job.num}`).
Config groups (`algo=grpo,dapo`) work as well as fields. When multirun.yaml is missing or the
folders do not follow that layout, the swept keys are the config fields whose values differ.

Each cell's value is the final held-out reward (eval_step_<last>.json, with a 95% bootstrap CI
over eval_samples_step_<last>.jsonl when present) and each held-out component; a job without an
evaluation shows its last training step's batch means, labelled `train/`. Outputs: a rich table,
sweep_heatmap_<metric>.png (two keys: a heat-map; one key, or a variant list: bars) and a
W&B-compatible summary, sweep_summary.jsonl ({"name", "config", "summary"} per run, the shape of
wandb.Api().runs) and sweep_summary.csv.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from rich.table import Table

from lmmixup.data.jsonl import atomic_write_text
from lmmixup.errors import LmmixupError
from lmmixup.eval.stats import bootstrap_mean_ci
from lmmixup.inspect.load import RunData, load_run


@dataclass
class Cell:
    run: RunData
    values: Dict[str, str]  # swept key -> value (as written on the command line)
    metrics: Dict[str, float]  # e.g. eval/total_mean, eval/total_ci_low, train/quality_mean
    source: str  # "held-out step S" or "train step S"


def _swept_from_hydra(sweep_dir: Path) -> Optional[List[Dict[str, str]]]:
    """Job i -> {key: value} from multirun.yaml, or None when it cannot be reconstructed."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    params = hydra_cfg.get("sweeper", {}).get("params") or {}
    task = hydra_cfg.get("overrides", {}).get("task") or []
    args = [f"{k}={v}" for k, v in params.items()] + list(task)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
        choices: "OrderedDict[str, List[str]]" = OrderedDict()
        for o in overrides:
            key = o.get_key_element()
            choices[key] = (list(o.sweep_string_iterator()) if o.is_discrete_sweep()
                            else [o.get_value_element_as_str()])
    except Exception:  # glob() needs Hydra's config loader, a range sweep is not discrete, ...
        return None
    keys = list(choices)
    jobs = [dict(zip(keys, combo)) for combo in itertools.product(*choices.values())]
    swept = [k for k in keys if len(choices[k]) > 1]
    return [{k: job[k] for k in swept} for job in jobs]


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _swept_from_configs(runs: Sequence[RunData]) -> List[Dict[str, str]]:
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [{k: str(f.get(k)) for k in differing} for f in flat]


def _final_metrics(run: RunData) -> tuple:
    """(metrics, source) of a job: its last evaluation, else its last training step."""
    if run.evals:
        last = run.evals[-1]
        out = {k: float(v) for k, v in last.items()
               if k.startswith("eval/") and k.endswith("_mean")}
        samples = run.path / f"eval_samples_step_{last['step']}.jsonl"
        if samples.is_file():
            totals = [json.loads(l)["total"] for l in samples.read_text().splitlines() if l.strip()]
            if totals:
                ci = bootstrap_mean_ci(totals)
                out["eval/total_ci_low"], out["eval/total_ci_high"] = ci.low, ci.high
                out["eval/n"] = float(ci.n)
        return out, f"held-out step {last['step']}"
    if not run.metrics:
        return {}, "no steps"
    last = run.metrics[-1]
    out = {f"train/{k[len('reward/'):]}": float(v) for k, v in last.items()
           if k.startswith("reward/") and k.endswith("_mean") and "/frac_" not in k}
    return out, f"train step {last['step']}"


def load_sweep(sweep_dir) -> List[Cell]:
    sweep_dir = Path(sweep_dir)
    subdirs = sorted((p for p in sweep_dir.iterdir() if (p / "metrics.jsonl").is_file()),
                     key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0,
                                    p.name)) if sweep_dir.is_dir() else []
    if not subdirs:
        raise LmmixupError(f"{sweep_dir}: no job folders with metrics.jsonl (is it a multirun "
                           "folder, hydra.sweep.dir?)")
    runs = [load_run(p) for p in subdirs]
    values = None
    jobs = _swept_from_hydra(sweep_dir)
    if jobs is not None and all(p.name.isdigit() and int(p.name) < len(jobs) for p in subdirs):
        values = [jobs[int(p.name)] for p in subdirs]
    if values is None or not any(values):
        values = _swept_from_configs(runs)
    cells = []
    for run, vals in zip(runs, values):
        metrics, source = _final_metrics(run)
        cells.append(Cell(run=run, values=vals, metrics=metrics, source=source))
    return cells


def swept_keys(cells: Sequence[Cell]) -> List[str]:
    keys: List[str] = []
    for c in cells:
        keys += [k for k in c.values if k not in keys]
    return keys


def metric_names(cells: Sequence[Cell]) -> List[str]:
    names: List[str] = []
    for c in cells:
        names += [k for k in c.metrics if k.endswith("_mean") and k not in names]
    # the total first, then the components
    return sorted(names, key=lambda k: (not k.endswith("total_mean"), k))


def sweep_table(cells: Sequence[Cell]):
    keys, names = swept_keys(cells), metric_names(cells)
    t = Table(title=f"sweep: {len(cells)} cells over {', '.join(keys) or 'nothing'}",
              title_justify="left")
    for col in ["job", *keys, *names, "95% CI (total)", "from"]:
        t.add_column(col)
    for c in cells:
        ci = (f"[{c.metrics['eval/total_ci_low']:.3f}, {c.metrics['eval/total_ci_high']:.3f}]"
              if "eval/total_ci_low" in c.metrics else "-")
        t.add_row(c.run.name, *(c.values.get(k, "-") for k in keys),
                  *(f"{c.metrics[n]:.3f}" if n in c.metrics else "-" for n in names), ci, c.source)
    return t


def write_summary(cells: Sequence[Cell], out_dir: Path) -> List[Path]:
    keys, names = swept_keys(cells), metric_names(cells)
    jsonl = "".join(json.dumps({"name": c.run.name, "config": c.values, "summary": c.metrics,
                                "source": c.source}) + "\n" for c in cells)
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = sorted({k for c in cells for k in c.metrics} - set(names))
    writer.writerow(["name", *keys, *names, *extra, "source"])
    for c in cells:
        writer.writerow([c.run.name, *(c.values.get(k, "") for k in keys),
                         *(c.metrics.get(n, "") for n in names + extra), c.source])
    paths = [out_dir / "sweep_summary.jsonl", out_dir / "sweep_summary.csv"]
    atomic_write_text(paths[0], jsonl)
    atomic_write_text(paths[1], buf.getvalue())
    return paths


def _axis_values(cells: Sequence[Cell], key: str) -> List[str]:
    seen: List[str] = []
    for c in cells:
        if c.values.get(key) not in seen:
            seen.append(c.values.get(key))
    return seen


def write_heatmaps(cells: Sequence[Cell], out_dir: Path) -> List[Path]:
    """One PNG per metric: a heat-map over two swept keys, else bars over the cells."""
    # lazy: matplotlib loads once load_sweep has read the folder (a bad one is refused
    # without it)
    from lmmixup.inspect.plots import plt, save_png

    keys, paths = swept_keys(cells), []
    for name in metric_names(cells):
        if len(keys) == 2:
            rows, cols = _axis_values(cells, keys[0]), _axis_values(cells, keys[1])
            grid = [[float("nan")] * len(cols) for _ in rows]
            for c in cells:
                if name in c.metrics:
                    grid[rows.index(c.values[keys[0]])][cols.index(c.values[keys[1]])] = c.metrics[name]
            fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 1.1 * len(rows) + 1.8))
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
            finite = [v for row in grid for v in row if v == v]
            mid = (min(finite) + max(finite)) / 2 if finite else 0.0
            ax.set_xticks(range(len(cols)), cols)
            ax.set_yticks(range(len(rows)), rows)
            ax.set_xlabel(keys[1])
            ax.set_ylabel(keys[0])
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center",
                            color="k" if v > mid else "w")  # readable on viridis' yellow end
            fig.colorbar(im, ax=ax)
        else:
            labels = [", ".join(f"{k}={c.values[k]}" for k in keys if k in c.values) or c.run.name
                      for c in cells]
            fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(cells) + 2), 3.8))
            ax.bar(range(len(cells)), [c.metrics.get(name, float("nan")) for c in cells])
            ax.set_xticks(range(len(cells)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(name)
        fig.tight_layout()
        safe = name.replace("/", "_")
        paths.append(save_png(fig, out_dir / f"sweep_heatmap_{safe}.png"))
    return paths
