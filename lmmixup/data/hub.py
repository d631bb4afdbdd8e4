"""The paper's released MIXTURE (hf:dokiik/MIXTURE) converted into our split-row schema.

For online users only (hub downloads fail on our machines); the row mapping is unit-tested on
a fake folder. The release holds data_sft/<task>/*.json rows {instruction, input, output, cot}
and data_grpo/**/{train,test}.json rows {input, output[, task_type]}. Each becomes a split row
(prompt, reference, target, task, source, seed_id, members): the prompt is our system turn
plus the row's own user text, the reference is `output`, the target is the think/answer
layout of (cot, output). Clusters are not itemised in the release, so `members` is empty, and
there is no rated.jsonl (the release carries no per-variant scores).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from lmmixup.data.jsonl import atomic_write_jsonl, atomic_write_text, iter_jsonl, sha256_file
from lmmixup.data.layout import SYSTEM_PROMPT, target_text
from lmmixup.data.prompts import TASKS
from lmmixup.errors import LmmixupError

_TASK_ALIASES = {"paragraph": "para"}


def task_name(text: str) -> Optional[str]:
    """'qa_mixup' -> 'qa', 'paragraph' -> 'para'; None if `text` names no task."""
    base = re.sub(r"_mixup$", "", str(text).strip().lower())
    base = _TASK_ALIASES.get(base, base)
    return base if base in TASKS else None


def hub_row(row: Dict, task_hint: str, source: str, where: str) -> Dict:
    """One release row -> one split row; `where` (file:line) names it in errors and ids."""
    user = "\n".join(str(row.get(k) or "").strip() for k in ("instruction", "input")
                     if str(row.get(k) or "").strip())
    output = str(row.get("output") or "").strip()
    if not user or not output:
        raise LmmixupError(f"{where}: needs non-empty 'input' (or 'instruction') and 'output'")
    task = task_name(row.get("task_type") or row.get("task") or task_hint)
    if task is None:
        raise LmmixupError(f"{where}: no task type (task_type field or a qa/mcq/tfq/cs/para folder)")
    return {"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                       {"role": "user", "content": user}],
            "reference": output, "target": target_text(str(row.get("cot") or ""), output),
            "task": task, "source": source, "seed_id": f"{source}:{where}", "members": []}


def _rows(path: Path) -> Iterator[Tuple[int, Dict]]:
    if path.suffix == ".jsonl":
        yield from iter_jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmmixupError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    data = data.get("data", data) if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise LmmixupError(f"{path}: expected a JSON array of rows")
    yield from enumerate(data, start=1)


def release_files(root: Path) -> List[Tuple[str, str, Path]]:
    """(split, task hint, path) for every row file of a downloaded release."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            continue
        parts = path.relative_to(root).parts
        if parts[0] == "data_sft":
            split = "sft"
        elif parts[0] == "data_grpo":
            split = "grpo_test" if "test" in path.stem else "grpo_train"
        else:
            continue
        words = list(parts[:-1]) + re.split(r"[_\-.]", path.stem)
        hint = next((t for t in map(task_name, words) if t), "")
        found.append((split, hint, path))
    return found


def convert_release(root: Path, out: Path, source: str, config: Dict) -> Dict:
    """Write sft/grpo_train/grpo_test.jsonl and a manifest from a release folder."""
    rows: Dict[str, List[Dict]] = {"sft": [], "grpo_train": [], "grpo_test": []}
    for split, hint, path in release_files(root):
        rel = path.relative_to(root)
        for line, row in _rows(path):
            if not isinstance(row, dict):
                raise LmmixupError(f"{path}:{line}: expected a JSON object")
            rows[split].append(hub_row(row, hint, source, f"{rel}:{line}"))
    if not any(rows.values()):
        raise LmmixupError(f"{source}: no rows found under {root} (expected data_sft/ and data_grpo/)")
    files = {}
    for split, split_rows in rows.items():
        path = out / f"{split}.jsonl"
        atomic_write_jsonl(path, split_rows)
        files[path.name] = {"rows": len(split_rows), "sha256": sha256_file(path),
                            "bytes": path.stat().st_size}
    manifest = {"format": "lmmixup-mixture/1", "config": config, "source": source, "files": files,
                "splits": {s: {"rows": len(r)} for s, r in rows.items()}}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def convert_hub_mixture(repo_id: str, out: Path, config: Dict) -> Dict:
    """Download the release with huggingface_hub (online only) and convert it."""
    from huggingface_hub import snapshot_download  # lazy: only the online conversion needs it

    try:
        root = snapshot_download(repo_id, repo_type="dataset",
                                 allow_patterns=["data_sft/**", "data_grpo/**"])
    except Exception as e:  # offline or unknown repo: one line
        raise LmmixupError(f"hub={repo_id}: download failed: {str(e).splitlines()[0]}") from None
    return convert_release(Path(root), out, f"hf:{repo_id}", config)
