"""On-disk request cache and the resumable JSONL results file.

* :class:`RequestCache` maps sha256(backend, model, backend params, messages, decoding parameters,
  schema) to the completion; one small JSON file per entry, written atomically (temp file + rename), so
  concurrent workers and killed runs never leave a half-written entry. Only successful transport calls
  are cached (an invalid *output* is cached - it is what the model says - but an HTTP error is not).
* :class:`ResultsFile` appends one result per line, flushed and fsynced, and on opening reads back
  what is already there: a rerun skips every (task_id, response_id) already scored with status ``ok``
  and retries the failed ones. A torn last line (process killed mid-write) is cut off, never misread;
  a corrupt line elsewhere is an error naming the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from rubricate.agents.backends import Completion
from rubricate.errors import InputError


class RequestCache:
    """A directory of cached completions, keyed by everything that can change the output."""

    def __init__(self, directory: str | Path, enabled: bool = True) -> None:
        self.dir = Path(directory)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(backend: str, model: str, backend_params: dict[str, Any], messages: list[dict[str, str]],
            params: dict[str, Any], schema: dict[str, Any] | None) -> str:
        blob = json.dumps({"backend": backend, "model": model, "backend_params": backend_params,
                           "messages": messages, "params": params, "schema": schema},
                          sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            comp = Completion.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            with self._lock:
                self.misses += 1
            return None
        comp.cached = True
        with self._lock:
            self.hits += 1
        return comp

    def put(self, key: str, completion: Completion) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(completion.to_dict(), f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_cache_dir() -> Path:
    """``$RUBRICATE_CACHE`` or ``~/.cache/rubricate/llm``."""
    env = os.environ.get("RUBRICATE_CACHE")
    return Path(env) / "llm" if env else Path.home() / ".cache" / "rubricate" / "llm"


def iter_result_dicts(path: str | Path, repair: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a results file. A torn final line is cut off when ``repair`` is set and
    skipped otherwise; any other unreadable line raises :class:`InputError` with its line number."""
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        data = data[:cut]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"unreadable results row ({e})", file=path, line=lineno) from None
        for col in ("task_id", "response_id", "status"):
            if col not in row:
                raise InputError("missing field", file=path, line=lineno, column=col)
        yield lineno, row


class ResultsFile:
    """Append-only JSONL of agent results with resume.

    ``done`` holds the keys already scored with status ``ok``; the last row of a key wins when the
    file is read back (a failure retried successfully is superseded, never double-counted).
    ``expect`` (e.g. backend, model, mode) must match every row already in the file: resuming a file
    written by another model or mode would silently mix two scorers' results, so it is an error.
    """

    def __init__(self, path: str | Path, resume: bool = True, expect: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[str, str]] = set()
        if self.path.exists() and resume:
            latest: dict[tuple[str, str], str] = {}
            for line, row in iter_result_dicts(self.path, repair=True):
                for k, want in (expect or {}).items():
                    if k in row and row[k] != want:
                        raise InputError(f"this results file was written with {k}={row[k]!r}, this run has "
                                         f"{k}={want!r}; resuming would mix two scorers' results (use another "
                                         "--output, or --no-resume to start it afresh)", file=self.path, line=line,
                                         column=k)
                latest[(str(row["task_id"]), str(row["response_id"]))] = row["status"]
            self.done = {k for k, status in latest.items() if status == "ok"}
        elif self.path.exists():
            self.path.unlink()
        self._lock = threading.Lock()
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())
            if row.get("status") == "ok":
                self.done.add((str(row["task_id"]), str(row["response_id"])))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_latest(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row per (task_id, response_id) of a results file, in first-seen order."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for _, row in iter_result_dicts(path):
        out[(str(row["task_id"]), str(row["response_id"]))] = row
    return out
