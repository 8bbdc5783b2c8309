"""The OpenAI-compatible client and the pipeline against a scripted fake server on loopback (no network).

The server reads a marker from the student response (``MARK:<behaviour>``) and answers accordingly:
valid JSON, invalid JSON, wrong types, out-of-range scores, slow replies, 429 then success, 500, token
log-probabilities, seed-dependent scores. Tests assert statuses, retries, caching and resume.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rubricate.agents.backends import OpenAIBackend
from rubricate.agents.cache import RequestCache, ResultsFile, read_latest
from rubricate.agents.pipeline import PipelineConfig, score_responses
from rubricate.cli import app
from rubricate.data.records import Record
from rubricate.tasks import TaskRegistry, task_from_dict

TASK_DICT: dict[str, Any] = {
    "id": "gas",
    "title": "Same substance?",
    "question": "Which two gases could be the same substance? Explain with the data.",
    "rubric": {
        "scales": [{"id": "score", "min": 0, "max": 3, "levels": [
            {"score": 3, "description": "Names A and D and uses two properties."},
            {"score": 2, "description": "Names A and D and uses one property."},
            {"score": 1, "description": "Names A and D without data."},
            {"score": 0, "description": "Other."}]}],
        "components": [
            {"id": "names_a_d", "description": "Says gases A and D are the same substance.", "type": "boolean"},
            {"id": "properties", "description": "Physical properties used as evidence.", "type": "list"}],
        "scoring_rules": [{"kind": "cases", "cases": [
            {"score": 3, "when": "names_a_d and len(properties) >= 2"},
            {"score": 2, "when": "names_a_d and len(properties) == 1"},
            {"score": 1, "when": "names_a_d"}], "default": 0}],
    },
}


def make_task():
    return task_from_dict(TASK_DICT)


def write_tasks_dir(tmp_path: Path) -> Path:
    """A task folder holding the test task, for the CLI verbs."""
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "gas.json").write_text(json.dumps(TASK_DICT))
    return tasks_dir


# --- the fake server ----------------------------------------------------------------------------------
class FakeState:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.by_marker: Counter[str] = Counter()
        self.by_id: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0


def _instance(schema: dict[str, Any], words: list[str], score: int | None) -> Any:
    """A valid instance of a (ref-free) JSON schema; scores take ``score`` when given."""
    if "enum" in schema:
        vals = schema["enum"]
        return score if score is not None and score in vals else vals[-1]
    t = schema.get("type")
    if t == "object":
        return {k: _instance(v, words, score) for k, v in schema["properties"].items()}
    if t == "array":
        return [_instance(schema["items"], words, score)] if schema.get("items") else []
    if t == "boolean":
        return True
    if t == "integer":
        return 1
    if t == "string":
        return " ".join(words[-4:])
    return None


def make_handler(state: FakeState):
    class Handler(BaseHTTPRequestHandler):
        _counted = False  # this request is counted in state.in_flight

        def log_message(self, *a: Any) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self._leave()  # before the bytes go out: once the client has them it may send its next request
            self.wfile.write(data)

        def _leave(self) -> None:
            """Count this request out of flight, once (by the reply, or by do_POST if no reply was sent)."""
            with state.lock:
                if self._counted:
                    state.in_flight -= 1
                    self._counted = False

        def do_POST(self) -> None:  # noqa: N802
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                self._counted = True
            try:
                self._post()
            finally:
                self._leave()

        def _post(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            user = next(m["content"] for m in req["messages"] if m["role"] == "user")
            marker = (re.search(r"MARK:(\w+)", user) or re.search(r"()", user)).group(1)
            rid = (re.search(r"ID:(\w+)", user) or re.search(r"()", user)).group(1)
            retry = any(m["role"] == "assistant" for m in req["messages"])
            rf = req.get("response_format") or {}
            schema = (rf.get("json_schema") or {}).get("schema") or rf.get("schema") or {}
            agent = (rf.get("json_schema") or {}).get("name", "")
            with state.lock:
                state.requests.append(req)
                state.by_marker[marker] += 1
                state.by_id[rid] += 1
                n_marker = state.by_marker[marker]
            is_score = "rationale" in schema.get("properties", {})
            response_text = user.split("# Student response", 1)[-1].split("#")[0]
            words = re.findall(r"[A-Za-z]+", re.sub(r"(MARK|ID):\w+", " ", response_text))
            if marker == "r500":
                return self._send(500, {"error": {"message": "boom"}})
            if marker == "r429" and n_marker == 1:
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if marker == "slow":
                time.sleep(1.5)
            if marker == "pace":
                time.sleep(0.15)
            score = None
            if marker == "votes":
                score = int(req.get("seed", 0)) % 2 + 1  # seeds 0,1,2 -> 1,2,1
            if marker == "logprobs":
                score = 2
            obj = _instance(schema, words or ["nothing"], score)
            text = json.dumps(obj)
            if marker == "badjson":
                text = "I think the score is two {"
            elif is_score and marker == "wrongtype":
                text = json.dumps({"rationale": "ok", "score": "two"})
            elif is_score and marker == "outofrange":
                text = json.dumps({"rationale": "ok", "score": 7})
            elif is_score and marker == "fixonretry" and not retry:
                text = json.dumps({"rationale": "ok"})
            elif marker == "ungrounded" and agent == "extract":  # quotes the model made up
                obj = _instance(schema, ["the", "moon", "is", "made", "of", "cheese"], None)
                text = json.dumps(obj)
            elif marker == "verifyfix" and agent == "verify":  # the verifier overturns names_a_d
                obj["components"]["names_a_d"]["value"] = False
                obj["corrections"] = ["names_a_d: the response does not say A and D are the same"]
                text = json.dumps(obj)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
            if marker == "logprobs" and req.get("logprobs") and is_score:
                pos = text.index('"score": ') + len('"score": ')
                top = [{"token": "2", "logprob": math.log(0.6), "bytes": None},
                       {"token": "1", "logprob": math.log(0.3), "bytes": None},
                       {"token": "3", "logprob": math.log(0.1), "bytes": None}]
                choice["logprobs"] = {"content": [
                    {"token": text[:pos], "logprob": 0.0, "bytes": None, "top_logprobs": []},
                    {"token": text[pos], "logprob": math.log(0.6), "bytes": None, "top_logprobs": top},
                    {"token": text[pos + 1:], "logprob": 0.0, "bytes": None, "top_logprobs": []}]}
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                             "choices": [choice],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}})

    return Handler


@pytest.fixture
def fake_server():
    state = FakeState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"  # type: ignore[attr-defined]
    yield state
    server.shutdown()
    server.server_close()


def backend(state: FakeState, **kw: Any) -> OpenAIBackend:
    opts = dict(base_url=state.url, api_key_env="RUBRICATE_TEST_UNSET_KEY", timeout_s=5.0, max_retries=2,
                backoff_base_s=0.01, backoff_max_s=0.05)
    opts.update(kw)
    return OpenAIBackend("fake-model", **opts)


def rec(rid: str, marker: str, text: str = "gases A and D have the same density and boiling point") -> Record:
    return Record(rid, "gas", f"{text} MARK:{marker} ID:{rid}")


def run(state: FakeState, records: list[Record], config: PipelineConfig | None = None, **kw: Any):
    b = kw.pop("backend_obj", None) or backend(state)
    return score_responses(make_task(), records, b, config or PipelineConfig(), **kw)


# --- statuses -----------------------------------------------------------------------------------------
def test_valid_reply_is_scored_with_grounded_evidence(fake_server):
    [r] = run(fake_server, [rec("r1", "valid")])
    assert r.status == "ok" and r.error is None
    assert r.score == 3 and r.scores == {"score": 3}  # the fake picks the top of the enum
    assert r.components["names_a_d"].value is True
    assert r.grounding_rate == 1.0 and all(all(c.grounded) for c in r.components.values())
    assert r.rule_score == 2  # names_a_d and one listed property
    assert set(r.raw_outputs) == {"extract", "score"}
    assert r.tokens == {"in": 200, "out": 40, "calls": 2, "cached_calls": 0}
    req = fake_server.requests[0]
    assert req["temperature"] == 0.0
    assert req["response_format"]["type"] == "json_schema"
    assert req["response_format"]["json_schema"]["strict"] is True
    assert "maxLength" not in json.dumps(req["response_format"])  # stripped for OpenAI strict mode


@pytest.mark.parametrize("marker", ["badjson", "wrongtype", "outofrange"])
def test_invalid_outputs_fail_and_are_never_a_score(fake_server, marker):
    cfg = PipelineConfig(max_attempts=3)
    [r] = run(fake_server, [rec("r1", marker)], cfg)
    assert r.status == "failed" and r.score is None and r.scores == {}
    assert "no valid output after 3 attempts" in r.error
    agent = "extract" if marker == "badjson" else "score"
    assert agent in r.raw_outputs and f"{agent}#3" in r.raw_outputs  # every raw reply is kept
    assert sum(c.agent == agent for c in r.calls) == 3
    retry_msgs = fake_server.requests[-1]["messages"]
    assert retry_msgs[-1]["role"] == "user" and "not valid" in retry_msgs[-1]["content"]


def test_invalid_then_valid_on_retry(fake_server):
    [r] = run(fake_server, [rec("r1", "fixonretry")])
    assert r.status == "ok" and r.score == 3
    assert [c.error is None for c in r.calls if c.agent == "score"] == [False, True]


def test_timeout_is_a_failure(fake_server):
    b = backend(fake_server, timeout_s=0.3, max_retries=1)
    [r] = run(fake_server, [rec("r1", "slow")], backend_obj=b)
    assert r.status == "failed" and r.score is None
    assert "Timeout" in r.error and r.calls[-1].retries == 1


def test_server_error_retried_then_failed(fake_server):
    [r] = run(fake_server, [rec("r1", "r500")])
    assert r.status == "failed" and r.score is None and "HTTP 500" in r.error
    assert fake_server.by_marker["r500"] == 3  # 1 try + 2 retries, bounded


def test_rate_limit_retried_then_ok(fake_server):
    [r] = run(fake_server, [rec("r1", "r429")])
    assert r.status == "ok" and r.calls[0].retries == 1
    assert fake_server.by_marker["r429"] == 3  # 429, then extract ok, then score


def test_mixed_batch_concurrency_and_order(fake_server):
    recs = [rec(f"r{i}", m) for i, m in enumerate(["valid", "badjson", "valid", "r500", "outofrange", "valid"])]
    res = run(fake_server, recs, PipelineConfig(max_attempts=2), concurrency=4)
    assert [r.response_id for r in res] == [r.response_id for r in recs]
    assert [r.status for r in res] == ["ok", "failed", "ok", "failed", "failed", "ok"]
    assert all((r.score is None) == (r.status == "failed") for r in res)


# --- self-consistency and log-probabilities -----------------------------------------------------------
def test_self_consistency_majority_and_agreement(fake_server):
    cfg = PipelineConfig(samples=3)
    [r] = run(fake_server, [rec("r1", "votes")], cfg)
    assert r.votes == {"score": [1, 2, 1]} and r.score == 1
    assert r.agreement == pytest.approx(2 / 3)
    assert r.distribution_source == "votes"
    assert r.score_distribution == {"score": pytest.approx([0, 2 / 3, 1 / 3, 0])}
    temps = [q["temperature"] for q in fake_server.requests if "rationale" in json.dumps(q["response_format"])]
    assert temps == [0.7, 0.7, 0.7]


def test_logprob_distribution_and_teacher_bridge(fake_server, tmp_path):
    cfg = PipelineConfig(logprobs=True)
    out = tmp_path / "res.jsonl"
    [r] = run(fake_server, [rec("r1", "logprobs")], cfg, output=out)
    assert r.score == 2 and r.distribution_source == "logprobs"
    assert r.score_distribution["score"] == pytest.approx([0.0, 0.3, 0.6, 0.1])
    tasks_dir = write_tasks_dir(tmp_path)
    teach = tmp_path / "teacher.jsonl"
    res = CliRunner().invoke(app, ["agents", "teach", "--results", str(out), "--tasks", str(tasks_dir),
                                   "--out", str(teach)])
    assert res.exit_code == 0, res.output
    from rubricate.data.teacher_file import read_teacher_file

    rows = read_teacher_file(teach, {"gas": ["score>=1", "score>=2", "score>=3"]})
    assert rows[("gas", "r1")].as_probs().tolist() == pytest.approx([1.0, 0.7, 0.1])


# --- caching and resume -------------------------------------------------------------------------------
def test_cache_hits_skip_the_server_and_can_be_switched_off(fake_server, tmp_path):
    cache = RequestCache(tmp_path / "cache")
    first = run(fake_server, [rec("r1", "valid")], cache=cache)
    n = len(fake_server.requests)
    second = run(fake_server, [rec("r1", "valid")], cache=cache)
    assert len(fake_server.requests) == n and cache.hits == 2
    assert second[0].score == first[0].score and second[0].tokens["cached_calls"] == 2
    changed = run(fake_server, [rec("r1", "valid")], PipelineConfig(rationale_chars=50), cache=cache)
    assert changed[0].status == "ok" and len(fake_server.requests) == n + 1  # new schema -> new key for score
    run(fake_server, [rec("r1", "valid")], cache=RequestCache(tmp_path / "cache", enabled=False))
    assert len(fake_server.requests) == n + 3


def test_failures_are_not_cached_as_transport_errors(fake_server, tmp_path):
    cache = RequestCache(tmp_path / "cache")
    run(fake_server, [rec("r1", "r500")], cache=cache)
    run(fake_server, [rec("r1", "r500")], cache=cache)
    assert fake_server.by_marker["r500"] == 6


def test_torn_last_line_is_cut_and_redone(tmp_path):
    out = tmp_path / "res.jsonl"
    out.write_text(json.dumps({"task_id": "gas", "response_id": "a", "status": "ok"}) + "\n"
                   + '{"task_id": "gas", "response_id": "b", "sta')
    f = ResultsFile(out)
    assert f.done == {("gas", "a")}
    f.close()
    assert out.read_text().endswith("}\n")


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from rubricate.agents.backends import OpenAIBackend
    from rubricate.agents.pipeline import score_responses
    from rubricate.data.records import Record
    from rubricate.tasks import task_from_dict
    url, task_file, out = sys.argv[1:4]
    task = task_from_dict(json.load(open(task_file)))
    recs = [Record(f"r{i}", "gas", f"A and D same density MARK:pace ID:r{i}") for i in range(12)]
    b = OpenAIBackend("fake-model", base_url=url, api_key_env="RUBRICATE_TEST_UNSET_KEY", timeout_s=5)
    score_responses(task, recs, b, output=out)
""")


def test_resume_after_kill_scores_nothing_twice_and_loses_nothing(fake_server, tmp_path):
    task_file = tmp_path / "gas.json"
    task_file.write_text(json.dumps(TASK_DICT))
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    out = tmp_path / "res.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), fake_server.url, str(task_file), str(out)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {rid for (_, rid), row in read_latest(out).items() if row["status"] == "ok"}
    assert 3 <= len(done_before) < 12, "the kill should land mid-run"
    calls_before = Counter(fake_server.by_id)
    recs = [Record(f"r{i}", "gas", f"A and D same density MARK:pace ID:r{i}") for i in range(12)]
    res = score_responses(make_task(), recs, backend(fake_server), output=out)
    assert [r.status for r in res] == ["ok"] * 12
    for rid in done_before:  # already scored: the server never saw them again
        assert fake_server.by_id[rid] == calls_before[rid]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ok_ids = Counter(r["response_id"] for r in rows if r["status"] == "ok")
    assert set(ok_ids) == {f"r{i}" for i in range(12)} and max(ok_ids.values()) == 1


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_score_against_server(fake_server, tmp_path):
    tasks_dir = write_tasks_dir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("response_id,text\n"
                   "a,\"A and D, same density MARK:valid ID:a\"\n"
                   "b,\"no idea MARK:badjson ID:b\"\n")
    out = tmp_path / "out.jsonl"
    args = ["agents", "score", "--task", "gas", "--tasks", str(tasks_dir), "--input", str(inp), "--output",
            str(out), "--backend", "openai", "--model", "fake-model", "--base-url", fake_server.url,
            "--api-key-env", "RUBRICATE_TEST_UNSET_KEY", "--mode", "single", "--feedback", "--no-cache",
            "--max-retries", "0", "--price-in", "2.5", "--price-out", "10"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = {r["response_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["a"]["status"] == "ok" and rows["a"]["mode"] == "single" and rows["a"]["feedback"]
    assert rows["a"]["cost_usd"] == pytest.approx((200 * 2.5 + 40 * 10) / 1e6)
    assert rows["b"]["status"] == "failed" and rows["b"]["score"] is None
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["failed"] == 1 and summary["ok"] == 1


def test_cli_bad_input_names_file_line_and_column(tmp_path):
    tasks_dir = write_tasks_dir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("response_id,text\na,fine\nb,\n")
    res = CliRunner().invoke(app, ["agents", "score", "--task", "gas", "--tasks", str(tasks_dir), "--input",
                                   str(inp), "--output", str(tmp_path / "o.jsonl"), "--backend", "openai",
                                   "--model", "m", "--base-url", "http://127.0.0.1:9/v1"])
    assert res.exit_code != 0
    assert "line 3" in str(res.exception) and "'text'" in str(res.exception)


def test_registry_with_several_tasks(fake_server):
    other = dict(TASK_DICT, id="gas2")
    reg = TaskRegistry([make_task(), task_from_dict(other)])
    recs = [rec("a", "valid"), Record("a", "gas2", "A and D MARK:valid ID:a2")]
    res = score_responses(reg, recs, backend(fake_server))
    assert [(r.task_id, r.status) for r in res] == [("gas", "ok"), ("gas2", "ok")]


def test_span_evidence_restricts_quotes_to_the_response(fake_server):
    from rubricate.agents.schemas import response_spans

    r_text = "Gas A and D have the same density. B and C differ, so they are different gases"
    [r] = run(fake_server, [rec("s1", "valid", r_text)], PipelineConfig(evidence="spans"))
    assert r.status == "ok" and r.grounding_rate == 1.0
    sent = fake_server.requests[0]["response_format"]["json_schema"]["schema"]
    enum = sent["properties"]["names_a_d"]["properties"]["evidence"]["items"]["enum"]
    assert enum == response_spans(rec("s1", "valid", r_text).text, PipelineConfig().quote_chars)
    assert all(q in enum for c in r.components.values() for q in c.evidence)


# --- evidence, rules, verifier: the audit trail -------------------------------------------------------
def test_ungrounded_evidence_is_flagged_not_scored_away(fake_server):
    [r] = run(fake_server, [rec("u1", "ungrounded")])
    assert r.status == "ok"  # a made-up quote is flagged for the reviewer; the score itself is the scorer's
    assert r.grounding_rate == 0.0
    assert all(flags == [False] for flags in (c.grounded for c in r.components.values()))
    assert sorted(r.ungrounded) == ["names_a_d: is made of cheese", "properties: is made of cheese"]


def test_rule_scoring_replaces_the_scoring_agent(fake_server):
    [r] = run(fake_server, [rec("q1", "valid")], PipelineConfig(scoring="rules"))
    assert r.status == "ok" and r.scoring == "rules"
    assert r.score == r.rule_score == 2 and r.scores == {"score": 2}  # names_a_d and one property
    assert set(r.raw_outputs) == {"extract"} and [c.agent for c in r.calls] == ["extract"]


def test_verifier_correction_replaces_the_extraction(fake_server):
    [r] = run(fake_server, [rec("v1", "verifyfix")], PipelineConfig(verify=True))
    assert r.status == "ok" and [c.agent for c in r.calls] == ["extract", "verify", "score"]
    assert r.corrections == ["names_a_d: the response does not say A and D are the same"]
    assert r.components["names_a_d"].value is False
    assert r.rule_score == 0  # the rules see the corrected extraction
    score_prompt = fake_server.requests[-1]["messages"][-1]["content"]
    assert re.search(r'"names_a_d":\s*\{[^}]*"value":\s*false', score_prompt)  # the scorer sees the fix too


def test_failed_scoring_leaves_no_rule_score_behind(fake_server):
    [r] = run(fake_server, [rec("f1", "outofrange")], PipelineConfig(max_attempts=2))
    assert r.status == "failed" and r.score is None
    assert r.rule_score is None and r.rule_scores == {}  # nothing score-like survives a failure
    assert r.components and "extract" in r.raw_outputs  # the valid extraction stays for the audit


# --- concurrency limits -------------------------------------------------------------------------------
def test_thread_pool_never_exceeds_the_concurrency_limit(fake_server):
    recs = [rec(f"c{i}", "pace") for i in range(10)]
    res = run(fake_server, recs, concurrency=3, backend_obj=backend(fake_server, max_concurrency=8))
    assert [r.status for r in res] == ["ok"] * 10
    assert 1 < fake_server.max_in_flight <= 3  # really parallel, and never more than asked


def test_async_scoring_never_exceeds_the_concurrency_limit(fake_server):
    import asyncio

    from rubricate.agents.pipeline import ascore_responses

    recs = [rec(f"a{i}", "pace") for i in range(8)]
    res = asyncio.run(ascore_responses(make_task(), recs, backend(fake_server, max_concurrency=8), concurrency=2))
    assert [r.response_id for r in res] == [r.response_id for r in recs]
    assert [r.status for r in res] == ["ok"] * 8
    assert 1 < fake_server.max_in_flight <= 2
    fake_server.max_in_flight = 0
    capped = asyncio.run(ascore_responses(make_task(), recs[:4], backend(fake_server, max_concurrency=1),
                                          concurrency=4))
    assert len(capped) == 4 and fake_server.max_in_flight == 1  # the backend's own cap wins over the caller's


# --- cost ---------------------------------------------------------------------------------------------
def test_price_table_gives_per_call_and_total_cost(fake_server, tmp_path):
    tasks_dir = write_tasks_dir(tmp_path)
    inp = tmp_path / "in.csv"
    inp.write_text("response_id,text\na,\"A and D, same density MARK:valid ID:a\"\n")
    prices = tmp_path / "prices.yaml"
    prices.write_text("fake-model: {input: 2.0, output: 8.0}\nother-model: {input: 1.0, output: 1.0}\n")
    out = tmp_path / "out.jsonl"
    base = ["agents", "score", "--task", "gas", "--tasks", str(tasks_dir), "--input", str(inp), "--backend",
            "openai", "--model", "fake-model", "--base-url", fake_server.url, "--api-key-env",
            "RUBRICATE_TEST_UNSET_KEY", "--prices", str(prices)]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    res = CliRunner().invoke(app, base + ["--output", str(out)] + cache)
    assert res.exit_code == 0, res.output
    [row] = map(json.loads, out.read_text().splitlines())
    assert [c["cost_usd"] for c in row["calls"]] == pytest.approx([(100 * 2 + 20 * 8) / 1e6] * 2)
    assert row["cost_usd"] == pytest.approx(2 * (100 * 2 + 20 * 8) / 1e6)
    again = tmp_path / "again.jsonl"  # same requests, now from the cache: they cost nothing
    res = CliRunner().invoke(app, base + ["--output", str(again)] + cache)
    [row2] = map(json.loads, again.read_text().splitlines())
    assert row2["cost_usd"] == 0.0 and all(c["cached"] for c in row2["calls"])


def test_bad_price_table_names_the_file_and_the_model(tmp_path):
    from rubricate.agents.io import read_price_table
    from rubricate.errors import InputError

    bad = tmp_path / "prices.yaml"
    bad.write_text("gpt-x: {input: cheap, output: 1}\n")
    with pytest.raises(InputError, match=r"prices.yaml.*'gpt-x'.*numbers"):
        read_price_table(bad)
    bad.write_text("gpt-x: 3\n")
    with pytest.raises(InputError, match=r"'gpt-x'"):
        read_price_table(bad)
    good = tmp_path / "p.json"
    good.write_text('{"m": {"input": 0.5, "output": 1.5}}')
    assert read_price_table(good) == {"m": (0.5, 1.5)}


# --- the teacher bridge from self-consistency votes ----------------------------------------------------
def test_teach_agents_turns_votes_into_soft_labels_and_skips_failures(fake_server, tmp_path):
    out = tmp_path / "res.jsonl"
    res = run(fake_server, [rec("v1", "votes"), rec("bad", "badjson")], PipelineConfig(samples=3, max_attempts=1),
              output=out)
    assert [r.status for r in res] == ["ok", "failed"]
    tasks_dir = write_tasks_dir(tmp_path)
    teach = tmp_path / "teacher.jsonl"
    cli = CliRunner().invoke(app, ["teach", "agents", "--results", str(out), "--tasks", str(tasks_dir),
                                   "--out", str(teach)])
    assert cli.exit_code == 0, cli.output
    summary = json.loads(cli.output[cli.output.index("{"):])
    assert summary["written"] == 1 and summary["skipped"] == {"failed": 1}
    assert summary["distribution_sources"] == {"votes": 1}
    from rubricate.data.teacher_file import read_teacher_file

    rows = read_teacher_file(teach, {"gas": ["score>=1", "score>=2", "score>=3"]})
    assert set(rows) == {("gas", "v1")}  # the failed response gives no label at all
    assert rows[("gas", "v1")].as_probs().tolist() == pytest.approx([1.0, 1 / 3, 0.0])  # votes 1, 2, 1


def test_resuming_with_another_mode_or_model_is_refused_not_mixed(fake_server, tmp_path):
    from rubricate.errors import InputError

    out = tmp_path / "res.jsonl"
    run(fake_server, [rec("m1", "valid")], output=out)
    with pytest.raises(InputError, match=r"res.jsonl, line 1, column 'mode'.*mode='multi'.*mode='single'"):
        run(fake_server, [rec("m1", "valid"), rec("m2", "valid")], PipelineConfig(mode="single"), output=out)
    other = OpenAIBackend("another-model", base_url=fake_server.url, api_key_env="RUBRICATE_TEST_UNSET_KEY")
    with pytest.raises(InputError, match="column 'model'"):
        run(fake_server, [rec("m1", "valid")], backend_obj=other, output=out)
    assert len(out.read_text().splitlines()) == 1  # nothing was appended by the refused runs
    res = run(fake_server, [rec("m1", "valid")], PipelineConfig(mode="single"), output=out, resume=False)
    assert res[0].mode == "single" and len(out.read_text().splitlines()) == 1  # --no-resume starts afresh
