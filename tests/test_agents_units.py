"""Unit tests of the agents: prompts include every rubric element, schemas come from task files,
strict validation, grounding, score distributions, rule scores, component reliability, input reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rubricate.agents.backends import Completion, TokenLogprob, render_plain_prompt
from rubricate.agents.pipeline import (
    AgentPipeline, ComponentValue, PipelineConfig, is_grounded, logprob_distribution, majority,
)
from rubricate.agents.reliability import component_reliability
from rubricate.agents.schemas import (
    OutputError, agent_components, extraction_model, feedback_model, json_schema, parse_output, score_model,
    scores_from,
)
from rubricate.agents.templates import AGENTS, build_messages, render_format
from rubricate.agents.io import read_responses
from rubricate.errors import InputError
from rubricate.tasks import TaskRegistry, task_from_dict

REPO = Path(__file__).resolve().parents[1]

MULTI = {
    "id": "multi-trait.x",
    "title": "Essay",
    "question": "Should schools ban phones? QUESTION-MARKER",
    "context": "A passage about phones. CONTEXT-MARKER",
    "rubric": {
        "criteria": [{"id": "E1", "description": "States a clear position. CRIT-MARKER", "perspective": "SEP: argue"}],
        "scales": [
            {"id": "ideas", "name": "Ideas", "min": 1, "max": 4,
             "levels": [{"score": k, "description": f"IDEAS-LEVEL-{k}"} for k in range(1, 5)]},
            {"id": "conv-entions", "min": 0, "max": 2,
             "levels": [{"score": k, "description": f"CONV-LEVEL-{k}"} for k in range(0, 3)]}],
        "components": [
            {"id": "position", "description": "POS-MARKER", "type": "boolean"},
            {"id": "n_reasons", "description": "REASONS-MARKER", "type": "count"},
            {"id": "examples", "description": "EX-MARKER", "type": "list"},
            {"id": "summary", "description": "SUM-MARKER", "type": "text"}],
        "scoring_rules": [{"kind": "count_map", "scale": "ideas", "count": ["position", "n_reasons", "examples"],
                           "map": {"0-1": 1, "2": 2, "3": 3, "4+": 4}, "default": 1}],
        "notes": "Key elements: NOTES-MARKER",
    },
}


@pytest.fixture
def task():
    return task_from_dict(MULTI)


def test_prompts_include_every_rubric_element(task):
    schema = json_schema(extraction_model(task))
    for agent in AGENTS:
        msgs = build_messages(agent, task, "RESPONSE-MARKER text", schema=schema,
                              extraction={"position": {"evidence": [], "value": True}}, scores={"ideas": 3})
        assert [m["role"] for m in msgs] == ["system", "user"]
        user = msgs[1]["content"]
        for marker in ["QUESTION-MARKER", "CONTEXT-MARKER", "CRIT-MARKER", "SEP: argue", "NOTES-MARKER",
                       "RESPONSE-MARKER", *[f"IDEAS-LEVEL-{k}" for k in range(1, 5)],
                       *[f"CONV-LEVEL-{k}" for k in range(3)]]:
            assert marker in user, (agent, marker)
        assert "integer from 1 to 4" in user and "integer from 0 to 2" in user
        if agent in ("extract", "verify"):
            for marker in ["POS-MARKER", "REASONS-MARKER", "EX-MARKER", "SUM-MARKER"]:
                assert marker in user
        if agent in ("score", "verify", "feedback"):
            assert '"position"' in user  # the extraction is passed on
        assert render_format(schema) in msgs[0]["content"]  # the reply skeleton, not the raw schema
        assert '"additionalProperties"' not in msgs[0]["content"]
        # the response comes after the fixed parts (prefix caching)
        assert user.index("RESPONSE-MARKER") > user.index("NOTES-MARKER")


def test_reply_skeleton_names_every_key_and_range(task):
    ext = render_format(json_schema(extraction_model(task)))
    for comp in ["position", "n_reasons", "examples", "summary"]:
        assert f'"{comp}": {{' in ext
    assert ext.count('"evidence": ["<words copied exactly from the response>", ...]') == 4
    assert "<true or false>" in ext and "<whole number >= 0>" in ext
    sc = render_format(json_schema(score_model(task)))
    assert '"rationale": "<one or two sentences>"' in sc
    assert "<one of 1, 2, 3, 4>" in sc and "<one of 0, 1, 2>" in sc
    assert "items" not in ext + sc and "Evidence" not in ext  # nothing a small model could copy as an answer


def test_task_prompt_override(tmp_path):
    d = dict(MULTI, prompts={"single": "my_single.md"})
    (tmp_path / "t.json").write_text(json.dumps(d))
    (tmp_path / "my_single.md").write_text("CUSTOM $question\n<<<user>>>\nR: $response")
    t = TaskRegistry.from_dir(tmp_path).get("multi-trait.x")
    msgs = build_messages("single", t, "hello")
    assert msgs[0]["content"].startswith("CUSTOM Should schools") and msgs[1]["content"] == "R: hello"
    (tmp_path / "my_single.md").write_text("no separator $question")
    with pytest.raises(InputError, match="my_single.md"):
        build_messages("single", TaskRegistry.from_dir(tmp_path).get("multi-trait.x"), "x")


def test_extraction_schema_from_task(task):
    s = json_schema(extraction_model(task, max_quotes=2, quote_chars=50, list_items=4))
    assert "$ref" not in json.dumps(s) and "$defs" not in s
    assert list(s["properties"]) == ["position", "n_reasons", "examples", "summary"]
    assert s["required"] == list(s["properties"]) and s["additionalProperties"] is False
    pos = s["properties"]["position"]
    assert list(pos["properties"]) == ["evidence", "value"]  # quote first, then decide
    assert pos["properties"]["value"]["type"] == "boolean"
    assert pos["properties"]["evidence"]["maxItems"] == 2
    assert pos["properties"]["evidence"]["items"]["maxLength"] == 50
    assert s["properties"]["n_reasons"]["properties"]["value"] == {"minimum": 0, "type": "integer"}
    assert s["properties"]["examples"]["properties"]["value"]["maxItems"] == 4
    assert s["properties"]["summary"]["properties"]["value"]["type"] == "string"


def test_score_schema_ranges_and_aliases(task):
    model = score_model(task, rationale_chars=100)
    s = json_schema(model)
    assert list(s["properties"]) == ["rationale", "ideas", "conv-entions", "E1"]
    assert s["properties"]["ideas"]["enum"] == [1, 2, 3, 4]
    assert s["properties"]["conv-entions"]["enum"] == [0, 1, 2]
    assert s["properties"]["E1"]["enum"] == [0, 1]
    ok = parse_output('```json\n{"rationale": "r", "ideas": 4, "conv-entions": 0, "E1": 1}\n```', model)
    assert scores_from(ok, task) == {"ideas": 4, "conv-entions": 0, "E1": 1}
    for bad in ['{"rationale": "r", "ideas": 5, "conv-entions": 0, "E1": 1}',  # out of range
                '{"rationale": "r", "ideas": "4", "conv-entions": 0, "E1": 1}',  # wrong type
                '{"rationale": "r", "ideas": 4.0, "conv-entions": 0, "E1": 1}',  # float
                '{"rationale": "r", "ideas": 4, "E1": 1}',  # missing
                'the score is 4', '{"ideas": 4,']:
        with pytest.raises(OutputError):
            parse_output(bad, model)
    assert "rationale" not in json_schema(score_model(task, rationale_chars=0))["properties"]


def test_schemas_for_every_shipped_task_file():
    reg = TaskRegistry.from_dir(REPO / "tasks")
    assert len(reg) > 0
    for t in reg:
        ext = json_schema(extraction_model(t))
        assert list(ext["properties"]) == [c.id for c in agent_components(t)]
        sc = json_schema(score_model(t))
        for s in t.scales:
            assert sc["properties"][s.id]["enum"] == s.scores
        for c in t.criteria:
            assert sc["properties"][c.id]["enum"] == [0, 1]


def test_components_fallbacks():
    analytic = task_from_dict({"id": "a", "title": "t", "question": "q", "rubric": {
        "criteria": [{"id": "E-1", "description": "d1"}, {"id": "E2", "description": "d2"}]}})
    assert [(c.id, c.type) for c in agent_components(analytic)] == [("crit_E_1", "boolean"), ("crit_E2", "boolean")]
    holistic = task_from_dict({"id": "h", "title": "t", "question": "q", "rubric": {
        "scales": [{"id": "score", "min": 0, "max": 2}]}})
    assert [c.id for c in agent_components(holistic)] == ["key_points"]
    pipe = AgentPipeline(analytic, backend=None, config=PipelineConfig(scoring="rules"))  # type: ignore[arg-type]
    comps = {"crit_E_1": ComponentValue(value=True), "crit_E2": ComponentValue(value=False)}
    assert pipe.rule_scores(comps) == {"E-1": 1, "E2": 0}


def test_rules_mode_needs_rules(task):
    with pytest.raises(ValueError, match="no scoring rule for scale"):
        AgentPipeline(task, backend=None, config=PipelineConfig(scoring="rules"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the extraction agent"):
        PipelineConfig(mode="single", scoring="rules")


def test_feedback_word_limit():
    model = feedback_model(5)
    assert parse_output('{"feedback": "Add one more property."}', model)
    with pytest.raises(OutputError, match="at most 5"):
        parse_output('{"feedback": "one two three four five six"}', model)
    with pytest.raises(OutputError, match="empty"):
        parse_output('{"feedback": "  "}', model)


def test_grounding_normalises_case_space_and_punctuation():
    resp = "Gas A and D  have the SAME density.^pAlso the boiling point."
    assert is_grounded("gas a and d have the same density", resp)
    assert is_grounded('"the same density."', resp)
    assert is_grounded("density. Also the boiling", resp)
    assert not is_grounded("gas B is heavier", resp)
    assert not is_grounded("   ", resp)


def test_logprob_distribution_and_majority():
    text = '{"rationale": "x", "score": 2}'
    pos = text.index("2")
    comp = Completion(text=text, logprobs=[
        TokenLogprob(text[:pos - 1], 0, 0.0), TokenLogprob(" 2", pos - 1, math.log(0.5),
                                                           {" 2": math.log(0.5), " 3": math.log(0.25),
                                                            "9": math.log(0.2), "x": math.log(0.05)}),
        TokenLogprob("}", pos + 1, 0.0)])
    assert logprob_distribution(comp, "score", 0, 3) == pytest.approx([0, 0, 2 / 3, 1 / 3])
    assert logprob_distribution(comp, "score", 2, 12) is None  # multi-token numbers: no single decision
    assert logprob_distribution(Completion(text=text), "score", 0, 3) is None
    assert majority([2, 1, 2, 1]) == (1, 0.5)  # tie -> lower score
    assert majority([3, 3, 1]) == (3, pytest.approx(2 / 3))


def test_plain_prompt_for_base_models():
    p = render_plain_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert p == "S\n\nU\n\nAnswer (JSON):\n"


def test_component_reliability_with_fixture(task, tmp_path):
    rows = [
        {"task_id": task.id, "response_id": "1", "status": "ok", "components": {
            "position": {"value": True}, "n_reasons": {"value": 2}, "examples": {"value": ["a", "b"]},
            "summary": {"value": "Phones distract"}}},
        {"task_id": task.id, "response_id": "2", "status": "ok", "components": {
            "position": {"value": False}, "n_reasons": {"value": 0}, "examples": {"value": []},
            "summary": {"value": "x"}}},
        {"task_id": task.id, "response_id": "3", "status": "ok", "components": {
            "position": {"value": True}, "n_reasons": {"value": 3}, "examples": {"value": ["c"]},
            "summary": {"value": "y"}}},
        {"task_id": task.id, "response_id": "4", "status": "failed", "components": {}},
    ]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = tmp_path / "gold.csv"
    gold.write_text("response_id,position,n_reasons,examples,summary\n"
                    "1,yes,2,a;b,phones  distract\n2,0,1,0,x\n3,1,1,1,\n4,1,1,1,z\n")
    rep = component_reliability(pred, gold, task)
    assert rep["n_gold"] == 4 and rep["n_compared"] == 3 and rep["missing"] == ["4"]
    pos = rep["components"]["position"]
    assert pos["n"] == 3 and pos["accuracy"] == 1.0 and pos["kappa"] == pytest.approx(1.0)
    nr = rep["components"]["n_reasons"]  # gold 2,1,1 vs pred 2,0,3
    assert nr["accuracy"] == pytest.approx(1 / 3)
    assert nr["mae"] == pytest.approx(1.0) and nr["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert nr["pearson"] == pytest.approx(3 / math.sqrt(252))
    ex = rep["components"]["examples"]  # counts 2,0,1 vs 2,0,1 ; item sets only for row 1
    assert ex["accuracy"] == 1.0 and ex["exact_match"] == 1.0
    assert rep["components"]["summary"]["n"] == 2 and rep["components"]["summary"]["exact_match"] == 1.0
    assert rep["exact_match_all_components"] == pytest.approx(1 / 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("response_id,position\n1,maybe\n")
    with pytest.raises(InputError, match="line 2.*'position'"):
        component_reliability(pred, bad, task)


def test_read_responses_errors(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("id,text\n1,hello\n")
    with pytest.raises(InputError, match="'response_id'"):
        read_responses(p, task_id="t")
    p.write_text("response_id,text\n1,hello\n1,again\n")
    with pytest.raises(InputError, match="line 3.*duplicate"):
        read_responses(p, task_id="t")
    p.write_text("response_id,text\n1,hello\n")
    with pytest.raises(InputError, match="pass --task"):
        read_responses(p)
    p.write_text('response_id,text,score\n1,"multi\nline",2\n2,x,\n')
    recs = read_responses(p, task_id="t", score_col="score")
    assert [(r.response_id, r.text, r.labels) for r in recs] == [("1", "multi\nline", {"score": 2}), ("2", "x", {})]


def test_render_result_marks_grounding_and_failures():
    from rubricate.agents.display import render_result
    from rubricate.agents.pipeline import AgentResult

    ok = AgentResult(task_id="t", response_id="1", status="ok", score=2, scores={"score": 2}, rule_score=1,
                     components={"c": ComponentValue(value=True, evidence=["a b", "zz"], grounded=[True, False])},
                     grounding_rate=0.5, feedback="Add data.", tokens={"in": 10, "out": 5}, latency_s=1.0)
    text = render_result(ok)
    assert "score: 2" in text and "rule score" in text and '✓ "a b"' in text and '✗ "zz"' in text
    assert "feedback: Add data." in text
    failed = AgentResult(task_id="t", response_id="2", status="failed", error="extract: boom")
    assert "no score" in render_result(failed) and "boom" in render_result(failed)


def test_components_reliability_cli(tmp_path):
    from typer.testing import CliRunner

    from rubricate.cli import app

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "t.json").write_text(json.dumps(MULTI))
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"task_id": MULTI["id"], "response_id": str(i), "status": "ok",
                                        "components": {"position": {"value": i % 2 == 0}}}) + "\n" for i in range(4)))
    gold = tmp_path / "gold.csv"
    gold.write_text("response_id,position\n0,1\n1,0\n2,1\n3,1\n")
    out = tmp_path / "rep.json"
    res = CliRunner().invoke(app, ["agents", "components-reliability", "--pred", str(pred), "--gold", str(gold),
                                   "--task", MULTI["id"], "--tasks", str(tasks_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["components"]["position"]["accuracy"] == pytest.approx(0.75)
    assert rep["components"]["position"]["kappa"] == pytest.approx(0.5)
    assert "position" in res.output


def test_response_spans_cut_sentences_then_clauses_then_words():
    from rubricate.agents.schemas import response_spans

    text = "Gas A and D match.  They have the same density!^pB is different, C is too; both boil lower. " + \
        "word " * 60
    spans = response_spans(text, max_chars=40)
    assert spans[:2] == ["Gas A and D match.", "They have the same density!"]  # sentence ends and ^p marks
    assert all(len(s) <= 40 for s in spans) and all(s in text for s in spans)
    assert "B is different," in spans and "C is too;" in spans  # the long sentence was cut at clauses
    assert spans.count("word word word word word word word word") <= 1  # duplicates dropped
    assert response_spans("") == [] and len(response_spans("a. " * 500, max_spans=7)) <= 7


def test_span_evidence_schema_only_accepts_the_responses_words(task):
    from rubricate.agents.schemas import response_spans

    text = "Schools should not. Phones distract students, and they cheat."
    spans = response_spans(text)
    m = extraction_model(task, evidence_spans=spans)
    s = json_schema(m)
    assert s["properties"]["position"]["properties"]["evidence"]["items"]["enum"] == spans
    ok = {"position": {"evidence": [spans[0]], "value": True}, "n_reasons": {"evidence": [], "value": 1},
          "examples": {"evidence": [], "value": []}, "summary": {"evidence": [spans[1]], "value": "x"}}
    parse_output(json.dumps(ok), m)
    bad = dict(ok, position={"evidence": ["Schools should ban phones."], "value": True})
    with pytest.raises(OutputError, match="position.evidence"):
        parse_output(json.dumps(bad), m)
    # the prompt does not change with the response's spans (the shared prefix stays cacheable)
    assert render_format(s) == render_format(json_schema(extraction_model(task)))


def test_spans_and_schemas_never_carry_what_breaks_llama_cpp_grammars():
    """A '"' inside an enum string made llama.cpp's grammar unparsable and crashed the process (segfault);
    a backslash made the model write a different string. Spans cut there; the backend refuses such schemas."""
    from rubricate.agents.backends import _grammar_unsafe_literals
    from rubricate.agents.schemas import response_spans

    spans = response_spans('He wrote "computers help" and a back\\slash. Don\'t stop.')
    assert spans == ["He wrote", "computers help", "and a back", "slash.", "Don't stop."]
    assert not any('"' in s or "\\" in s for s in spans)
    schema = {"type": "object", "properties": {"a": {"enum": ['say "hi"', "ok"]}, "b": {"const": "c\\d"},
                                               "c": {"type": "array", "items": {"enum": ["fine"]}}}}
    assert _grammar_unsafe_literals(schema) == ['say "hi"', "c\\d"]
    assert _grammar_unsafe_literals({"enum": ["it's", "café ’x’", "{[ ]}"]}) == []


def test_llama_cpp_errors_become_a_failed_result_not_a_crash():
    """llama.cpp raises ValueError for a prompt past the context window and RuntimeError for a failed decode:
    both must fail that one response (a BackendError -> status 'failed'), not stop the batch."""
    import threading

    from rubricate.agents.backends import BackendError, LlamaCppBackend
    from rubricate.agents.pipeline import AgentResult
    from rubricate.data.records import Record

    class Broken:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def create_chat_completion(self, **kw):
            raise self.exc

    task = task_from_dict(MULTI)
    for exc in (ValueError("Requested tokens (5000) exceed context window of 4096"),
                RuntimeError("llama_decode returned -3")):
        b = LlamaCppBackend.__new__(LlamaCppBackend)  # no model file: the llama context is the broken fake
        b.path, b.model, b.prompt_format, b.logprobs, b.seed, b.repeat_penalty = Path("x.gguf"), "x", "chat", \
            False, 0, 1.0
        b._slots, b._locks, b._guard, b._spare, b._grammars = {"extract": Broken(exc)}, \
            {"extract": threading.Lock()}, threading.Lock(), None, {}
        with pytest.raises(BackendError, match=type(exc).__name__):
            b.complete([{"role": "user", "content": "hi"}], slot="extract")
        b.params = lambda: {}  # type: ignore[method-assign]
        b.name = "local"
        r = AgentPipeline(task, b).score(Record("r1", task.id, "A and D"))
        assert isinstance(r, AgentResult) and r.status == "failed" and r.score is None
        assert type(exc).__name__ in r.error
