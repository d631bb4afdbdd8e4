"""JSONL reading with file:line errors, and atomic writes (temp file + rename).

Every file the data pipeline writes goes through `atomic_write_*`: a reader, or a build
resumed after a kill, sees either the previous complete file or the new complete file, never
a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, Tuple, Union

from lmmixup.errors import LmmixupError

PathLike = Union[str, Path]


def iter_json_lines(path: PathLike) -> Iterator[Tuple[int, Any]]:
    """Yield (1-based line number, JSON value) for each non-blank line, streamed. A bad line
    raises an LmmixupError naming `path:line`; a bad *last* line without its newline is called
    a truncated final line (a file cut off mid-write or mid-copy)."""
    path = str(path)
    if not os.path.isfile(path):
        raise LmmixupError(f"{path}: no such file")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LmmixupError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                                   f"column {e.start + 1}); re-save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n"):
                    raise LmmixupError(f"{where}: truncated final line (invalid JSON at column "
                                       f"{e.colno} and no closing newline); was the file cut "
                                       "off?") from None
                raise LmmixupError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            yield line_no, value


def iter_jsonl(path: PathLike) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; a bad line, or one that is
    not a JSON object, raises an LmmixupError naming `path:line`."""
    for line_no, obj in iter_json_lines(path):
        if not isinstance(obj, dict):
            raise LmmixupError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def read_jsonl(path: PathLike) -> list:
    return [obj for _, obj in iter_jsonl(path)]


def dumps_row(row: Dict[str, Any]) -> str:
    """One canonical JSON line: the same row always gives the same bytes (stable hashes)."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


@contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on a clean exit it is flushed, synced and
    renamed onto `path`; on an exception it is deleted and `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name beside the target (same file system, so the rename is atomic);
    # plain open() keeps the usual umask permissions, unlike mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_jsonl(path: PathLike, rows: Iterable[Dict[str, Any]]) -> int:
    """Write rows as canonical JSON lines; returns the number of rows."""
    n = 0
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
            n += 1
    return n


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
