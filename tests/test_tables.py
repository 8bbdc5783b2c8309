"""The one table reader (rubricate.data.tables): formats, physical line numbers, encodings, resume, row problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rubricate.data.tables import (Position, detect_format, open_table, read_rows, require_columns,
                                   strict_rows)
from rubricate.errors import InputError


def _rows(path: Path, **kw) -> list:
    with open_table(path, **kw) as t:
        return list(t.rows())


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return p


MULTI = 'id,text\n1,"first\nsecond\nthird"\n\n2,plain\n3,"a ""quoted"" word"\n'


def test_csv_rows_start_at_their_physical_line(tmp_path: Path) -> None:
    rows = _rows(_write(tmp_path, "m.csv", MULTI))
    assert [(r.line, r.values["id"]) for r in rows] == [(2, "1"), (6, "2"), (7, "3")]  # blank line 5 skipped
    assert rows[0].values["text"] == "first\nsecond\nthird"
    assert rows[2].values["text"] == 'a "quoted" word'
    assert all(r.problem is None for r in rows)
    assert [r.end.line for r in rows] == [4, 6, 7] and rows[-1].end.offset == len(MULTI.encode())


def test_bom_and_crlf_are_transparent(tmp_path: Path) -> None:
    p = _write(tmp_path, "b.csv", "\ufeffid,text\r\n1,caf\u00e9\r\n")
    with open_table(p) as t:
        assert t.columns == ["id", "text"]
        rows = list(t.rows())
    assert rows[0].values == {"id": "1", "text": "caf\u00e9"} and rows[0].line == 2
    j = _write(tmp_path, "b.jsonl", '\ufeff{"id": 1}\n')
    assert [(r.line, r.values) for r in _rows(j)] == [(1, {"id": 1})]


def test_each_format_gives_the_same_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [{"id": str(i), "text": f"answer {i}"} for i in range(5)]
    csv_p = _write(tmp_path, "t.csv", "id,text\n" + "".join(f"{d['id']},{d['text']}\n" for d in data))
    tsv_p = _write(tmp_path, "t.tsv", "id\ttext\n" + "".join(f"{d['id']}\t{d['text']}\n" for d in data))
    jsonl_p = _write(tmp_path, "t.jsonl", "".join(json.dumps(d) + "\n" for d in data))
    pq_p = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(data), str(pq_p), row_group_size=2)
    for p, first_line in ((csv_p, 2), (tsv_p, 2), (jsonl_p, 1), (pq_p, 1)):
        rows = _rows(p)
        assert [r.values for r in rows] == data, p.name
        assert [r.line for r in rows] == list(range(first_line, first_line + 5)), p.name
    with open_table(pq_p, columns=["text", "nope"]) as t:
        assert t.columns == ["id", "text"] and t.num_rows == 5
        assert next(t.rows()).values == {"text": "answer 0"}  # only the asked (and existing) columns are read


@pytest.mark.parametrize("name", ["r.csv", "r.jsonl", "r.parquet"])
def test_resume_from_a_position_reads_exactly_the_rest(tmp_path: Path, name: str) -> None:
    data = [{"id": str(i), "text": f"line one {i}\nline two" if i % 2 else f"t{i}"} for i in range(9)]
    p = tmp_path / name
    if name.endswith(".csv"):
        import csv

        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", "text"])
            w.writeheader()
            w.writerows(data)
    elif name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(d) + "\n" for d in data), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(data), str(p), row_group_size=2)
    full = _rows(p)
    for k in (1, 4, 8):
        start = Position.from_dict(json.loads(json.dumps(full[k - 1].end.to_dict())))  # as a progress file keeps it
        rest = _rows(p, start=start)
        assert [(r.line, r.values) for r in rest] == [(r.line, r.values) for r in full[k:]], k
        assert [r.end for r in rest] == [r.end for r in full[k:]]
    assert _rows(p, start=full[-1].end) == []


def test_unterminated_quote_is_a_problem_row_and_never_swallows_the_next(tmp_path: Path) -> None:
    p = _write(tmp_path, "q.csv", 'id,text\n1,"never closed\n2,next row\n3,"fine",x\n4,"ok"\n')
    rows = _rows(p)
    assert [(r.line, r.values["id"], r.problem and r.problem.kind) for r in rows] == [
        (2, "1", "quote"), (3, "2", None), (4, "3", "too_many_fields"), (5, "4", None)]
    assert "line 2" in rows[0].problem.message and "line 3" in rows[0].problem.message
    assert rows[0].values["text"] == "never closed"
    # a quote that closes later, followed by text: also caught at its first line
    p = _write(tmp_path, "q2.csv", 'id,text\n1,"opens here\n2,"closes" here\n3,last\n')
    rows = _rows(p)
    assert [(r.line, r.problem.kind if r.problem else None) for r in rows][0] == (2, "quote")
    assert [r.values["id"] for r in rows if r.problem is None] == ["3"]
    assert {r.line for r in rows} == {2, 3, 4}  # every line is accounted for


def test_field_count_problems_and_padding(tmp_path: Path) -> None:
    p = _write(tmp_path, "f.csv", "a,b,c\n1,2,3\n1,2\n1,2,3,4\n")
    rows = _rows(p)
    assert [r.problem.kind if r.problem else None for r in rows] == [None, "too_few_fields", "too_many_fields"]
    assert rows[1].values == {"a": "1", "b": "2", "c": ""}
    e = rows[2].error(p)
    assert e.line == 4 and e.file == str(p) and "4 fields but the header has 3" in str(e)


def test_undecodable_bytes_name_line_and_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "u.csv", b'id,text\n1,fine\n2,"caf\xe9\nau lait"\n')
    rows = _rows(p)
    bad = rows[1]
    assert bad.line == 3 and bad.problem.kind == "encoding" and bad.problem.column == "text"
    assert "0xe9" in bad.problem.message and "line 3" in bad.problem.message
    assert bad.values["text"] == "caf\ufffd\nau lait"  # still readable, never a lone surrogate
    j = _write(tmp_path, "u.jsonl", b'{"id": 1}\n{"id": 2, "text": "\xff"}\n')
    r = _rows(j)[1]
    assert (r.line, r.problem.kind, r.values) == (2, "encoding", {"id": 2, "text": "\ufffd"})
    with pytest.raises(InputError, match="header") as ei:
        open_table(_write(tmp_path, "h.csv", b"id,t\xe9xt\n1,x\n"))
    assert ei.value.line == 1


def test_jsonl_problems_are_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "j.jsonl", '{"a": 1}\n\n{"a": \n[1, 2]\n{"a": 2}\n')
    rows = _rows(p)
    assert [(r.line, r.problem.kind if r.problem else None) for r in rows] == [
        (1, None), (3, "json"), (4, "json"), (5, None)]
    assert "invalid JSON" in rows[1].problem.message and "list" in rows[2].problem.message
    with pytest.raises(InputError, match="invalid JSON") as ei:
        list(read_rows(p))
    assert ei.value.line == 3


def test_file_level_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        open_table(_write(tmp_path, "e.csv", ""))
    with pytest.raises(InputError, match="duplicate column"):
        open_table(_write(tmp_path, "d.csv", "a,a\n1,2\n"))
    with pytest.raises(InputError, match="not found"):
        open_table(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="Parquet"):
        open_table(_write(tmp_path, "x.parquet", b"not parquet"))


def test_detect_format_has_one_suffix_map(tmp_path: Path) -> None:
    assert [detect_format(f"x{s}") for s in (".csv", ".TSV", ".tab", ".jsonl", ".ndjson", ".json", ".pq")] == [
        "csv", "tsv", "tsv", "jsonl", "jsonl", "jsonl", "parquet"]
    assert detect_format("x.txt", "tsv") == "tsv"
    with pytest.raises(InputError, match="unknown file type"):
        detect_format("x.xlsx")
    with pytest.raises(InputError, match="unknown format"):
        detect_format("x.csv", "xlsx")


def test_strict_rows_and_require_columns(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.csv", "a,b\n1\n2,3\n")
    cols, rows = strict_rows(p, tolerate=("too_few_fields",))
    assert cols == ["a", "b"] and list(rows) == [(2, {"a": "1", "b": ""}), (3, {"a": "2", "b": "3"})]
    with pytest.raises(InputError, match="2 fields|1 fields") as ei:
        list(strict_rows(p)[1])
    assert ei.value.line == 2
    with pytest.raises(InputError, match="missing column") as ei:
        require_columns(p, cols, ["a", "text"], hint="; use --text-column")
    assert (ei.value.column, ei.value.line) == ("text", 1) and "--text-column" in str(ei.value)


def test_no_quoting_reads_one_row_per_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.tsv", 'id\ttext\n1\t"opens and never closes\n2\tnext\n')
    rows = _rows(p, quote=False)
    assert [(r.line, r.values["text"]) for r in rows] == [(2, '"opens and never closes'), (3, "next")]
