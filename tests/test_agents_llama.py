"""Real models: the in-process llama.cpp backend end to end, and the OpenAI client against a real
``python -m llama_cpp.server`` on loopback, both with the packaged SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from rubricate.agents.backends import OpenAIBackend, make_backend, smollm2_path  # noqa: E402
from rubricate.agents.pipeline import PipelineConfig, score_responses  # noqa: E402
from rubricate.agents.schemas import (  # noqa: E402
    extraction_model, feedback_model, json_schema, parse_output, score_model, verify_model,
)
from rubricate.agents.templates import build_messages  # noqa: E402
from rubricate.data.records import Record  # noqa: E402
from rubricate.tasks import task_from_dict  # noqa: E402

pytestmark = pytest.mark.slow

TASK = task_from_dict({
    "id": "moon",
    "title": "Moon phases",
    "question": "Why does the Moon show phases?",
    "rubric": {
        "scales": [{"id": "score", "min": 0, "max": 2, "levels": [
            {"score": 2, "description": "Explains that half the Moon is lit by the Sun and we see changing parts of "
                                        "the lit half as the Moon orbits Earth."},
            {"score": 1, "description": "Mentions sunlight or the orbit, but not both."},
            {"score": 0, "description": "Other, e.g. Earth's shadow."}]}],
        "components": [
            {"id": "sunlight", "description": "Says the Sun lights half of the Moon.", "type": "boolean"},
            {"id": "orbit", "description": "Says the Moon orbits the Earth.", "type": "boolean"}],
        "scoring_rules": [{"kind": "count_map", "count": ["sunlight", "orbit"], "map": {"2": 2, "1": 1}}],
    },
})

RESPONSES = [
    Record("1", "moon", "The sun lights half of the moon and as the moon orbits the earth we see different parts."),
    Record("2", "moon", "Because the earth's shadow covers the moon."),
]

CONFIG = dict(rationale_chars=120, max_quotes=2, quote_chars=80,
              max_tokens={"extract": 300, "score": 120, "single": 120, "feedback": 160, "verify": 360})


def test_local_backend_end_to_end_two_responses(tmp_path):
    backend = make_backend("local", n_ctx=2048)
    assert backend.prompt_format == "chat"  # SmolLM2-Instruct ships a chat template
    out = tmp_path / "res.jsonl"
    res = score_responses(TASK, RESPONSES, backend, PipelineConfig(feedback=True, **CONFIG), output=out)
    assert [r.response_id for r in res] == ["1", "2"]
    for r in res:
        # constrained decoding: the outputs are schema-valid, so both responses get a real score
        assert r.status == "ok", r.error
        assert r.score in (0, 1, 2) and set(r.components) == {"sunlight", "orbit"}
        assert r.rule_score in (0, 1, 2)
        assert r.tokens["in"] > 0 and r.tokens["out"] > 0 and r.latency_s > 0
        assert {"extract", "score"} <= set(r.raw_outputs)
        assert all(len(cv.grounded) == len(cv.evidence) for cv in r.components.values())
        assert r.feedback is not None or any("feedback failed" in w for w in r.warnings)
    assert len(out.read_text().splitlines()) == 2


def test_gemma3_by_gguf_path_uses_a_plain_prompt(tmp_path):
    """Gemma 3 270M is a base model with no chat template: loaded from any GGUF path, it is prompted as a plain
    completion, and constrained decoding still gives a schema-valid score."""
    from rubricate.agents.backends import BackendError, gemma3_path

    try:
        path = gemma3_path()
    except BackendError as e:
        pytest.skip(str(e))
    link = tmp_path / "my-model.gguf"  # an arbitrary user path, not the packaged alias
    link.symlink_to(path)
    backend = make_backend("local", model=str(link), n_ctx=2048)
    assert backend.prompt_format == "completion" and backend.model == "my-model.gguf"
    [r] = score_responses(TASK, RESPONSES[:1], backend, PipelineConfig(mode="single", **CONFIG))
    assert r.status == "ok", r.error
    assert r.score in (0, 1, 2) and r.model == "my-model.gguf" and r.tokens["out"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] extras are not installed")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = log_path.open("wb")  # a file, not a pipe: an undrained pipe would block the server's logging
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_openai_client_against_real_llama_server_one_request_per_agent(llama_server):
    backend = OpenAIBackend("smollm2", base_url=llama_server, api_key_env="RUBRICATE_TEST_UNSET_KEY",
                            structured="json_object_schema", timeout_s=300, max_retries=1)
    text = RESPONSES[0].text
    ext = extraction_model(TASK, max_quotes=2, quote_chars=80)
    extraction = {"sunlight": {"evidence": ["The sun lights half of the moon"], "value": True},
                  "orbit": {"evidence": ["the moon orbits the earth"], "value": True}}
    cases = {
        "extract": (ext, {}),
        "verify": (verify_model(TASK, max_quotes=2, quote_chars=80), {"extraction": extraction}),
        "score": (score_model(TASK, rationale_chars=120), {"extraction": extraction}),
        "single": (score_model(TASK, rationale_chars=120), {}),
        "feedback": (feedback_model(80), {"extraction": extraction, "scores": {"score": 2}}),
    }
    for agent, (model, extra) in cases.items():
        schema = json_schema(model)
        msgs = build_messages(agent, TASK, text, schema=schema, **extra)
        comp = backend.complete(msgs, schema=schema, schema_name=agent, max_tokens=CONFIG["max_tokens"][agent])
        assert comp.tokens_in > 0 and comp.tokens_out > 0
        if agent == "feedback" and comp.finish_reason == "length":
            continue  # a rambling 135M model may hit the cap; the pipeline retries that case
        parse_output(comp.text, model)  # schema-valid (raises otherwise)
