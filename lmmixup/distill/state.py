"""Which stages of a distill run are complete, and whether an `out` folder may be reused.

    OUT/config.json          the resolved config of the run that owns the folder
    OUT/.work/state.json     one record per finished stage: its files' SHA-256 and its seconds

A stage counts as complete only if its record exists AND every file it names still has the
recorded hash, so a file replaced or truncated by hand is recomputed, never trusted. Records are
written after the stage's files (each file itself atomically), so a kill between the two only
repeats the stage.

Reusing a folder. Every config key belongs to the first stage that reads it (`KEY_STAGES`,
longest prefix wins). A rerun whose config differs from config.json reruns the stage of the
first changed key and every later one, when that costs little (`CHEAP_STAGES`: re-rating the
distilled pairs and what follows); a change to a key of a complete expensive stage (the pool,
the rating, the clusters, the generation) is refused, naming the keys, because those files were
made with the old values and cost minutes to hours to remake: use another out folder.

Reusing another folder (`reuse=DIR`). A new out folder takes from DIR every complete stage that
comes before the first stage whose keys differ between DIR's config and this run's, files
checked against DIR's recorded hashes, then runs the rest. So a mix sweep costs one
distillation: `-m mix.distilled_fraction=0.3,0.5,0.7 'out=runs/f${mix.distilled_fraction}'
reuse=runs/base` copies everything up to the long-tail ranking from runs/base.

`kill_point(name)` is the test hook: with LMMIXUP_DISTILL_KILL=<name> in the environment the
process SIGKILLs itself there, exactly like an outside `kill -9`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tqdm import tqdm

from lmmixup.data.jsonl import atomic_write_jsonl, atomic_write_text, sha256_file
from lmmixup.errors import LmmixupError

STAGES = ("normalize", "rate", "split", "cluster", "generate", "rerate", "longtail", "mix",
          "report")
# config key (prefix) -> first stage that reads it; keys not listed belong to no stage
KEY_STAGES: Dict[str, str] = {
    "input": "normalize",
    "pool": "normalize",
    "rate": "rate",
    "rate.high_threshold": "split",
    "seed": "cluster",
    "cluster": "cluster",
    "model": "generate",
    "device": "generate",
    "precision": "generate",
    "distill": "generate",
    "distill.task": "normalize",  # each sample is rated in its task's shape
    "distill.keep_threshold": "rerate",
    "distill.min_gain": "rerate",
    "distill.reject_defects": "rerate",
    "longtail": "longtail",
    "mix": "mix",
    "report": "report",
}
CHEAP_STAGES = ("rerate", "longtail", "mix", "report")
"""stages redone in place when one of their keys changes (seconds, not hours)"""
FREE_KEYS = ("out", "progress", "reuse")
"""keys that never change what is written: they may differ between a run and its resume"""
KILL_ENV = "LMMIXUP_DISTILL_KILL"


def kill_point(name: str) -> None:
    """Die here with SIGKILL when LMMIXUP_DISTILL_KILL names this point (resume tests)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def stage_of(key: str) -> Optional[str]:
    """The first stage that reads `key`: the longest matching prefix of KEY_STAGES."""
    best = None
    for prefix, stage in KEY_STAGES.items():
        if key == prefix or key.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, stage)
    return best[1] if best else None


def changed_keys(old: Dict[str, Any], new: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every key that differs, FREE_KEYS aside."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in keys
            if a.get(k, "<absent>") != b.get(k, "<absent>") and k.split(".")[0] not in FREE_KEYS]


class RunState:
    """The stage records of one out folder."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / ".work" / "state.json"
        self.records: Dict[str, Dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.records = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:  # never written non-atomically; treat as no records
                self.records = {}

    def done(self, stage: str) -> bool:
        record = self.records.get(stage)
        if record is None:
            return False
        for name, digest in record["files"].items():
            path = self.out / name
            if not path.is_file() or sha256_file(path) != digest:
                return False
        return True

    def mark(self, stage: str, files: Iterable[str], seconds: float,
             counts: Optional[Dict[str, Any]] = None) -> None:
        self.records[stage] = {"files": {f: sha256_file(self.out / f) for f in files},
                               "seconds": round(seconds, 3), "counts": counts or {}}
        atomic_write_text(self.path, json.dumps(self.records, indent=1, sort_keys=True))

    def counts(self, stage: str) -> Dict[str, Any]:
        return self.records[stage]["counts"]

    def seconds(self) -> Dict[str, float]:
        return {s: self.records[s]["seconds"] for s in STAGES if s in self.records}

    def invalidate_from(self, stage: str) -> None:
        """Forget `stage` and every later one (their inputs are about to change)."""
        later = STAGES[STAGES.index(stage):]
        self.records = {s: r for s, r in self.records.items() if s not in later}
        for name in later:  # their shards and done-lists were made with the old values too
            shutil.rmtree(self.out / ".work" / name, ignore_errors=True)
        if self.path.parent.is_dir():
            atomic_write_text(self.path, json.dumps(self.records, indent=1, sort_keys=True))


def check_out_folder(out: Path, config: Dict[str, Any], state: RunState) -> None:
    """Refuse a folder that holds a run made with other values of keys its finished stages
    read; otherwise forget the stages a changed key affects. Nothing is written here except
    state.json (only when a stage must be forgotten)."""
    path = out / "config.json"
    if not path.is_file():
        if out.is_dir() and any(p.name != ".work" for p in out.iterdir()):
            raise LmmixupError(f"out: {out} is not empty and holds no distill run (no "
                               "config.json); choose an empty or new folder")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmmixupError(f"{path}: not valid JSON ({e.msg}); not a distill run folder") from None
    changes = changed_keys(old, config)
    if not changes:
        return
    stages = {k: stage_of(k) for k, _, _ in changes}
    blocking = [(k, a, b) for k, a, b in changes if stages[k] is None
                or state.done(stages[k]) and stages[k] not in CHEAP_STAGES]
    if blocking:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in blocking[:6])
        more = f" and {len(blocking) - 6} more" if len(blocking) > 6 else ""
        raise LmmixupError(f"out: {out} holds a run made with a different config: {listed}{more}; "
                           "use another out folder")
    first = min((STAGES.index(s) for s in stages.values() if s), default=None)
    if first is not None:
        state.invalidate_from(STAGES[first])


def first_changed_stage(old: Dict[str, Any], new: Dict[str, Any]) -> int:
    """Index in STAGES of the first stage a changed key belongs to (len(STAGES) when none; 0
    when a changed key belongs to no stage, so nothing can be trusted)."""
    stages = [stage_of(k) for k, _, _ in changed_keys(old, new)]
    if any(s is None for s in stages):
        return 0
    return min((STAGES.index(s) for s in stages), default=len(STAGES))


def reuse_stages(source: Path, out: Path, config: Dict[str, Any]) -> List[str]:
    """Copy into the new folder `out` the complete stages of the run in `source` that come
    before its first changed stage (module docstring); returns their names. Each file is
    checked against source's recorded hash; out gets config.json and state.json."""
    if not (source / "config.json").is_file():
        raise LmmixupError(f"reuse: {source} holds no distill run (no config.json)")
    old = json.loads((source / "config.json").read_text(encoding="utf-8"))
    src = RunState(source)
    taken = []
    for stage in STAGES[:first_changed_stage(old, config)]:
        if not src.done(stage):  # a stage is only as good as the ones before it
            break
        taken.append(stage)
    if not taken:
        return []
    dst = RunState(out)
    for stage in taken:
        for name in src.records[stage]["files"]:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, target)
        dst.records[stage] = src.records[stage]
    # the hashes just copied are re-checked by dst.done() before any stage is skipped
    atomic_write_text(dst.path, json.dumps(dst.records, indent=1, sort_keys=True))
    return taken


class DoneList:
    """The shards of a sharded stage that are finished: `OUT/.work/<stage>/done.txt`, one shard
    index per line, appended (and fsynced) after the shard's own file has been renamed into
    place. A line cut off by a kill is ignored, so that shard simply runs again."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "done.txt"

    def read(self) -> set:
        if not self.path.is_file():
            return set()
        done = set()
        lines = self.path.read_text(encoding="utf-8").split("\n")[:-1]  # drop an unended line
        for line in lines:
            if line.strip().isdigit() and (self.folder / shard_name(int(line))).is_file():
                done.add(int(line))
        return done

    def add(self, index: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{index}\n")
            f.flush()
            os.fsync(f.fileno())


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.jsonl"


def run_sharded(folder: Path, batches: Iterable[list], total: int, work, desc: str,
                progress: bool, kill_name: str, rank: int = 0, world_size: int = 1) -> List[Path]:
    """Process `batches` (an iterable of item lists, consumed once, in order) as shards:
    `work(index, batch)` returns the shard's rows (and may write side files, atomically, before
    returning). Each shard's JSONL is renamed into place, then its index joins the done-list; a
    rerun skips the shards on the list. Shard boundaries depend only on the input and the
    shard size, so a resumed stage batches exactly as an uninterrupted one (same floats, same
    bytes). Only one batch is held in memory at a time when `batches` is a generator.
    Under torchrun rank r works the shards j with j % world_size == r (the caller waits for
    every rank before reading them); a shard's bytes do not depend on which rank wrote it."""
    done = DoneList(folder)
    finished = done.read()
    paths = []
    with tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for j, batch in enumerate(batches):
            paths.append(folder / shard_name(j))
            if j not in finished and j % world_size == rank:
                atomic_write_jsonl(paths[-1], work(j, batch))
                done.add(j)
                kill_point(f"{kill_name}:shard{j}")
            bar.update(len(batch))
    return paths
