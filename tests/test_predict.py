"""`rubricate predict`: formats, problem rows with line numbers, bounded memory, exact resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rubricate.errors import InputError
from rubricate.batch import READERS, PredictOptions, predict_file, sidecar_paths
from serve_fakes import FakeScorer, make_tiny_checkpoint


def _rows(n: int) -> list[dict]:
    return [{"task_id": "sci-1" if i % 3 else "read-2", "text": f"answer number {i} about gas density",
             "response_id": f"id{i}"} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["task_id", "text", "response_id"])
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=7)
    return path


def _read(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


@pytest.mark.parametrize("fin,fout", [("csv", "jsonl"), ("jsonl", "csv"), ("parquet", "parquet"), ("csv", "parquet")])
def test_formats_scores_and_problem_rows(tmp_path: Path, fin: str, fout: str) -> None:
    rows = _rows(40)
    rows[5]["task_id"] = "no-such-task"
    rows[9]["text"] = "   "
    inp = _write(tmp_path / f"in.{fin}", rows)
    out = tmp_path / f"out.{fout}"
    s = predict_file(FakeScorer(), inp, out, PredictOptions(chunk_size=8, progress=False, review_confidence=0.9))
    assert (s.scored, s.problems, s.complete) == (38, 2, True)
    got = _read(out)
    assert [r["response_id"] for r in got] == [r["response_id"] for i, r in enumerate(rows) if i not in (5, 9)]
    first = got[0]
    if fout == "jsonl":
        assert set(first["scores"]) == {"score"} and set(first["probs"]) == {"score>=1", "score>=2", "score>=3"}
        assert first["gate_weights"] == [[0.7, 0.3], [0.4, 0.6]]
    else:
        assert "prob.score>=1" in first and "score.E1" in first and json.loads(first["gate_weights"])
    assert {"confidence", "needs_review", "model_id", "model_version"} <= set(first)
    assert str(first["model_version"]) == "v1"
    errs = [json.loads(x) for x in Path(s.errors).read_text().splitlines()]
    key = "row" if fin == "parquet" else "line"
    # CSV and JSONL: physical lines (the CSV header is line 1); Parquet: 1-based row numbers
    offset = {"csv": 2, "jsonl": 1, "parquet": 1}[fin]
    assert [(e[key], e["field"]) for e in errs] == [(5 + offset, "task_id"), (9 + offset, "text")]
    assert "unknown task 'no-such-task'" in errs[0]["error"]


def test_csv_line_numbers_survive_multiline_fields(tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text('task_id,text,response_id\nsci-1,"first line\nsecond line",a\nsci-1,,b\nnope,x,c\n', encoding="utf-8")
    s = predict_file(FakeScorer(), inp, tmp_path / "out.csv", PredictOptions(progress=False))
    errs = [json.loads(x) for x in Path(s.errors).read_text().splitlines()]
    assert [(e["line"], e["field"]) for e in errs] == [(4, "text"), (5, "task_id")]
    assert _read(tmp_path / "out.csv")[0]["line"] == "2"


def test_missing_column_is_an_error_naming_the_column(tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text("task_id,answer\nsci-1,hello\n", encoding="utf-8")
    with pytest.raises(InputError, match="text") as e:
        predict_file(FakeScorer(), inp, tmp_path / "out.csv", PredictOptions(progress=False))
    assert e.value.column == "text" and e.value.line == 1
    s = predict_file(FakeScorer(), inp, tmp_path / "out2.csv", PredictOptions(progress=False, text_column="answer"))
    assert s.scored == 1


class CrashingScorer(FakeScorer):
    """Dies (like a killed process) on its n-th predict call."""

    def __init__(self, die_on: int) -> None:
        super().__init__()
        self.die_on = die_on

    def predict(self, *a, **k):
        if self.calls + 1 >= self.die_on:
            raise KeyboardInterrupt("simulated kill")
        return super().predict(*a, **k)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_resume_after_interruption_is_exact(tmp_path: Path, fmt: str) -> None:
    rows = _rows(50)
    rows[13]["text"] = ""
    inp = _write(tmp_path / "in.jsonl", rows)
    opt = PredictOptions(chunk_size=6, progress=False)
    ref = tmp_path / f"ref.{fmt}"
    predict_file(FakeScorer(), inp, ref, opt)
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        predict_file(CrashingScorer(die_on=4), inp, out, opt)
    prog, errs, parts = sidecar_paths(out)
    assert json.loads(prog.read_text())["state"]["rows"] == 18  # 3 chunks committed
    if fmt != "parquet":  # a torn write after the last commit (the kill hit mid-append)
        with out.open("ab") as f:
            f.write(b'{"response_id": "torn')
    second = FakeScorer()
    s = predict_file(second, inp, out, opt)
    assert s.resumed_from_rows == 18 and s.complete
    assert second.calls == 6  # only the remaining 32 rows (6 chunks) were scored again
    assert _read(out) == _read(ref)
    assert Path(s.errors).read_text() == sidecar_paths(ref)[1].read_text()
    assert not parts.exists()


def test_finished_output_is_not_redone_and_foreign_outputs_are_protected(tmp_path: Path) -> None:
    inp = _write(tmp_path / "in.csv", _rows(10))
    out = tmp_path / "out.csv"
    predict_file(FakeScorer(), inp, out, PredictOptions(progress=False))
    again = FakeScorer()
    s = predict_file(again, inp, out, PredictOptions(progress=False))
    assert s.complete and s.scored == 10 and again.calls == 0
    _write(inp, _rows(11))  # the input changed: resuming would mix two inputs
    with pytest.raises(InputError, match="--overwrite"):
        predict_file(FakeScorer(), inp, out, PredictOptions(progress=False))
    other = tmp_path / "other.csv"
    other.write_text("precious\n")
    with pytest.raises(InputError, match="exists"):
        predict_file(FakeScorer(), inp, other, PredictOptions(progress=False))
    assert other.read_text() == "precious\n"
    s = predict_file(FakeScorer(), inp, out, PredictOptions(progress=False, overwrite=True))
    assert s.scored == 11 and len(_read(out)) == 11


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_readers_stream_in_bounded_chunks(tmp_path: Path, fmt: str) -> None:
    import tracemalloc

    n = 40_000
    big = "x" * 400
    rows = [{"task_id": "sci-1", "text": f"{big} {i}", "response_id": str(i)} for i in range(n)]
    inp = _write(tmp_path / f"big.{fmt}", rows)
    del rows
    size = inp.stat().st_size
    assert size > 10e6
    import pyarrow as pa

    pool = pa.default_memory_pool()
    arrow_before = pool.max_memory() or 0
    tracemalloc.start()
    count, biggest = 0, 0
    for chunk, _pos in READERS[fmt](inp, {}, PredictOptions(chunk_size=500)):
        count += len(chunk)
        biggest = max(biggest, len(chunk))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n and biggest == 500
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB while reading a {size / 1e6:.1f} MB file"
    if fmt == "parquet":  # Arrow's buffers live outside tracemalloc's view
        assert (pool.max_memory() or 0) - arrow_before < size / 4


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("predict"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rubricate.cli import main; main()", *args]


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    n = 1500
    rows = _rows(n)
    rows[777]["task_id"] = "nope"
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.csv"
    prog, errs, _ = sidecar_paths(out)
    args = _cli("predict", "--model", str(tiny_checkpoint), "--input", str(inp), "--output", str(out),
                "--chunk-size", "50", "--no-progress", "--threads", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done_before = 0
    while time.time() < deadline:
        if prog.exists():
            try:
                done_before = json.loads(prog.read_text())["state"]["rows"]
            except (json.JSONDecodeError, KeyError):
                done_before = 0
            if done_before >= 200:
                break
        if proc.poll() is not None:
            pytest.fail(f"predict ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 200 <= done_before < n, "the kill must land mid-run"
    partial = _read(out)
    assert len(partial) >= done_before - 1  # everything committed before the kill is there
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed after" in res.stderr
    got = _read(out)
    ids = [r["response_id"] for r in got]
    assert len(ids) == len(set(ids)) == n - 1
    assert set(ids) == {r["response_id"] for i, r in enumerate(rows) if i != 777}
    assert ids == sorted(ids, key=lambda x: int(x[2:]))  # input order kept across the restart
    assert [json.loads(x)["line"] for x in errs.read_text().splitlines()] == [778]
    assert "1 row(s) with problems" in res.stderr


# --- as strict as the server (issue 16 item 9) ----------------------------------------------------------------
def test_jsonl_non_string_nul_and_invisible_text_are_problem_rows(tmp_path: Path) -> None:
    rows = [{"task_id": "sci-1", "text": "a fine answer", "response_id": "ok1"},
            {"task_id": "sci-1", "text": 5, "response_id": "num"},
            {"task_id": "sci-1", "text": "nul\x00inside", "response_id": "nul"},
            {"task_id": "sci-1", "text": "\u200b\ufeff\u2060", "response_id": "invisible"},
            {"task_id": "sci-1", "text": "another answer", "response_id": "ok2"}]
    inp = _write(tmp_path / "in.jsonl", rows)
    s = predict_file(FakeScorer(), inp, tmp_path / "out.jsonl", PredictOptions(progress=False))
    assert (s.scored, s.problems) == (2, 3)
    assert [r["response_id"] for r in _read(tmp_path / "out.jsonl")] == ["ok1", "ok2"]
    errs = [json.loads(x) for x in Path(s.errors).read_text().splitlines()]
    assert [(e["line"], e["response_id"], e["field"]) for e in errs] == [(2, "num", "text"), (3, "nul", "text"),
                                                                        (4, "invisible", "text")]
    assert "must be a string, got int" in errs[0]["error"] and "NUL" in errs[1]["error"]
    assert "empty response text" in errs[2]["error"]
    assert all(e["file"] == str(inp) for e in errs)


def test_csv_unterminated_quote_is_a_counted_problem_row_and_the_next_row_is_scored(tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text('task_id,text,response_id\nsci-1,first,a\nsci-1,"never closed,b\nsci-1,next,c\n'
                   'sci-1,"stray" quote,d\nsci-1,last,e\n', encoding="utf-8")
    s = predict_file(FakeScorer(), inp, tmp_path / "out.csv", PredictOptions(progress=False))
    assert [r["response_id"] for r in _read(tmp_path / "out.csv")] == ["a", "c", "e"]
    errs = [json.loads(x) for x in Path(s.errors).read_text().splitlines()]
    assert [(e["line"], e["response_id"]) for e in errs] == [(3, "line-3"), (5, "d")]
    assert all("quote" in e["error"] for e in errs)
    assert (s.scored, s.problems) == (3, 2)


def test_missing_column_fails_before_any_output_or_progress_file(tmp_path: Path) -> None:
    for name, body in (("in.csv", "task_id,answer\nsci-1,hello\n"), ("in.parquet", None)):
        inp = tmp_path / name
        if body is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([{"task_id": "sci-1", "answer": "hi"}]), str(inp))
        else:
            inp.write_text(body, encoding="utf-8")
        out = tmp_path / f"out-{name}.csv"
        with pytest.raises(InputError, match="missing column") as e:
            predict_file(FakeScorer(), inp, out, PredictOptions(progress=False))
        assert e.value.file == str(inp) and e.value.column == "text" and "text" in str(e.value)
        assert not out.exists() and not any(p.exists() for p in sidecar_paths(out))
        assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing but the input is left"
        inp.unlink()
