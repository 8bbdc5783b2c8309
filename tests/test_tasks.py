"""Task files: loading, validation errors that name file and field, scoring rules, registries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rubricate.errors import TaskFileError, UnknownTaskError
from rubricate.tasks import TaskRegistry, evaluate_expression, load_task, task_from_dict

REPO = Path(__file__).resolve().parents[1]

ANALYTIC = {
    "id": "gas",
    "title": "Gases",
    "question": "Which gases are the same?\n\n| Gas | Density |\n|---|---|\n| A | 0.97 |",
    "grade": 8,
    "subject": "Science",
    "rubric": {"criteria": [
        {"id": "E1", "description": "A and D could be the same substance", "perspective": "SEP: data"},
        {"id": "E2", "description": "cites matching properties"},
    ]},
}
ORDINAL = {
    "id": "poly",
    "title": "Polymer",
    "question": "Draw a conclusion and give two improvements.",
    "rubric": {
        "scales": [{"id": "score", "min": 0, "max": 3,
                    "levels": [{"score": s, "description": f"level {s}"} for s in range(4)]}],
        "components": [{"id": "valid_conclusion", "type": "boolean", "description": "valid conclusion"},
                       {"id": "design_improvements", "type": "list", "description": "improvements"}],
        "scoring_rules": [{"kind": "cases", "scale": "score", "default": 0, "cases": [
            {"score": 3, "when": "valid_conclusion and len(design_improvements) >= 2"},
            {"score": 2, "when": "(valid_conclusion and len(design_improvements) == 1) or len(design_improvements) >= 2"},
            {"score": 1, "when": "valid_conclusion or len(design_improvements) == 1"},
        ]}],
    },
}


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data), encoding="utf-8")
    return p


def test_load_yaml_and_json_give_the_same_task(tmp_path: Path) -> None:
    a = load_task(_write(tmp_path, "a.yaml", ANALYTIC))
    b = load_task(_write(tmp_path, "b.json", ANALYTIC))
    assert a.model_dump(exclude={"metadata"}) == b.model_dump(exclude={"metadata"})
    assert a.label_keys == ["E1", "E2"]
    assert a.criteria[0].perspective == "SEP: data"
    assert a.primary_scale is None


def test_multi_trait_and_mixed_rubrics(tmp_path: Path) -> None:
    data = dict(ORDINAL, id="mt")
    data["rubric"] = {
        "criteria": [{"id": "C1", "description": "claim"}],
        "scales": [{"id": "ideas", "min": 1, "max": 6}, {"id": "conventions", "min": 1, "max": 4}],
    }
    t = load_task(_write(tmp_path, "mt.yaml", data))
    assert t.label_keys == ["C1", "ideas", "conventions"]
    assert t.primary_scale.id == "ideas"
    assert t.check_labels({"C1": 1, "ideas": 6, "conventions": 1}) == []
    assert t.check_labels({"conventions": 5})  # out of range
    assert t.check_labels({"style": 2})  # unknown key


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("title"), "title"),
        (lambda d: d["rubric"]["scales"][0].update(max=-1), "rubric.scales.0"),
        (lambda d: d["rubric"]["scales"][0]["levels"][2].update(score=9), "rubric.scales.0"),
        (lambda d: d["rubric"]["components"][0].update(type="number"), "rubric.components.0.type"),
        (lambda d: d["rubric"]["scoring_rules"][0]["cases"][0].update(when="valid_conclusion and bogus"),
         "scoring_rules.0.cases.0.when"),
        (lambda d: d["rubric"]["scoring_rules"][0]["cases"][0].update(when="__import__('os')"), "scoring_rules.0"),
        (lambda d: d["rubric"]["scoring_rules"][0].update(default=7), "scoring_rules.0"),
        (lambda d: d.update(id="has space"), "id"),
        (lambda d: d.update(colour="red"), "colour"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path: Path, mutate, field: str) -> None:
    data = json.loads(json.dumps(ORDINAL))
    mutate(data)
    path = _write(tmp_path, "bad.yaml", data)
    with pytest.raises(TaskFileError) as ei:
        load_task(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert field in msg, msg


def test_empty_rubric_and_yaml_syntax_errors(tmp_path: Path) -> None:
    data = dict(ANALYTIC, rubric={"criteria": []})
    with pytest.raises(TaskFileError, match="criteria"):
        load_task(_write(tmp_path, "e.yaml", data))
    bad = tmp_path / "syntax.yaml"
    bad.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaskFileError, match="syntax"):
        load_task(bad)
    with pytest.raises(TaskFileError, match="expected a mapping"):
        task_from_dict(["not", "a", "task"], "x.yaml")


def test_cases_rule_follows_the_polymer_rubric() -> None:
    t = task_from_dict(ORDINAL)
    cases = [
        ({"valid_conclusion": True, "design_improvements": ["more trials", "same thickness"]}, 3),
        ({"valid_conclusion": True, "design_improvements": ["more trials"]}, 2),
        ({"valid_conclusion": False, "design_improvements": ["a", "b"]}, 2),
        ({"valid_conclusion": True, "design_improvements": []}, 1),
        ({"valid_conclusion": False, "design_improvements": ["a"]}, 1),
        ({"valid_conclusion": False, "design_improvements": []}, 0),
        ({}, 0),  # nothing extracted -> default
    ]
    for comps, expected in cases:
        assert t.apply_rules(comps) == {"score": expected}, comps


def test_count_map_rule_like_protein_synthesis() -> None:
    reg = TaskRegistry.from_dir(REPO / "tasks" / "asap_sas")
    t = reg.get("asap-sas-5")
    ids = [c.id for c in t.components]
    assert len(ids) == 8
    expected = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3, 8: 3}
    for n, score in expected.items():
        comps = {cid: i < n for i, cid in enumerate(ids)}
        assert t.apply_rules(comps) == {"score": score}, n


def test_expression_language_is_restricted() -> None:
    assert evaluate_expression("a and count(b, c) >= 2", {"a": True, "b": ["x"], "c": True}) is True
    with pytest.raises(ValueError):
        evaluate_expression("open('x')", {})
    with pytest.raises(ValueError):
        evaluate_expression("a.__class__", {"a": 1})


def test_registry_rejects_duplicate_ids_and_reports_every_bad_file(tmp_path: Path) -> None:
    _write(tmp_path, "one.yaml", ANALYTIC)
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "two.yaml", ANALYTIC)
    bad = dict(ORDINAL)
    bad = {k: v for k, v in bad.items() if k != "question"}
    _write(tmp_path, "three.yaml", bad)
    with pytest.raises(TaskFileError) as ei:
        TaskRegistry.from_dir(tmp_path)
    msg = str(ei.value)
    assert "already defined" in msg and "two.yaml" in msg
    assert "three.yaml" in msg and "question" in msg


def test_registry_lookup_and_snapshot_round_trip(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", ANALYTIC)
    _write(tmp_path, "b.yaml", ORDINAL)
    reg = TaskRegistry.from_dir(tmp_path)
    assert sorted(reg.ids) == ["gas", "poly"]
    with pytest.raises(UnknownTaskError, match="nope"):
        reg.get("nope")
    again = TaskRegistry.from_snapshot(reg.snapshot())
    assert again.get("poly").apply_rules({"valid_conclusion": True, "design_improvements": ["x"]}) == {"score": 2}


# --- shipped task files -------------------------------------------------------------------------------------
SHIPPED = sorted(p for p in (REPO / "tasks").rglob("*") if p.suffix in (".yaml", ".yml", ".json")) + [
    REPO / "examples" / "demo" / "new_task.yaml"
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_task_file_validates(path: Path) -> None:
    task = load_task(path)
    for s in task.scales:
        assert s.levels, f"{path}: scale {s.id} has no level descriptions"


def test_shipped_registries() -> None:
    reg = TaskRegistry.from_dir(REPO / "tasks")
    assert {f"asap-sas-{i}" for i in range(1, 11)} <= set(reg.ids)
    assert {"demo-gas", "demo-ice", "demo-moon", "asap-aes-1"} <= set(reg.ids)
    assert reg.get("demo-gas").criteria and not reg.get("demo-gas").scales
    for tid in ("asap-sas-2", "asap-sas-5", "asap-sas-9", "demo-ice", "demo-moon"):
        t = reg.get(tid)
        assert t.components and t.rubric.scoring_rules, tid
    assert reg.get("asap-sas-3").context and "Everglades" in reg.get("asap-sas-3").context
    assert [s.scores for s in reg.get("asap-sas-1").scales] == [[0, 1, 2, 3]]
    assert [(s.id, s.min, s.max) for s in reg.get("asap-aes-1").scales] == [("score", 2, 12), ("rater_score", 1, 6)]


def test_cli_tasks_validate_and_show(tmp_path: Path) -> None:
    from rubricate.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["tasks", "validate", str(REPO / "tasks" / "demo")])
    assert res.exit_code == 0, res.output
    assert "3 valid" in res.output
    bad = dict(ORDINAL)
    bad["rubric"] = dict(bad["rubric"], scales=[{"id": "score", "min": 3, "max": 1}])
    p = _write(tmp_path, "bad.yaml", bad)
    res = runner.invoke(app, ["tasks", "validate", str(p)])
    assert res.exit_code == 1
    assert "bad.yaml" in res.output and "rubric.scales.0" in res.output
    res = runner.invoke(app, ["tasks", "show", "demo-gas", "--tasks", str(REPO / "tasks" / "demo")])
    assert res.exit_code == 0, res.output
    assert "E1" in res.output and "SEP" in res.output and "Label encoding" in res.output
    res = runner.invoke(app, ["tasks", "show", "asap-sas-5", "--tasks", str(REPO / "tasks")])
    assert res.exit_code == 0, res.output
    assert "score>=3" in res.output and "count_map" in res.output


def test_docs_example_task_validates() -> None:
    import re

    text = (REPO / "docs" / "task-files.md").read_text(encoding="utf-8")
    example = re.findall(r"```yaml\n(.*?)```", text, re.S)[0]
    task = task_from_dict(yaml.safe_load(example), "docs/task-files.md")
    assert task.label_keys == ["E1", "E2", "score"]
    assert task.apply_rules({"same_substance_claim": True, "matching_properties": ["density", "bp"]}) == {"score": 2}
