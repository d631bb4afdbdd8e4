"""Reading a run folder (and a multirun folder) back: config, metrics, evaluations, dumps.

A run folder is what train.py writes: config.yaml, metrics.jsonl (one line per step),
eval_step_<s>.json (held-out summaries), rollouts/step_NNNNNN.parquet|jsonl and hacking.json.
Only config.yaml and metrics.jsonl are required; everything else is shown when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from lmmixup.dumps import list_dumps, read_dump
from lmmixup.errors import LmmixupError


@dataclass
class RunData:
    path: Path
    config: Dict[str, Any]  # the resolved config.yaml
    metrics: List[Dict[str, Any]]  # metrics.jsonl rows, oldest first
    evals: List[Dict[str, Any]]  # eval_step_<s>.json summaries, by step
    dumps: Dict[int, Path]  # step -> rollout dump file
    hacking: Optional[Dict[str, Any]] = None  # hacking.json as the trainer wrote it
    name: str = ""  # a short label for plots and tables
    _dump_cache: Dict[int, List[Dict[str, Any]]] = field(default_factory=dict, repr=False)

    def series(self, key: str) -> List[tuple]:
        """(step, value) of one metric, skipping steps that lack it."""
        return [(r["step"], r[key]) for r in self.metrics if r.get(key) is not None]

    def reward_names(self) -> List[str]:
        names = []
        for r in self.metrics:
            for k in r:
                if k.startswith("reward/") and k.endswith("_mean") and k != "reward/total_mean":
                    name = k[len("reward/"):-len("_mean")]
                    if name not in names and not name.startswith("frac_"):
                        names.append(name)
        return names

    def dump(self, step: int) -> List[Dict[str, Any]]:
        if step not in self._dump_cache:
            self._dump_cache[step] = read_dump(self.dumps[step])
        return self._dump_cache[step]


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break  # a torn last line from a killed run: the steps before it are whole
            raise LmmixupError(f"{path}:{i}: not a JSON line") from None
    return rows


def load_run(path, name: str = "") -> RunData:
    path = Path(path)
    metrics_file, config_file = path / "metrics.jsonl", path / "config.yaml"
    if not metrics_file.is_file():
        raise LmmixupError(f"{path}: not a run folder (no metrics.jsonl)")
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    evals = []
    for p in path.glob("eval_step_*.json"):
        try:
            evals.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            raise LmmixupError(f"{p}: not JSON") from None
    evals.sort(key=lambda e: e["step"])
    hacking_file = path / "hacking.json"
    hacking = json.loads(hacking_file.read_text()) if hacking_file.is_file() else None
    return RunData(path=path, config=config or {}, metrics=_read_jsonl(metrics_file), evals=evals,
                   dumps=list_dumps(path), hacking=hacking, name=name or path.name)
