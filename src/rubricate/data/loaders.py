"""Loaders: real data files -> :class:`~rubricate.data.records.Record` lists.

Every loader reads the whole file strictly, through the one table reader (:mod:`rubricate.data.tables`): a problem is an :class:`~rubricate.errors.InputError` that
names the file, the *physical* line (the header is line 1; a quoted text spanning several lines counts
every line) and the column. Nothing is skipped silently. The cases checked everywhere are

* a missing column (reported at the header, line 1),
* a label that is not an integer, or out of the task's range (``Task.check_labels``),
* an empty response text (:func:`rubricate.data.text.is_blank`: invisible characters count as empty), a text
  that is not a string or holds a NUL,
* undecodable bytes (reported at the physical line that holds them),
* a duplicate ``(task_id, response_id)``,
* an unknown task id (when a :class:`~rubricate.tasks.TaskRegistry` is given).

An *empty label cell* is not an error: it means "not scored" and the label is left out of
``Record.labels`` (encoded as NaN and masked downstream). Use ``require_labels=True`` to forbid it.

Formats
-------
* :func:`load_table` - generic CSV / TSV / JSONL / Parquet with a column mapping, plus the native
  records JSONL written by :func:`rubricate.data.records.write_records`;
* :func:`load_asap_sas` - ASAP-SAS ``train.tsv`` (10 items, ``Score1`` official, ``Score2`` second rater);
* :func:`load_asap_aes` - ASAP-AES ``training_set_rel3.tsv`` (8 prompts; one record per physical line);
* :func:`load_asap_pp` - ASAP++ trait scores joined on ``essay_id`` with the ASAP-AES texts.

:data:`LOADERS` maps the CLI's ``--format`` names to these functions (:func:`load_data` dispatches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

from rubricate.data.records import Record
from rubricate.data.tables import detect_format, require_columns, strict_rows
from rubricate.data.text import text_problem
from rubricate.errors import InputError
from rubricate.tasks import TaskRegistry

TableFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet", "records"]
#: Row problems the loaders accept: a row with too few fields is padded with empty cells ("not scored"), as a
#: spreadsheet export that drops trailing empty cells needs. Every other row problem is an InputError.
_LENIENT = ("too_few_fields",)


# --- value checks -----------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _to_int(value: Any) -> int:
    """Integer label from a cell: ``2``, ``"2"``, ``2.0`` and ``"2.0"`` are 2; ``2.5``, ``"two"``, True are errors."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer score, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer score, got {value!r}")
    s = str(value).strip()
    try:
        return int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            raise ValueError(f"expected an integer score, got {s!r}") from None
        if f.is_integer():
            return int(f)
        raise ValueError(f"expected an integer score, got {s!r}") from None


def _id_str(value: Any) -> str:
    """Ids as strings; a float id read from Parquet/JSON like 12.0 becomes '12'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class _Builder:
    """Turns raw rows into records while enforcing the checks every loader shares."""

    def __init__(self, path: Path, registry: TaskRegistry | None, task_field: str | None) -> None:
        self.path = path
        self.registry = registry
        self.task_field = task_field
        self.seen: dict[tuple[str, str], int] = {}
        self.records: list[Record] = []

    def labels(
        self, row: Mapping[str, Any], mapping: Mapping[str, str], line: int, *, required: bool = False
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, col in mapping.items():
            value = row.get(col)
            if _is_missing(value):
                if required:
                    raise InputError(f"missing label '{key}'", file=self.path, line=line, column=col)
                continue
            try:
                out[key] = _to_int(value)
            except ValueError as e:
                raise InputError(f"label '{key}': {e}", file=self.path, line=line, column=col) from None
        return out

    def add(
        self,
        *,
        line: int,
        response_id: str,
        task_id: str,
        text: Any,
        labels: dict[str, int],
        rater2: dict[str, int] | None,
        metadata: dict[str, Any],
        id_column: str,
        text_column: str,
        label_columns: Mapping[str, str],
        rater2_columns: Mapping[str, str] | None,
    ) -> Record:
        if not response_id:
            raise InputError("empty response id", file=self.path, line=line, column=id_column)
        if not task_id:
            raise InputError("empty task id", file=self.path, line=line, column=self.task_field)
        if text is None or (isinstance(text, float) and math.isnan(text)):
            raise InputError("empty response text", file=self.path, line=line, column=text_column)
        bad = text_problem(text, "response text")
        if bad:
            raise InputError(bad, file=self.path, line=line, column=text_column)
        key = (task_id, response_id)
        if key in self.seen:
            raise InputError(
                f"duplicate response id '{response_id}' for task '{task_id}' (first seen on line {self.seen[key]})",
                file=self.path, line=line, column=id_column,
            )
        if self.registry is not None:
            if task_id not in self.registry:
                raise InputError(
                    f"unknown task '{task_id}' (known: {', '.join(sorted(self.registry.ids)[:20])})",
                    file=self.path, line=line, column=self.task_field,
                )
            task = self.registry.get(task_id)
            for which, values, cols in (("label", labels, label_columns), ("rater2", rater2 or {}, rater2_columns or {})):
                for k, v in values.items():
                    problems = task.check_labels({k: v})
                    if problems:
                        raise InputError(f"{which}: {problems[0]}", file=self.path, line=line, column=cols.get(k, k))
        self.seen[key] = line
        rec = Record(response_id=response_id, task_id=task_id, text=str(text), labels=labels,
                     rater2=rater2 or None, metadata=metadata)
        self.records.append(rec)
        return rec


# --- generic tables -------------------------------------------------------------------------------------------
def load_table(
    path: str | Path,
    *,
    task_id: str | None = None,
    task_column: str = "task_id",
    id_column: str = "response_id",
    text_column: str = "text",
    label_columns: Mapping[str, str] | None = None,
    rater2_columns: Mapping[str, str] | None = None,
    group_columns: Sequence[str] | None = None,
    registry: TaskRegistry | None = None,
    sep: str | None = None,
    format: TableFormat = "auto",
    encoding: str = "utf-8",
    require_labels: bool = False,
) -> list[Record]:
    """Load a CSV/TSV/JSONL/Parquet file of responses with a column mapping.

    ``task_id`` fixes one task for every row; otherwise ``task_column`` holds it. ``label_columns`` maps a
    rubric label key (criterion or scale id) to its column; when omitted and a registry is given, every
    label key of the row's task found as a column is used (so a file with columns ``E1, E2, score`` needs no
    mapping). ``rater2_columns`` does the same for a second rater; ``group_columns`` are copied into
    ``metadata`` for subgroup analysis. A ``.jsonl`` file whose rows carry a ``labels`` object (the native
    format of :func:`~rubricate.data.records.write_records`) is read as records.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    fmt = format if format == "records" else detect_format(path, None if format == "auto" else format)
    group_columns = list(group_columns or [])

    if fmt == "records":
        header, rows = strict_rows(path, "jsonl", encoding=encoding)
    else:
        header, rows = strict_rows(path, fmt, encoding=encoding, sep=sep, tolerate=_LENIENT)
    if fmt == "jsonl" and not label_columns:
        first = next(rows, None)  # rows carrying a ``labels`` object are native records
        if first is not None and isinstance(first[1].get("labels"), dict):
            fmt = "records"
        rows = chain([first] if first is not None else [], rows)

    if fmt == "records":
        return _build_native(path, rows, registry)

    builder = _Builder(path, registry, task_column if task_id is None else None)
    needed = [id_column, text_column] + ([task_column] if task_id is None else []) + group_columns
    explicit_labels = dict(label_columns) if label_columns else None  # None: columns named like label keys
    if header is not None:
        require_columns(path, header, needed + list((explicit_labels or {}).values())
                         + list((rater2_columns or {}).values()), 1)

    for line, row in rows:
        if header is None:
            require_columns(path, list(row), needed + list((explicit_labels or {}).values()), line)
        tid = task_id if task_id is not None else _id_str(row.get(task_column, ""))
        mapping = explicit_labels
        if mapping is None:
            mapping = {}
            if registry is not None and tid in registry:
                cols = header if header is not None else list(row)
                mapping = {k: k for k in registry.get(tid).label_keys if k in cols}
        labels = builder.labels(row, mapping, line, required=require_labels)
        r2 = builder.labels(row, rater2_columns, line) if rater2_columns else None
        meta = {g: (None if _is_missing(row.get(g)) else row.get(g)) for g in group_columns}
        builder.add(line=line, response_id=_id_str(row.get(id_column, "")), task_id=tid, text=row.get(text_column),
                    labels=labels, rater2=r2, metadata=meta, id_column=id_column, text_column=text_column,
                    label_columns=mapping, rater2_columns=rater2_columns)
    return builder.records


def _build_native(path: Path, rows: Iterable[tuple[int, dict[str, Any]]], registry: TaskRegistry | None) -> list[Record]:
    """Native records JSONL (``{response_id, task_id, text, labels, rater2, metadata}``), strictly checked."""
    builder = _Builder(path, registry, "task_id")
    for line, row in rows:
        require_columns(path, list(row), ["response_id", "task_id", "text"], line)
        values: dict[str, dict[str, int]] = {}
        for field in ("labels", "rater2"):
            raw = row.get(field) or {}
            if not isinstance(raw, dict):
                raise InputError(f"'{field}' must be an object of label -> integer", file=path, line=line, column=field)
            out = {}
            for k, v in raw.items():
                if _is_missing(v):
                    continue
                try:
                    out[str(k)] = _to_int(v)
                except ValueError as e:
                    raise InputError(f"{field} '{k}': {e}", file=path, line=line, column=f"{field}.{k}") from None
            values[field] = out
        meta = row.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InputError("'metadata' must be an object", file=path, line=line, column="metadata")
        keymap = {k: f"labels.{k}" for k in values["labels"]}
        builder.add(line=line, response_id=_id_str(row["response_id"]), task_id=_id_str(row["task_id"]),
                    text=row["text"], labels=values["labels"], rater2=values["rater2"] or None, metadata=dict(meta),
                    id_column="response_id", text_column="text", label_columns=keymap,
                    rater2_columns={k: f"rater2.{k}" for k in values["rater2"]})
    return builder.records


# --- ASAP-SAS ------------------------------------------------------------------------------------------------
ASAP_SAS_SETS = tuple(range(1, 11))
_SAS_COLUMNS = ("Id", "EssaySet", "Score1", "Score2", "EssayText")


def asap_sas_task_id(essay_set: int) -> str:
    return f"asap-sas-{essay_set}"


def _check_sets(sets: Iterable[int] | None, allowed: Sequence[int], what: str) -> set[int]:
    chosen = set(allowed) if sets is None else {int(s) for s in sets}
    bad = sorted(chosen - set(allowed))
    if bad:
        raise ValueError(f"{what} has no sets {bad} (sets: {allowed[0]}-{allowed[-1]})")
    return chosen


def load_asap_sas(
    path: str | Path, sets: Iterable[int] | None = None, *, registry: TaskRegistry | None = None
) -> list[Record]:
    """ASAP-SAS ``train.tsv`` -> records ``asap-sas-N`` with ``labels={"score": Score1}`` (official) and
    ``rater2={"score": Score2}``; ``metadata={"essay_set": N}``.

    The file is tab-separated with CSV quoting (texts containing ``"`` are wrapped in quotes with inner quotes
    doubled), so it is read with :mod:`csv`, never split naively. ``^p`` paragraph marks are kept verbatim.
    """
    path = Path(path)
    chosen = _check_sets(sets, ASAP_SAS_SETS, "ASAP-SAS")
    header, rows = strict_rows(path, "tsv", encoding="ascii", tolerate=_LENIENT)
    require_columns(path, header, _SAS_COLUMNS, 1)
    builder = _Builder(path, registry, "EssaySet")
    for line, row in rows:
        try:
            essay_set = _to_int(row["EssaySet"])
        except ValueError as e:
            raise InputError(str(e), file=path, line=line, column="EssaySet") from None
        if essay_set not in ASAP_SAS_SETS:
            raise InputError(f"essay set {essay_set} is not 1-10", file=path, line=line, column="EssaySet")
        if essay_set not in chosen:
            continue
        labels = builder.labels(row, {"score": "Score1"}, line, required=True)
        r2 = builder.labels(row, {"score": "Score2"}, line)
        _check_range(path, line, labels, "Score1", 0, 3)
        _check_range(path, line, r2, "Score2", 0, 3)
        builder.add(line=line, response_id=_id_str(row["Id"]), task_id=asap_sas_task_id(essay_set),
                    text=row["EssayText"], labels=labels, rater2=r2, metadata={"essay_set": essay_set},
                    id_column="Id", text_column="EssayText", label_columns={"score": "Score1"},
                    rater2_columns={"score": "Score2"})
    return builder.records


def _check_range(path: Path, line: int, values: Mapping[str, int], column: str, lo: int, hi: int) -> None:
    """A dataset-level sanity range, checked even without a task registry."""
    for v in values.values():
        if not lo <= v <= hi:
            raise InputError(f"score {v} outside the dataset's range {lo}-{hi}", file=path, line=line, column=column)


# --- ASAP-AES ------------------------------------------------------------------------------------------------
ASAP_AES_SETS = tuple(range(1, 9))
_AES_COLUMNS = (
    "essay_id", "essay_set", "essay", "rater1_domain1", "rater2_domain1", "rater3_domain1", "domain1_score",
    "rater1_domain2", "rater2_domain2", "domain2_score",
    *(f"rater{r}_trait{t}" for r in (1, 2, 3) for t in range(1, 7)),
)
#: Trait ids of sets 7 and 8 (rater columns ``raterN_traitK``), in order.
AES_TRAITS: dict[int, tuple[str, ...]] = {
    7: ("ideas", "organization", "style", "conventions"),
    8: ("ideas_content", "organization", "voice", "word_choice", "sentence_fluency", "conventions"),
}
#: Per-rater domain-1 scale of each set, as found in the data (see the dataset README), and the resolved score's.
AES_RATER_RANGE: dict[int, tuple[int, int]] = {1: (1, 6), 2: (1, 6), 3: (0, 3), 4: (0, 3), 5: (0, 4), 6: (0, 4),
                                                7: (0, 12), 8: (0, 30)}
AES_SCORE_RANGE: dict[int, tuple[int, int]] = {1: (2, 12), 2: (1, 6), 3: (0, 3), 4: (0, 3), 5: (0, 4), 6: (0, 4),
                                                7: (0, 24), 8: (0, 60)}


def asap_aes_task_id(essay_set: int) -> str:
    return f"asap-aes-{essay_set}"


def _unquote(field: str) -> str:
    """Undo CSV quoting of one field (wrapping quotes, doubled inner quotes); an unclosed quote keeps its text."""
    if len(field) >= 2 and field.startswith('"') and field.endswith('"'):
        return field[1:-1].replace('""', '"')
    if field.startswith('"'):
        return field[1:].replace('""', '"')
    return field


def load_asap_aes(
    path: str | Path,
    sets: Iterable[int] | None = None,
    *,
    registry: TaskRegistry | None = None,
    encoding: str = "cp1252",
) -> list[Record]:
    """ASAP-AES ``training_set_rel3.tsv`` -> 12,978 records ``asap-aes-N``.

    Parsing: one record per physical line, read without CSV quoting (``open_table(quote=False)``: with quoting,
    the unclosed quote of essay 10534 would take two essays with it), then each essay unquoted. Decoded as
    Windows-1252; the bytes it leaves undefined become U+FFFD.

    Labels (see ``docs/task-files.md``, section ASAP-AES), chosen so that every ``rater2`` key sits on the
    same scale as the ``labels`` key of the same name:

    * ``score`` = ``domain1_score``, the official resolved score (set 1: r1+r2 on 2-12; set 7: 0-24; ...);
    * ``rater_score`` = ``rater1_domain1`` with ``rater2["rater_score"] = rater2_domain1`` - the per-rater
      rubric scale (set 1: 1-6), used for human-human agreement;
    * set 2: ``conventions`` = ``domain2_score`` (1-4; equals rater 1), ``rater2["conventions"]`` = rater 2;
    * sets 7 and 8: one label per trait (:data:`AES_TRAITS`) from rater 1, rater 2's traits in ``rater2``
      (set 8's rater-3 traits go to ``metadata["rater3"]``).
    """
    path = Path(path)
    chosen = _check_sets(sets, ASAP_AES_SETS, "ASAP-AES")
    # one record per physical line, never csv quoting: essay 10534 opens a quote it never closes; cp1252 leaves
    # 0x81/0x8D/0x8F/0x90/0x9D undefined (the file has 78 x 0x9D from old mojibake): they become U+FFFD
    header, rows = strict_rows(path, "tsv", encoding=encoding, quote=False, tolerate=("encoding",))
    require_columns(path, header, _AES_COLUMNS[:10], 1)
    builder = _Builder(path, registry, "essay_set")
    for line, row in rows:
        try:
            essay_set = _to_int(row["essay_set"])
        except ValueError as e:
            raise InputError(str(e), file=path, line=line, column="essay_set") from None
        if essay_set not in ASAP_AES_SETS:
            raise InputError(f"essay set {essay_set} is not 1-8", file=path, line=line, column="essay_set")
        if essay_set not in chosen:
            continue
        lab_map = {"score": "domain1_score", "rater_score": "rater1_domain1"}
        r2_map = {"rater_score": "rater2_domain1"}
        if essay_set == 2:
            lab_map["conventions"] = "domain2_score"
            r2_map["conventions"] = "rater2_domain2"
        for t, name in enumerate(AES_TRAITS.get(essay_set, ()), start=1):
            lab_map[name] = f"rater1_trait{t}"
            r2_map[name] = f"rater2_trait{t}"
        labels = builder.labels(row, lab_map, line)
        if "score" not in labels:
            raise InputError("missing resolved score", file=path, line=line, column="domain1_score")
        r2 = builder.labels(row, r2_map, line)
        _check_range(path, line, {"score": labels["score"]}, "domain1_score", *AES_SCORE_RANGE[essay_set])
        for k, col in (("rater_score", "rater1_domain1"),):
            _check_range(path, line, {k: labels[k]} if k in labels else {}, col, *AES_RATER_RANGE[essay_set])
            _check_range(path, line, {k: r2[k]} if k in r2 else {}, "rater2_domain1", *AES_RATER_RANGE[essay_set])
        meta: dict[str, Any] = {"essay_set": essay_set}
        if essay_set in AES_TRAITS:
            r3 = builder.labels(row, {n: f"rater3_trait{t}" for t, n in enumerate(AES_TRAITS[essay_set], 1)}, line)
            if r3:
                meta["rater3"] = r3
        if not _is_missing(row.get("rater3_domain1")):
            meta["rater3_domain1"] = builder.labels(row, {"v": "rater3_domain1"}, line)["v"]
        builder.add(line=line, response_id=_id_str(row["essay_id"]), task_id=asap_aes_task_id(essay_set),
                    text=_unquote(row["essay"]), labels=labels, rater2=r2, metadata=meta, id_column="essay_id",
                    text_column="essay", label_columns=lab_map, rater2_columns=r2_map)
    return builder.records


# --- ASAP++ ---------------------------------------------------------------------------------------------------
ASAP_PP_SETS = tuple(range(1, 7))
#: Trait columns of ASAP++ per prompt (Mathias & Bhattacharyya 2018); ``score`` (= domain1_score) comes first.
ASAP_PP_TRAITS: dict[int, tuple[str, ...]] = {
    1: ("content", "organization", "word_choice", "sentence_fluency", "conventions"),
    2: ("content", "organization", "word_choice", "sentence_fluency", "conventions"),
    **{s: ("content", "prompt_adherence", "language", "narrativity") for s in (3, 4, 5, 6)},
}


def asap_pp_task_id(essay_set: int) -> str:
    return f"asap-pp-{essay_set}"


def load_asap_pp(
    pp_csv: str | Path,
    aes_tsv: str | Path | None = None,
    sets: Iterable[int] | None = None,
    *,
    registry: TaskRegistry | None = None,
) -> list[Record]:
    """ASAP++ trait scores joined on ``essay_id`` with the ASAP-AES texts -> multi-trait records ``asap-pp-N``.

    Labels: ``score`` (the holistic ``domain1_score``) plus the prompt's traits (:data:`ASAP_PP_TRAITS`).
    ASAP++ has one annotator, so ``rater2`` is None. ``metadata`` keeps ``essay_set`` and the source repository's
    ``split`` as ``pp_split``. ``aes_tsv`` defaults to ``../asap-aes/training_set_rel3.tsv`` next to the ASAP++ folder.
    """
    pp_csv = Path(pp_csv)
    aes_tsv = Path(aes_tsv) if aes_tsv is not None else pp_csv.parent.parent / "asap-aes" / "training_set_rel3.tsv"
    if not aes_tsv.is_file():
        raise InputError("ASAP-AES file needed for the essay texts was not found (pass aes_tsv=)", file=aes_tsv)
    chosen = _check_sets(sets, ASAP_PP_SETS, "ASAP++")
    texts = {r.response_id: r for r in load_asap_aes(aes_tsv, sets=chosen)}
    header, rows = strict_rows(pp_csv, "csv", tolerate=_LENIENT)
    require_columns(pp_csv, header, ["essay_id", "essay_set", "score"], 1)
    builder = _Builder(pp_csv, registry, "essay_set")
    for line, row in rows:
        try:
            essay_set = _to_int(row["essay_set"])
        except ValueError as e:
            raise InputError(str(e), file=pp_csv, line=line, column="essay_set") from None
        if essay_set not in ASAP_PP_SETS:
            raise InputError(f"essay set {essay_set} is not 1-6", file=pp_csv, line=line, column="essay_set")
        if essay_set not in chosen:
            continue
        traits = ASAP_PP_TRAITS[essay_set]
        require_columns(pp_csv, header, traits, 1)
        mapping = {"score": "score", **{t: t for t in traits}}
        labels = builder.labels(row, mapping, line)
        eid = _id_str(row["essay_id"])
        src = texts.get(eid)
        if src is None:
            raise InputError(f"essay {eid} not found in {aes_tsv}", file=pp_csv, line=line, column="essay_id")
        if src.metadata["essay_set"] != essay_set:
            raise InputError(f"essay {eid} is in set {src.metadata['essay_set']} of ASAP-AES, not {essay_set}",
                             file=pp_csv, line=line, column="essay_set")
        builder.add(line=line, response_id=eid, task_id=asap_pp_task_id(essay_set), text=src.text, labels=labels,
                    rater2=None, metadata={"essay_set": essay_set, "pp_split": row.get("split") or None},
                    id_column="essay_id", text_column="essay", label_columns=mapping, rater2_columns=None)
    return builder.records


# --- loader registry for the CLI ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoaderSpec:
    name: str
    func: Callable[..., list[Record]]
    help: str


LOADERS: dict[str, LoaderSpec] = {
    "table": LoaderSpec("table", load_table, "CSV/TSV/JSONL/Parquet with a column mapping (format from the suffix)"),
    "records": LoaderSpec("records", lambda path, **kw: load_table(path, format="records", **kw),
                          "native records JSONL (rubricate.data.records.write_records)"),
    "asap-sas": LoaderSpec("asap-sas", load_asap_sas, "ASAP-SAS train.tsv (10 items, Score1 + Score2)"),
    "asap-aes": LoaderSpec("asap-aes", load_asap_aes, "ASAP-AES training_set_rel3.tsv (8 prompts)"),
    "asap-pp": LoaderSpec("asap-pp", load_asap_pp, "ASAP++ asap_pp_trait_scores.csv joined with ASAP-AES texts"),
}


def load_data(format: str, path: str | Path, **options: Any) -> list[Record]:
    """Dispatch on a ``--format`` name; ``options`` are the loader's keyword arguments."""
    try:
        spec = LOADERS[format]
    except KeyError:
        raise ValueError(f"unknown data format '{format}' (formats: {', '.join(LOADERS)})") from None
    return spec.func(path, **options)
