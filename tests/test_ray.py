"""Scale-out on a real local Ray cluster (a head and a worker node on 127.0.0.1: the ``ray_cluster`` fixture).

* ``predict --engine ray``: a scoring actor SIGKILLed mid-run, then a rerun: no response id lost or
  duplicated, rows and problem rows identical to the local engine's; a folder of CSV and Parquet files with
  CSV part files; a changed input or a missing column refused before anything is written.
* ``agents score --engine ray`` against the scripted fake OpenAI server with two endpoints, one of which
  answers 500: failures recorded as failures, token accounting, and a rerun that scores nothing twice.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rubricate.batch import PredictOptions, predict_file, sidecar_paths
from rubricate.errors import InputError
from test_export import exported  # noqa: F401 - the tiny student with its ONNX graphs (fp32 and int8)
from test_predict import _read, _rows, _write

pytest.importorskip("ray", reason="Ray is not installed (pip install 'rubricate[scale]')")
pytest.importorskip("onnxruntime")


def _local(ck: Path, inp: Path, out: Path, opt: PredictOptions) -> list[dict]:
    """The local engine's rows with the Ray engine's default model (ONNX int8, one thread)."""
    from rubricate.student.scorer import Scorer

    predict_file(Scorer.from_pretrained(ck, backend="onnx", quantize=True, num_threads=1), inp, out, opt)
    return _read(out)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rubricate.cli import main; main()", *map(str, args)]


def _commits(out: Path) -> list[dict]:
    recs = []
    for p in sorted((out / "_blocks").glob("*.json")) if (out / "_blocks").exists() else []:
        try:
            recs.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    return recs


def _summary(output: str) -> dict:
    """The JSON summary ``agents score`` prints last (Ray may print worker log lines before it)."""
    start = output.rindex("\n{\n") + 1 if "\n{\n" in output else output.index("{")
    return json.loads(output[start: output.index("\n}", start) + 2])


def test_sigkill_of_a_scoring_actor_then_rerun_loses_and_duplicates_nothing(ray_cluster, exported, tmp_path):
    from rubricate.batch.ray_engine import RayPredictOptions, predict_on_ray, read_parts

    address, _ = ray_cluster
    n, chunk, batch = 6000, 100, 4
    rows = _rows(n)
    rows[777]["task_id"] = "nope"
    rows[4000]["text"] = "  "
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "scores"
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(_cli("predict", "--engine", "ray", "--address", address, "--model", exported, "--input",
                                 inp, "--output", out, "--chunk-size", chunk, "--batch-size", batch, "--workers", 2,
                                 "--no-progress"), stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(_commits(out)) < 3 and proc.poll() is None:
        time.sleep(0.02)
    commits = _commits(out)
    assert commits and proc.poll() is None, f"ended before the kill: {(tmp_path / 'driver.log').read_text()[-2000:]}"
    victim = commits[0]["pid"]
    os.kill(victim, signal.SIGKILL)  # a scoring actor, in the middle of the run
    assert len(commits) < n // chunk, "the kill must land mid-run"
    proc.wait(timeout=240)  # Ray restarts the actor and retries its block; a failed run is finished by the rerun
    log.close()
    opt = PredictOptions(chunk_size=chunk, batch_size=batch, progress=False)
    s = predict_on_ray(exported, inp, out, opt, RayPredictOptions(address=address, workers=2))
    assert s.complete and s.blocks == n // chunk and (s.scored, s.problems) == (n - 2, 2)
    assert s.skipped_blocks > 0 and s.resumed_from_rows == s.skipped_blocks * chunk  # finished parts are skipped
    got = list(read_parts(out))
    ids = [r["response_id"] for r in got]
    assert len(ids) == len(set(ids)) == n - 2
    assert set(ids) == {r["response_id"] for i, r in enumerate(rows) if i not in (777, 4000)}
    assert got == _local(exported, inp, tmp_path / "local.parquet", opt)  # identical rows, in input order
    local_errors = sidecar_paths(tmp_path / "local.parquet")[1].read_text()
    assert (out / "_problems.jsonl").read_text() == local_errors
    assert [json.loads(x)["line"] for x in local_errors.splitlines()] == [778, 4001]
    assert not list(out.glob(".*.tmp")) and not list((out / "_blocks").glob(".*.tmp"))


def test_folder_of_csv_and_parquet_gives_the_local_rows_and_refuses_a_changed_input(ray_cluster, exported, tmp_path):
    from rubricate.batch.ray_engine import RayPredictOptions, predict_on_ray, read_parts

    address, _ = ray_cluster
    folder = tmp_path / "in"
    folder.mkdir()
    a, b = _rows(40), _rows(30)
    a[3]["task_id"], a[20]["text"], b[29]["text"] = "nope", "", "\u200b"
    for r in b:
        r["response_id"] = "b-" + r["response_id"]
    _write(folder / "a.csv", a)
    _write(folder / "b.parquet", b)
    (folder / "notes.txt").write_text("not a table: ignored")
    opt = PredictOptions(chunk_size=16, progress=False, output_format="csv")
    out = tmp_path / "scores"
    s = predict_on_ray(exported, folder, out, opt, RayPredictOptions(address=address, workers=1))
    assert (s.blocks, s.scored, s.problems) == (3 + 2, 67, 3)
    assert sorted(p.name for p in out.glob("part-*")) == sorted(p.name for p in out.iterdir() if p.suffix == ".csv")
    local_opt = PredictOptions(chunk_size=16, progress=False)
    want = _local(exported, folder / "a.csv", tmp_path / "a.csv", local_opt) + \
        _local(exported, folder / "b.parquet", tmp_path / "b.csv", local_opt)
    assert list(read_parts(out)) == want
    errs = [json.loads(x) for x in (out / "_problems.jsonl").read_text().splitlines()]
    assert [(e.get("line", e.get("row")), e["field"], Path(e["file"]).name) for e in errs] == [
        (5, "task_id", "a.csv"), (22, "text", "a.csv"), (30, "text", "b.parquet")]
    with (out / sorted(p.name for p in out.glob("part-a-*"))[0]).open(newline="") as f:
        assert next(csv.reader(f))[:3] == ["response_id", "task_id", "line"]  # each part has the header
    # a crash between a part's rename and its commit record: the rerun redoes that block alone, in place
    victim = sorted((out / "_blocks").glob("b-*.json"))[0]
    victim.unlink()
    (out / ".part-stale.tmp").write_text("torn")
    again = predict_on_ray(exported, folder, out, opt, RayPredictOptions(address=address, workers=1))
    assert (again.skipped_blocks, again.scored, again.problems) == (4, 67, 3)
    assert list(read_parts(out)) == want and not (out / ".part-stale.tmp").exists()
    _write(folder / "b.parquet", b[:-1])  # the input changed: resuming would mix two inputs
    with pytest.raises(InputError, match="--overwrite"):
        predict_on_ray(exported, folder, out, opt, RayPredictOptions(address=address, workers=1))
    bad = tmp_path / "bad.csv"
    bad.write_text("task_id,answer\nsci-1,hello\n")
    with pytest.raises(InputError, match="text") as e:
        predict_on_ray(exported, bad, tmp_path / "never", opt, RayPredictOptions(address=address))
    assert e.value.column == "text" and e.value.file == str(bad) and not (tmp_path / "never").exists()


# --- agents -------------------------------------------------------------------------------------------
def _server(handler) -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_agents_on_ray_with_a_failing_endpoint_record_failures_and_never_score_twice(ray_cluster, tmp_path):
    from rubricate.cli import app
    from test_agents_fake_server import FakeState, make_handler, write_tasks_dir

    address, _ = ray_cluster
    state, broken = FakeState(), Counter()

    class Always500(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            broken["calls"] += 1
            body = b'{"error": {"message": "replica down"}}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    good, good_url = _server(make_handler(state))
    bad, bad_url = _server(Always500)
    try:
        tasks_dir = write_tasks_dir(tmp_path)
        inp = tmp_path / "in.csv"
        ids = [f"r{i}" for i in range(10)]
        inp.write_text("response_id,text\n" + "".join(f'{i},"A and D, same density MARK:valid ID:{i}"\n' for i in ids))
        out = tmp_path / "out.jsonl"
        base = ["agents", "score", "--engine", "ray", "--address", address, "--workers", "2", "--task", "gas",
                "--tasks", str(tasks_dir), "--input", str(inp), "--output", str(out), "--backend", "openai",
                "--model", "fake-model", "--api-key-env", "RUBRICATE_TEST_UNSET_KEY", "--mode", "single",
                "--max-retries", "0", "--concurrency", "1", "--cache-dir", str(tmp_path / "cache")]
        res = CliRunner().invoke(app, base + ["--base-url", good_url, "--base-url", bad_url])
        assert res.exit_code == 0, res.output
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(r["response_id"] for r in rows) == ids  # each response exactly once
        failed = [r for r in rows if r["status"] == "failed"]
        ok = [r for r in rows if r["status"] == "ok"]
        assert failed and ok and broken["calls"] == len(failed)  # the broken replica's share failed, no retries
        assert all(r["score"] is None and r["scores"] == {} and "HTTP 500" in r["error"] for r in failed)
        assert all(r["score"] is not None and r["tokens"] == {"in": 100, "out": 20, "calls": 1, "cached_calls": 0}
                   for r in ok)
        summary = _summary(res.output)
        assert (summary["ok"], summary["failed"], summary["engine"]) == (len(ok), len(failed), "ray")
        assert (summary["tokens_in"], summary["tokens_out"]) == (100 * len(ok), 20 * len(ok))
        seen = Counter(state.by_id)
        assert all(seen[r["response_id"]] == 1 for r in ok)
        res = CliRunner().invoke(app, base + ["--base-url", good_url])  # the rerun retries only the failures
        assert res.exit_code == 0, res.output
        for r in ok:
            assert state.by_id[r["response_id"]] == 1  # scored once, never sent again
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        ok_ids = Counter(r["response_id"] for r in rows if r["status"] == "ok")
        assert set(ok_ids) == set(ids) and max(ok_ids.values()) == 1
        assert len(rows) == len(ids) + len(failed)
    finally:
        for srv in (good, bad):
            srv.shutdown()
            srv.server_close()
