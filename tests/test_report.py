"""The report writer, the predictions reader, the ``rubricate report`` CLI, and ASAP-SAS human-human."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rubricate.cli import app
from rubricate.data.records import Record, write_records
from rubricate.errors import InputError
from rubricate.metrics import evaluate, read_predictions
from rubricate.report import write_report
from rubricate.tasks import TaskRegistry

TASKS = {
    "t1": "id: t1\ntitle: T1\nquestion: q\nrubric:\n  criteria:\n    - {id: E1, description: d}\n"
    "  scales:\n    - {id: score, min: 0, max: 2}\n",
    "t2": "id: t2\ntitle: T2\nquestion: q\nrubric:\n  scales:\n    - {id: score, min: 1, max: 4}\n",
}


def _setup(tmp_path: Path, n: int = 40) -> tuple[Path, Path, list[Record], list[dict]]:
    tdir = tmp_path / "tasks"
    tdir.mkdir()
    for k, v in TASKS.items():
        (tdir / f"{k}.yaml").write_text(v)
    rng = np.random.default_rng(0)
    recs, preds = [], []
    for i in range(n):
        s = int(rng.integers(0, 3))
        recs.append(
            Record(
                f"r{i}",
                "t1",
                f"answer {i}",
                {"E1": int(s > 0), "score": s},
                {"score": int(np.clip(s + rng.choice([-1, 0, 0, 0, 1]), 0, 2))},
                {"grade": 7 + i % 2},
            )
        )
        ps = int(np.clip(s + rng.choice([-1, 0, 0, 1]), 0, 2))
        preds.append(
            {
                "task_id": "t1",
                "response_id": f"r{i}",
                "scores": {"E1": int(ps > 0), "score": ps},
                "probs": {
                    "E1": 0.9 if ps > 0 else 0.1,
                    "score>=1": 0.9 if ps >= 1 else 0.1,
                    "score>=2": 0.9 if ps >= 2 else 0.1,
                },
            }
        )
        s2 = int(rng.integers(1, 5))
        recs.append(Record(f"r{i}", "t2", f"answer {i}", {"score": s2}, None, {"grade": 7}))
        preds.append({"task_id": "t2", "response_id": f"r{i}", "scores": {"score": s2}})
    return tdir, tmp_path, recs, preds


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_write_report_json_md_html_png(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path)
    rep = evaluate(recs, preds, TaskRegistry.from_dir(tdir), n_boot=100, group_column="grade")
    out = write_report(rep, tmp_path / "out")
    assert set(out) == {"json", "md", "html", "plots"}
    d = json.loads(out["json"].read_text())  # strict JSON: NaN would have failed allow_nan=False
    assert d["tasks"][0]["task_id"] == "t1" and d["across"]["machine"]["n_entries"] == 2
    pngs = sorted(p.name for p in out["plots"].glob("*.png"))
    assert pngs == ["confusion_t1_score.png", "confusion_t2_score.png"]
    assert all((out["plots"] / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    md = out["md"].read_text()
    for needle in (
        "## Across tasks",
        "Fisher-z mean QWK",
        "human–human",
        "## Task t1",
        "#### Subgroups",
        "| E1 |",
        "![confusion matrix t1 score](plots/confusion_t1_score.png)",
        "| score>=2 |",
    ):
        assert needle in md, needle
    # t1's QWK with its CI appears in the per-task table
    q = rep.task("t1").scales[0].machine
    assert f"{q.qwk:.4f} [{q.ci['qwk'].low:.3f}, {q.ci['qwk'].high:.3f}]" in md
    html = out["html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 2
    assert "<table>" in html and "Fisher-z mean QWK" in html


def test_undefined_values_are_marked_with_their_reason(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path, 10)
    for r in recs:  # make t2's human scores constant: QWK undefined
        if r.task_id == "t2":
            r.labels["score"] = 3
    rep = evaluate(recs, preds, TaskRegistry.from_dir(tdir), n_boot=20)
    out = write_report(rep, tmp_path / "out", formats=["json", "md"], plots=False)
    d = json.loads(out["json"].read_text())
    t2 = d["tasks"][1]["scales"][0]["machine"]
    assert t2["qwk"] is None and "constant" in t2["notes"]["qwk"]
    md = out["md"].read_text()
    assert "| t2 | 10 | n/a |" in md and "human scores are constant" in md
    assert "html" not in out and not (tmp_path / "out" / "plots").exists()


def test_read_predictions_jsonl_and_csv(tmp_path: Path) -> None:
    tdir, _, _, _ = _setup(tmp_path)
    reg = TaskRegistry.from_dir(tdir)
    p = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"task_id": "t1", "response_id": "a", "scores": {"score": 2, "E1": 1}, "probs": {"E1": 0.8}},
            {"task_id": "t1", "response_id": "b", "status": "failed", "score": None, "scores": {}},
            {"task_id": "t2", "response_id": "c", "score": 3},
        ],
    )
    rows = read_predictions(p, reg)
    assert rows[0].scores == {"score": 2, "E1": 1} and rows[0].probs == {"E1": 0.8}
    assert rows[1].scores == {} and rows[2].scores == {"score": 3}
    c = tmp_path / "p.csv"
    c.write_text("task_id,response_id,score,E1,text\nt1,a,2,1,hello\nt2,b,4,,x\nt1,c,,,\n")
    rows = read_predictions(c, reg)
    assert [r.scores for r in rows] == [{"score": 2, "E1": 1}, {"score": 4}, {}]


@pytest.mark.parametrize(
    "content,line,column",
    [
        (
            '{"task_id": "t1", "response_id": "a", "scores": {"score": 1}}\n{"task_id": "t1"}\n',
            2,
            "response_id",
        ),
        ('{"task_id": "t1", "response_id": "a", "scores": {"score": 1.5}}\n', 1, "scores.score"),
        ('{"task_id": "t1", "response_id": "a", "probs": {"E1": 1.2}}\n', 1, "probs.E1"),
        ('{"task_id": "tX", "response_id": "a"}\n', 1, "task_id"),
        (
            '{"task_id": "t1", "response_id": "a"}\n\n{"task_id": "t1", "response_id": "a"}\n',
            3,
            "response_id",
        ),
        ('{"task_id": "t1", "response_id": "a"\n', 1, None),
    ],
)
def test_read_predictions_errors_name_line_and_field(
    tmp_path: Path, content: str, line: int, column: str | None
) -> None:
    tdir, _, _, _ = _setup(tmp_path)
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        read_predictions(p, TaskRegistry.from_dir(tdir))
    assert e.value.line == line and e.value.column == column and e.value.file == str(p)


def test_read_predictions_csv_errors(tmp_path: Path) -> None:
    c = tmp_path / "p.csv"
    c.write_text("task_id,response_id,score\nt1,a,2\nt1,b,two\n")
    with pytest.raises(InputError) as e:
        read_predictions(c)
    assert (e.value.line, e.value.column) == (3, "score")
    c.write_text("task,response_id,score\n")
    with pytest.raises(InputError, match="missing column"):
        read_predictions(c)


def test_cli_report_records_and_predictions(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path)
    gold = write_records(recs, tmp_path / "gold.jsonl")
    pred = _jsonl(tmp_path / "student.jsonl", preds)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "report",
            "--gold",
            str(gold),
            "--format",
            "records",
            "--pred",
            str(pred),
            "--tasks",
            str(tdir),
            "--out",
            str(out),
            "--n-boot",
            "50",
            "--group-column",
            "grade",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads((out / "report.json").read_text())
    assert d["machine_label"] == "student" and d["settings"]["gold_format"] == "records"
    assert d["tasks"][1]["scales"][0]["machine"]["qwk"] == 1.0  # t2 predictions equal the gold
    assert set(d["tasks"][0]["scales"][0]["subgroups"]) == {"7", "8"}
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert "mean / Fisher-z" in res.output


def test_cli_report_missing_prediction_is_an_error_unless_allowed(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path, 10)
    gold = write_records(recs, tmp_path / "gold.jsonl")
    pred = _jsonl(tmp_path / "p.jsonl", preds[:-1])
    args = [
        "report",
        "--gold",
        str(gold),
        "--pred",
        str(pred),
        "--tasks",
        str(tdir),
        "--out",
        str(tmp_path / "o"),
        "--n-boot",
        "0",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and isinstance(res.exception, InputError)
    assert "have no prediction" in str(res.exception)
    res = CliRunner().invoke(app, args + ["--allow-missing"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "coverage" in d["tasks"][1]["notes"]


def test_cli_needs_exactly_one_of_pred_or_human_human(tmp_path: Path) -> None:
    tdir, _, recs, _ = _setup(tmp_path, 5)
    gold = write_records(recs, tmp_path / "gold.jsonl")
    res = CliRunner().invoke(
        app, ["report", "--gold", str(gold), "--tasks", str(tdir), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "--human-human" in res.output


# --------------------------------------------------------------------------------------------------------
def _readme_table(readme: Path) -> tuple[dict[int, float], float, float]:
    """Per-set human-human QWK, mean and Fisher-z mean, read from the dataset README's statistics table."""
    per_set: dict[int, float] = {}
    mean = fisher = float("nan")
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            per_set[int(cells[0])] = float(cells[8])
        m = re.search(r"mean ([0-9.]+); Fisher-z mean ([0-9.]+)", line)
        if m:
            mean, fisher = float(m.group(1)), float(m.group(2))
    return per_set, mean, fisher


def test_asap_sas_human_human_table_equals_readme(shared_data: Path, repo_root: Path, tmp_path: Path) -> None:
    readme = shared_data / "asap-sas" / "README.md"
    per_set, mean, fisher = _readme_table(readme)
    assert len(per_set) == 10 and (mean, fisher) == (0.8807, 0.9045)
    out = tmp_path / "hh"
    res = CliRunner().invoke(
        app,
        [
            "report",
            "--gold",
            str(shared_data / "asap-sas" / "train.tsv"),
            "--format",
            "asap-sas",
            "--human-human",
            "--tasks",
            str(repo_root / "tasks" / "asap_sas"),
            "--out",
            str(out),
            "--n-boot",
            "100",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads((out / "report.json").read_text())
    got = {int(t["task_id"].rsplit("-", 1)[1]): t["scales"][0]["machine"]["qwk"] for t in d["tasks"]}
    assert {k: round(v, 4) for k, v in got.items()} == per_set
    assert round(d["across"]["machine"]["mean"], 4) == mean
    assert round(d["across"]["machine"]["fisher_z"], 4) == fisher
    assert d["machine_label"] == "rater 2" and sum(t["n_matched"] for t in d["tasks"]) == 17043
    md = (out / "report.md").read_text()
    assert "| mean QWK | 0.8807" in md and "| Fisher-z mean QWK | 0.9045" in md


def test_cli_report_on_the_test_split_only(tmp_path: Path) -> None:
    from rubricate.data.splits import apply_split, make_split, save_split

    tdir, _, recs, preds = _setup(tmp_path)
    split = make_split(recs, fractions=(0.5, 0.25, 0.25))
    split_file = save_split(split, tmp_path / "split.json")
    test_keys = {r.key for r in apply_split(recs, split)["test"]}
    gold = write_records(recs, tmp_path / "gold.jsonl")
    pred = _jsonl(tmp_path / "p.jsonl", [p for p in preds if (p["task_id"], p["response_id"]) in test_keys])
    out = tmp_path / "o"
    args = ["report", "--gold", str(gold), "--pred", str(pred), "--tasks", str(tdir), "--out", str(out)]
    res = CliRunner().invoke(app, args + ["--split", str(split_file), "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    d = json.loads((out / "report.json").read_text())
    assert sum(t["n_matched"] for t in d["tasks"]) == len(test_keys) and d["settings"]["subset"] == "test"
    assert all(not t["notes"] for t in d["tasks"])  # nothing was dropped


def test_double_scored_column_when_only_some_responses_have_rater2(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path, 30)
    for r in recs[::4]:
        r.rater2 = None
    rep = evaluate(recs, preds, TaskRegistry.from_dir(tdir), n_boot=20)
    sc = rep.task("t1").scales[0]
    assert sc.human_human.n == sc.machine_double_scored.n < sc.machine.n
    md = write_report(rep, tmp_path / "o", formats=["md"], plots=False)["md"].read_text()
    assert (
        "| metric | student–human | student–human (double-scored) | human–human | degradation |"
        in md.replace("machine", "student")
    )


def test_cli_table_format_with_rater2_and_group_columns(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path, 30)
    gold = tmp_path / "gold.csv"
    lines = ["response_id,task_id,text,E1,score,second,grade"]
    for r in recs:
        if r.task_id == "t1":
            lines.append(
                f"{r.response_id},t1,{r.text},{r.labels['E1']},{r.labels['score']},{r.rater2['score']},g{r.metadata['grade']}"
            )
    gold.write_text("\n".join(lines) + "\n")
    pred = _jsonl(tmp_path / "p.jsonl", [p for p in preds if p["task_id"] == "t1"])
    out = tmp_path / "o"
    res = CliRunner().invoke(
        app,
        [
            "report",
            "--gold",
            str(gold),
            "--format",
            "table",
            "--pred",
            str(pred),
            "--tasks",
            str(tdir),
            "--out",
            str(out),
            "--n-boot",
            "0",
            "--rater2",
            "score=second",
            "--group-column",
            "grade",
        ],
    )
    assert res.exit_code == 0, res.output
    sc = json.loads((out / "report.json").read_text())["tasks"][0]["scales"][0]
    assert sc["human_human"]["n"] == 30 and set(sc["subgroups"]) == {"g7", "g8"}
    res = CliRunner().invoke(
        app,
        [
            "report",
            "--gold",
            str(gold),
            "--format",
            "table",
            "--pred",
            str(pred),
            "--tasks",
            str(tdir),
            "--out",
            str(out),
            "--rater2",
            "score",
        ],
    )
    assert res.exit_code == 2 and "KEY=COLUMN" in res.output


def test_cli_report_against_a_second_scorer_writes_the_paired_comparison(tmp_path: Path) -> None:
    tdir, _, recs, preds = _setup(tmp_path)
    gold = write_records(recs, tmp_path / "gold.jsonl")
    a = _jsonl(tmp_path / "student.jsonl", preds)
    # the baseline predicts t2 one step too high on every third response, t1 exactly like the student
    base = [dict(p, scores={"score": min(4, p["scores"]["score"] + 1)}) if p["task_id"] == "t2" and i % 3 == 0
            else p for i, p in enumerate(preds)]
    b = _jsonl(tmp_path / "baseline.jsonl", base)
    out = tmp_path / "out"
    args = ["report", "--gold", str(gold), "--pred", str(a), "--against", str(b), "--tasks", str(tdir),
            "--out", str(out), "--formats", "json", "--no-plots"]
    res = CliRunner().invoke(app, args + ["--n-boot", "100"])
    assert res.exit_code == 0, res.output
    d = json.loads((out / "comparison.json").read_text())
    assert (d["label_a"], d["label_b"]) == ("student", "baseline")
    by = {e["task_id"]: e for e in d["entries"]}
    assert by["t1"]["diff"] == 0 and by["t1"]["ci"]["low"] == 0 == by["t1"]["ci"]["high"]
    assert by["t2"]["qwk_a"] == 1.0 and by["t2"]["diff"] > 0 and by["t2"]["ci"]["low"] > 0
    assert "Fisher-z" in res.output and "student minus baseline" in res.output
    res = CliRunner().invoke(app, args + ["--n-boot", "0"])
    assert res.exit_code == 2 and "--n-boot >= 1" in re.sub(r"[│╭╮╰╯─\s]+", " ", res.output)
