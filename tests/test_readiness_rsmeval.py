"""Operational readiness (Williamson, Xi & Breyer 2012), rsmeval input files, and the one public QWK."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rubricate.cli import app
from rubricate.data.records import Record, write_records
from rubricate.metrics import (
    BootstrapConfig,
    ReadinessThresholds,
    Stream,
    evaluate,
    operational_readiness,
    qwk,
    write_rsmeval_inputs,
)
from rubricate.metrics.readiness import judge_item
from rubricate.report import write_report
from rubricate.tasks import TaskRegistry

# --------------------------------------------------------------------------------------------------------
# Hand-computed example
#   t1 (scale 0-2, double-scored, n = 12): human = rater 2 = [0]*4 + [1]*4 + [2]*4 -> human-human QWK 1;
#       machine moves one 0 and one 2 to 1 -> O = [[3,1,0],[0,4,0],[0,1,3]], rows 4/4/4, columns 3/6/3,
#       E = [1, 2, 1] in every row, sum w*O = 2, sum w*E = 6 + 2 + 6 = 14 -> QWK = 1 - 2/14 = 6/7;
#       means equal -> SMD 0; drop = 1 - 6/7 = 1/7 > 0.10
#       => QWK pass, drop fail, SMD pass: fails overall.
#   t2 (scale 1-4, single-scored): human [1,1,2,2] = machine -> QWK 1, SMD 0, drop n/a => passes.
# --------------------------------------------------------------------------------------------------------
H1 = [0] * 4 + [1] * 4 + [2] * 4
M1 = [0, 0, 0, 1] + [1] * 4 + [1, 2, 2, 2]
H2 = [1, 1, 2, 2]


#: the two tasks as task files: t1 on 0-2, t2 on 1-4
TASK_FILES = {
    t: f"id: {t}\ntitle: T\nquestion: q\nrubric:\n  scales:\n    - {{id: score, min: {lo}, max: {hi}}}\n"
    for t, lo, hi in (("t1", 0, 2), ("t2", 1, 4))
}


def _tasks_dir(tmp_path: Path) -> Path:
    tdir = tmp_path / "tasks"
    tdir.mkdir(exist_ok=True)
    for t, text in TASK_FILES.items():
        (tdir / f"{t}.yaml").write_text(text)
    return tdir


def _registry(tmp_path: Path) -> TaskRegistry:
    return TaskRegistry.from_dir(_tasks_dir(tmp_path))


def _data() -> tuple[list[Record], list[dict]]:
    recs = [Record(f"a{i}", "t1", "x", {"score": h}, {"score": h}) for i, h in enumerate(H1)]
    recs += [Record(f"b{i}", "t2", "x", {"score": h}) for i, h in enumerate(H2)]
    machine = M1 + H2
    preds = [
        {"task_id": r.task_id, "response_id": r.response_id, "scores": {"score": m}}
        for r, m in zip(recs, machine)
    ]
    return recs, preds


def test_readiness_hand_computed_with_and_without_rater2(tmp_path: Path) -> None:
    recs, preds = _data()
    rep = evaluate(recs, preds, _registry(tmp_path), n_boot=0)
    r = rep.readiness
    assert (r.min_qwk, r.max_qwk_drop, r.max_abs_smd) == (0.70, 0.10, 0.15)
    t1, t2 = r.items
    assert (t1.task_id, t1.n, t1.smd) == ("t1", 12, 0.0) and t1.qwk == pytest.approx(6 / 7)
    assert t1.qwk_drop == pytest.approx(1 / 7)
    assert (t1.qwk_pass, t1.drop_pass, t1.smd_pass, t1.passes) == (True, False, True, False)
    assert t2.qwk_drop is None and t2.drop_pass is None  # no second rater: judged on QWK and SMD
    assert (t2.qwk_pass, t2.smd_pass, t2.passes) == (True, True, True)
    assert r.n_pass == 1
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["readiness"]["n_pass"] == 1 and d["readiness"]["n_items"] == 2
    assert d["readiness"]["items"][1]["qwk_drop"] is None
    # the thresholds are parameters: allowing a drop of 0.8 lets t1 pass too
    assert operational_readiness(rep, ReadinessThresholds(max_qwk_drop=0.8)).n_pass == 2
    assert (
        evaluate(
            recs, preds, _registry(tmp_path), n_boot=0, readiness=ReadinessThresholds(min_qwk=1.01)
        ).readiness.n_pass
        == 0
    )


@pytest.mark.parametrize(
    "qwk_value,drop,smd,expected",
    [
        (0.70, 0.10, 0.15, (True, True, True, True)),  # every boundary value passes (>= / <=)
        (0.70, 0.10, -0.15, (True, True, True, True)),  # |SMD|
        (0.6999, 0.10, 0.0, (False, True, True, False)),
        (0.80, 0.1001, 0.0, (True, False, True, False)),
        (0.80, 0.0, 0.1501, (True, True, False, False)),
        (0.80, 0.0, -0.1501, (True, True, False, False)),
        (0.80, None, 0.0, (True, None, True, True)),  # no second rater: not judged on the drop
        (0.65, None, 0.0, (False, None, True, False)),
        (math.nan, 0.0, 0.0, (False, True, True, False)),  # undefined fails
        (0.80, math.nan, math.nan, (True, False, False, False)),
    ],
)
def test_readiness_boundaries(qwk_value: float, drop: float | None, smd: float, expected: tuple) -> None:
    it = judge_item("t", "score", 10, qwk_value, drop, smd, ReadinessThresholds())
    assert (it.qwk_pass, it.drop_pass, it.smd_pass, it.passes) == expected


def test_readiness_table_in_markdown_and_html(tmp_path: Path) -> None:
    recs, preds = _data()
    rep = evaluate(recs, preds, _registry(tmp_path), n_boot=0)
    out = write_report(rep, tmp_path / "o", formats=["md", "html"], plots=False)
    md = out["md"].read_text()
    assert "## Operational readiness" in md and "1 of 2 items pass all three." in md
    assert (
        "| item | n | QWK | QWK ≥ 0.7 | QWK drop from human–human | drop ≤ 0.1 | SMD | |SMD| ≤ 0.15 | all |"
        in md.replace("\\|", "|")
    )
    assert "| t1 | 12 | 0.8571 | pass | 0.1429 | fail | 0.000 | pass | fail |" in md
    assert "| t2 | 4 | 1.0000 | pass | n/a | n/a | 0.000 | pass | pass |" in md
    assert "without a second rater have no drop (n/a) and are judged on QWK and SMD only" in md
    html = out["html"].read_text()
    assert "<h2>Operational readiness</h2>" in html and "<td>fail</td>" in html


# --------------------------------------------------------------------------------------------------------
# rsmeval inputs
def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_rsmeval_files_columns_config_and_values(tmp_path: Path) -> None:
    recs, preds = _data()
    recs[1].rater2 = None  # a response scored once: empty sc2
    preds[0]["scores"] = {"score": 2}
    paths = write_rsmeval_inputs(recs, preds, _registry(tmp_path), tmp_path / "rsm", description="demo")
    assert sorted(p.name for p in paths) == ["t1.csv", "t1.json", "t2.csv", "t2.json"]
    rows = _read_csv(tmp_path / "rsm" / "t1.csv")
    assert rows[0] == ["spkitemid", "sc1", "system", "sc2"]
    assert rows[1] == ["a0", "0", "2", "0"] and rows[2] == ["a1", "0", "0", ""]
    assert [r[2] for r in rows[3:]] == [str(m) for m in M1[2:]]
    assert [r[3] for r in rows[3:]] == [str(h) for h in H1[2:]] and len(rows) == 13
    cfg = json.loads((tmp_path / "rsm" / "t1.json").read_text())
    assert cfg == {
        "experiment_id": "t1",
        "predictions_file": "t1.csv",
        "system_score_column": "system",
        "human_score_column": "sc1",
        "id_column": "spkitemid",
        "trim_min": 0,
        "trim_max": 2,
        "exclude_zero_scores": False,
        "second_human_score_column": "sc2",
        "description": "demo",
    }
    assert _read_csv(tmp_path / "rsm" / "t2.csv")[0] == ["spkitemid", "sc1", "system"]  # no second rater
    cfg2 = json.loads((tmp_path / "rsm" / "t2.json").read_text())
    assert "second_human_score_column" not in cfg2 and (cfg2["trim_min"], cfg2["trim_max"]) == (1, 4)


def test_cli_report_readiness_options_and_rsmeval_dir(tmp_path: Path) -> None:
    tdir = _tasks_dir(tmp_path)
    recs, preds = _data()
    gold = write_records(recs, tmp_path / "gold.jsonl")
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    args = ["report", *f"--n-boot 0 --formats json --no-plots --tasks {tdir}".split()]
    args += ["--gold", str(gold), "--pred", str(pred), "--out", str(tmp_path / "o")]
    args += ["--rsmeval-dir", str(tmp_path / "rsm")]
    res = CliRunner().invoke(app, args + ["--max-qwk-drop", "0.8"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    assert d["readiness"]["n_pass"] == 2 and d["readiness"]["max_qwk_drop"] == 0.8
    assert d["settings"]["readiness"] == {"min_qwk": 0.7, "max_qwk_drop": 0.8, "max_abs_smd": 0.15}
    assert (tmp_path / "rsm" / "t1.json").exists() and (tmp_path / "rsm" / "t2.csv").exists()


# --------------------------------------------------------------------------------------------------------
def test_public_qwk_is_nan_when_undefined() -> None:
    assert qwk(H1, M1, 0, 2) == pytest.approx(6 / 7)
    assert math.isnan(qwk([1, 1, 1], [0, 1, 2], 0, 2))  # constant human scores: undefined, never 0
    assert math.isnan(qwk([], [], 0, 2))
    assert qwk([0, 1, 2], [1, 1, 1], 0, 2) == 0.0  # a constant prediction: its exact value
    with pytest.raises(ValueError, match="outside the scale"):
        qwk([0, 1, 3], [0, 1, 2], 0, 2)


def test_seed_scheme_is_named_and_documented() -> None:
    b = BootstrapConfig(seed=5)
    base = 5 + b.task_stride * 2 + b.scale_stride * 1
    assert b.scale_seed(2, 1) == base
    assert b.scale_seed(2, 1, Stream.DOUBLE_SCORED) == base + b.double_scored_offset
    assert b.scale_seed(2, 1, Stream.SUBGROUPS) == base + b.subgroup_offset
    assert b.label_seed(3) == 5 + 3 * b.label_task_stride
    seeds = {b.scale_seed(t, s, st) for t in range(20) for s in range(5) for st in Stream}
    assert len(seeds) == 20 * 5 * 3  # no two streams share a seed


def test_read_predictions_reads_parquet_through_the_shared_table_reader(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rubricate.metrics import read_predictions

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"task_id": ["t1", "t2"], "response_id": ["a", "b"], "score": [2, None]}), path)
    rows = read_predictions(path, _registry(tmp_path))
    assert [(p.key, p.scores) for p in rows] == [(("t1", "a"), {"score": 2}), (("t2", "b"), {})]
    assert rows[0].origin == f"{path}:1"  # Parquet rows are numbered from 1
