"""Run logging: metrics.jsonl always, Weights & Biases (offline by default) when asked.

The W&B side sits behind a null object with the same methods (log, table, finish), so the training loop never
branches on the logger. `metrics.jsonl` holds one JSON object per optimizer step; on resume
the lines after the checkpoint's step are dropped first, so a step never appears twice.
"""

from __future__ import annotations

import json
import os
import time
import secrets
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from lmmixup.errors import LmmixupError, require


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    """wandb (offline unless WANDB_MODE=online) | none (only metrics.jsonl)"""
    project: str = "lmmixup"
    """W&B project name"""
    name: str = ""
    """W&B run name; empty = W&B's default"""
    progress_bar: bool = True
    """show a tqdm bar with the step, reward and KL"""
    dump_every: int = -1
    """write the rollout batch to <run>/rollouts/ every N steps (lmmixup/dumps.py); -1 = auto
    (every step for runs under 50 steps, else every 10; first and last step always), 0 = never"""
    dump_tokens: bool = False
    """also dump the per-token arrays (token ids, log-probs, old/ref log-probs)"""
    dump_table_rows: int = 16
    """completions per dump sent to W&B as a sample table (whole groups, from the first)"""

    def validate(self) -> None:
        require(self.backend in ("wandb", "none"), "logger.backend",
                f"must be wandb or none, got {self.backend!r}")
        require(self.dump_every >= -1, "logger.dump_every",
                f"must be -1 (auto), 0 (never) or a step interval > 0, got {self.dump_every}")
        require(self.dump_table_rows >= 0, "logger.dump_table_rows", "must be >= 0")


# A key names a credential when its last word does: api_key, hf_token, client_secret, password.
# Anchored at the end so counts such as rollout.max_new_tokens or pad_token_id stay visible.
_SECRET_KEY = re.compile(r"(^|[_\-.])(api_?key|access_?key|secret(_?key)?|password|passwd|token)$",
                         re.IGNORECASE)


def redact(obj: Any) -> Any:
    """Copy of a nested config dict with values of secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


class _NullWandb:
    def log(self, metrics: Dict[str, float], step: int) -> None:
        pass

    def table(self, key: str, columns: List[str], rows: List[List[Any]], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


WANDB_INIT_RETRIES = 30
"""2-second waits for a killed job's W&B service to release the run id on resume"""


class _Wandb:
    """A W&B run whose id is kept in the run folder, so a resumed job continues the same run."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: Dict[str, Any]):
        import wandb  # lazy: loads when a run logs, never for a refused config or backend=none

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        # After a SIGKILL the dead job's W&B service can hold the run id for a few seconds
        # ("run ID ... is in use"); a resume started at once waits for it instead of failing.
        for attempt in range(WANDB_INIT_RETRIES + 1):
            try:
                self.run = wandb.init(project=cfg.project, name=cfg.name or None, id=run_id,
                                      resume="allow", dir=str(run_dir), config=redact(config))
                break
            except Exception as e:  # wandb raises its own ServerResponseError
                if "is in use" not in str(e):
                    raise
                if attempt == WANDB_INIT_RETRIES:
                    raise LmmixupError(
                        f"{id_file}: W&B run {run_id} is still held by another process after "
                        f"{2 * WANDB_INIT_RETRIES} s (a killed job's wandb-core service?); stop "
                        "that process and resume again") from e
                time.sleep(2.0)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, key: str, columns: List[str], rows: List[List[Any]], step: int) -> None:
        import wandb  # lazy: as __init__'s

        self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class MetricsLog:
    """Appends one JSON line per step to <run_dir>/metrics.jsonl and mirrors it to W&B."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: Dict[str, Any],
                 resume_step: Optional[int] = None):
        self.path = run_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.wandb = _Wandb(cfg, run_dir, config) if cfg.backend == "wandb" else _NullWandb()

    def _truncate_after(self, step: Optional[int]) -> None:
        """Fresh run (step None): refuse to mix with an earlier run's lines. Resumed run: keep
        only the lines up to the checkpoint's step, so no step is logged twice."""
        if not self.path.exists():
            return
        if step is None:
            if self.path.stat().st_size:
                raise LmmixupError(f"{self.path}: already holds metrics; pass resume=auto to "
                                   "continue that run, or pick a new hydra.run.dir")
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from a kill: drop it and everything after
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.wandb.log(metrics, step=step)

    def finish(self) -> None:
        self.wandb.finish()


class NullMetricsLog:
    """What ranks other than 0 log to under torchrun: nothing (rank 0 writes metrics.jsonl)."""

    wandb = _NullWandb()

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass
