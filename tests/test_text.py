"""One definition of empty text (rubricate.data.text), applied by the loaders, the records reader and the agents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rubricate.agents.io import read_responses
from rubricate.data.loaders import load_table
from rubricate.data.records import read_records
from rubricate.data.text import is_blank, text_problem
from rubricate.errors import InputError

INVISIBLE = ["", " \t\n", "\u200b", "\ufeff\u2060", "\u3000", "\u200d\u200c \u00a0", "\u2028"]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_text_is_blank(text: str) -> None:
    assert is_blank(text)
    assert text_problem(text, "response text").startswith("empty response text")


@pytest.mark.parametrize("text", ["a", "\u200ba", "0", "\uff21", "\u00e9"])
def test_visible_text_is_not_blank(text: str) -> None:
    assert not is_blank(text) and text_problem(text) is None


def test_text_problems_name_the_field() -> None:
    assert text_problem(5, "text") == "text must be a string, got int"
    assert text_problem(None, "text") == "text must be a string, got NoneType"
    assert "NUL" in text_problem("a\x00b", "text")
    assert "surrogate" in text_problem("a\ud800", "text")


def test_loaders_refuse_invisible_text(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("response_id,task_id,text\n1,t1,hello\n2,t1,\u200b\u2060\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty response text") as ei:
        load_table(p)
    assert (ei.value.line, ei.value.column) == (3, "text")
    j = tmp_path / "r.jsonl"
    j.write_text(json.dumps({"response_id": "1", "task_id": "t1", "text": 5}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="must be a string") as ei:
        load_table(j)
    assert (ei.value.line, ei.value.column) == (1, "text")


def test_records_and_agents_inputs_refuse_invisible_and_nul_text(tmp_path: Path) -> None:
    j = tmp_path / "recs.jsonl"
    j.write_text(json.dumps({"response_id": "1", "task_id": "t", "text": "ok"}) + "\n"
                 + json.dumps({"response_id": "2", "task_id": "t", "text": "\ufeff"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty response text") as ei:
        read_records(j)
    assert ei.value.line == 2
    c = tmp_path / "r.csv"
    c.write_text("response_id,text\n1,fine\n2,\u200b\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty response text") as ei:
        read_responses(c, task_id="t")
    assert (ei.value.line, ei.value.column) == (3, "text")
    c.write_text("response_id,text\n1,nul\x00here\n", encoding="utf-8")
    with pytest.raises(InputError, match="NUL") as ei:
        read_responses(c, task_id="t")
    assert ei.value.line == 2
    c.write_text('response_id,text\n1,"never closed\n2,next\n', encoding="utf-8")
    with pytest.raises(InputError, match="quote") as ei:
        read_responses(c, task_id="t")
    assert ei.value.line == 2
