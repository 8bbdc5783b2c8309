"""Output side of batch scoring: the flat columns, durable appends, Parquet part files, sidecars, progress bar.

Everything that makes ``predict``'s output crash-safe lives here: appends are flushed and fsynced before the
progress file records their size (:func:`fsync_append`), a rerun truncates back to that size
(:func:`truncate`), the progress file is replaced atomically (:func:`write_json_atomic`), and Parquet output
is written as numbered part files merged at the end (a Parquet file cannot be appended to after a crash).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from rubricate.errors import InputError

#: Bytes of the input's head hashed into the progress file (a changed input is never resumed into).
FINGERPRINT_HEAD_BYTES = 65536
#: Output formats and, for the delimited ones, their separator.
OUTPUT_SEPARATORS: dict[str, str] = {"csv": ",", "tsv": "\t"}


class Columns:
    """The flat output columns: fixed ones plus the union of every task's label keys and label names."""

    def __init__(self, scorer: Any) -> None:
        from rubricate.labels import LabelEncoding

        keys: dict[str, None] = {}
        names: dict[str, None] = {}
        for t in scorer.tasks:
            keys.update(dict.fromkeys(t.label_keys))
            names.update(dict.fromkeys(LabelEncoding.from_task(t).names))
        self.score_keys = list(keys)
        self.label_names = list(names)
        self.header = (["response_id", "task_id", "line"] + [f"score.{k}" for k in self.score_keys]
                       + [f"prob.{n}" for n in self.label_names]
                       + ["confidence", "needs_review", "gate_weights", "model_id", "model_version", "source"])

    def flat(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = {"response_id": rec["response_id"], "task_id": rec["task_id"], "line": rec["line"]}
        out.update({f"score.{k}": rec["scores"].get(k) for k in self.score_keys})
        out.update({f"prob.{n}": rec["probs"].get(n) for n in self.label_names})
        out.update({"confidence": rec["confidence"], "needs_review": rec["needs_review"],
                    "gate_weights": json.dumps(rec["gate_weights"]), "model_id": rec["model_id"],
                    "model_version": rec["model_version"], "source": rec.get("source", "trained")})
        return out

    def arrow_schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field("response_id", pa.string()), pa.field("task_id", pa.string()), pa.field("line", pa.int64())]
        fields += [pa.field(f"score.{k}", pa.int64()) for k in self.score_keys]
        fields += [pa.field(f"prob.{n}", pa.float64()) for n in self.label_names]
        fields += [pa.field("confidence", pa.float64()), pa.field("needs_review", pa.bool_()),
                   pa.field("gate_weights", pa.string()), pa.field("model_id", pa.string()),
                   pa.field("model_version", pa.string()), pa.field("source", pa.string())]
        return pa.schema(fields)


def header_bytes(cols: Columns, fmt: str) -> bytes:
    """What a fresh CSV/TSV output starts with (nothing for JSONL)."""
    if fmt not in OUTPUT_SEPARATORS:
        return b""
    buf = io.StringIO()
    csv.writer(buf, delimiter=OUTPUT_SEPARATORS[fmt], lineterminator="\n").writerow(cols.header)
    return buf.getvalue().encode("utf-8")


def encode(records: list[dict[str, Any]], cols: Columns, fmt: str) -> bytes:
    """Scored rows as JSONL (nested) or CSV/TSV (flat) bytes."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols.header, delimiter=OUTPUT_SEPARATORS[fmt], lineterminator="\n")
    for r in records:
        w.writerow(cols.flat(r))
    return buf.getvalue().encode("utf-8")


def fsync_append(path: Path, data: bytes) -> int:
    """Append and fsync; returns the new size (the committed offset)."""
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to the committed ``size`` (what a torn write after the last commit left is dropped)."""
    if path.exists():
        with path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    elif size:
        raise InputError(f"the progress file says {size} bytes were written but the file is gone; rerun with "
                         "--overwrite", file=path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and hash of the head of the input: enough to refuse resuming into a different file."""
    with path.open("rb") as f:
        head = f.read(FINGERPRINT_HEAD_BYTES)
    return {"size": path.stat().st_size, "head_sha256": hashlib.sha256(head).hexdigest()}


def sidecar_paths(output: Path) -> tuple[Path, Path, Path]:
    """(progress file, problems file, Parquet parts folder) that belong to ``output``."""
    return (output.with_name(output.name + ".progress.json"), output.with_name(output.name + ".errors.jsonl"),
            output.with_name(output.name + ".parts"))


def write_part(parts_dir: Path, index: int, rows: list[dict[str, Any]], cols: Columns) -> None:
    """One committed Parquet part: written to a temporary name, fsynced, then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=cols.arrow_schema())
    tmp = parts_dir / f".part-{index:06d}.tmp"
    pq.write_table(table, str(tmp))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, parts_dir / f"part-{index:06d}.parquet")


def drop_parts_from(parts_dir: Path, first: int) -> None:
    """Remove part files numbered ``first`` and above (written after the last commit)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    for p in parts_dir.glob("part-*.parquet"):
        if int(p.stem.split("-")[1]) >= first:
            p.unlink()


def merge_parts(parts_dir: Path, n_parts: int, out: Path, cols: Columns) -> None:
    """Merge the part files into ``out``, part by part (bounded memory), then remove them."""
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(str(tmp), cols.arrow_schema()) as w:
        for i in range(n_parts):
            w.write_table(pq.read_table(str(parts_dir / f"part-{i:06d}.parquet")))
    os.replace(tmp, out)
    shutil.rmtree(parts_dir, ignore_errors=True)


class Progress:
    """A rich progress bar over input bytes (rows for Parquet) that shows responses/s."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = RichProgress(TextColumn("scoring"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                              TextColumn("{task.fields[rate]:>7.1f} responses/s"), TimeElapsedColumn(),
                              TimeRemainingColumn(), transient=False)
        self.p.start()
        self.task = self.p.add_task("scoring", total=max(total, 1), completed=start, rate=0.0)

    def update(self, completed: int, rate: float) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=completed, rate=rate)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
