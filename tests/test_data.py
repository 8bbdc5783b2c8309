"""Loaders (every malformed-input case names file, line, column), ASAP loaders on the real files, splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rubricate.data.loaders import LOADERS, load_asap_aes, load_asap_pp, load_asap_sas, load_data, load_table
from rubricate.data.records import Record, write_records
from rubricate.data.splits import SPLITS, apply_split, load_split, make_split, save_split, stratum
from rubricate.errors import InputError
from rubricate.tasks import TaskRegistry, task_from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry([
        task_from_dict({"id": "t1", "title": "t1", "question": "q",
                        "rubric": {"scales": [{"id": "score", "min": 0, "max": 3}]}}),
        task_from_dict({"id": "t2", "title": "t2", "question": "q",
                        "rubric": {"criteria": [{"id": "E1", "description": "e1"}, {"id": "E2", "description": "e2"}]}}),
    ])


GOOD_CSV = (
    "response_id,task_id,text,score,score2,E1,E2,school\n"
    "1,t1,\"Plastic B stretched the most, \"\"so\"\" it is best\",2,2,,,north\n"
    "2,t1,\"a text that spans\ntwo lines\",3,2,,,south\n"
    "3,t2,gas A and D are the same,,,1,0,north\n"
)


def _csv(tmp_path: Path, body: str, name: str = "r.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(body.encode("utf-8"))
    return p


def _raises(fn, *, line: int | None, column: str | None, match: str) -> InputError:
    with pytest.raises(InputError, match=match) as ei:
        fn()
    e = ei.value
    assert e.line == line, str(e)
    assert e.column == column, str(e)
    assert e.file is not None and e.file in str(e)
    return e


# --- generic table: good input -------------------------------------------------------------------------------
def test_load_csv_with_registry_maps_label_columns(tmp_path: Path, registry: TaskRegistry) -> None:
    recs = load_table(_csv(tmp_path, GOOD_CSV), registry=registry, rater2_columns={"score": "score2"},
                      group_columns=["school"])
    assert [r.key for r in recs] == [("t1", "1"), ("t1", "2"), ("t2", "3")]
    assert recs[0].text == 'Plastic B stretched the most, "so" it is best'
    assert recs[0].labels == {"score": 2} and recs[0].rater2 == {"score": 2}
    assert recs[1].text == "a text that spans\ntwo lines"
    assert recs[2].labels == {"E1": 1, "E2": 0} and recs[2].rater2 is None  # empty cells = not scored
    assert recs[1].metadata == {"school": "south"}


def test_tsv_jsonl_parquet_and_records_agree(tmp_path: Path, registry: TaskRegistry) -> None:
    import pandas as pd

    base = load_table(_csv(tmp_path, GOOD_CSV), registry=registry)
    df = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    df.to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    with (tmp_path / "r.jsonl").open("w") as f:
        for row in df.to_dict("records"):
            f.write(json.dumps({k: (int(v) if v.isdigit() and k != "text" else v) for k, v in row.items() if v != ""}) + "\n")
    pd.read_csv(tmp_path / "r.csv").to_parquet(tmp_path / "r.parquet")  # numeric columns become float with NaN
    write_records(base, tmp_path / "native.jsonl")
    for name in ("r.tsv", "r.jsonl", "r.parquet", "native.jsonl"):
        got = load_table(tmp_path / name, registry=registry)
        assert [(r.key, r.text, r.labels) for r in got] == [(r.key, r.text, r.labels) for r in base], name
    assert load_data("records", tmp_path / "native.jsonl") == base
    assert set(LOADERS) == {"table", "records", "asap-sas", "asap-aes", "asap-pp"}


def test_explicit_mapping_fixed_task_and_float_integers(tmp_path: Path) -> None:
    p = _csv(tmp_path, "id,answer,Score1\n7,hello there,2.0\n8,bye,1\n")
    recs = load_table(p, task_id="t1", id_column="id", text_column="answer", label_columns={"score": "Score1"})
    assert [(r.task_id, r.response_id, r.labels) for r in recs] == [("t1", "7", {"score": 2}), ("t1", "8", {"score": 1})]


# --- generic table: one test per malformed-input case ----------------------------------------------------------
def test_missing_column(tmp_path: Path, registry: TaskRegistry) -> None:
    p = _csv(tmp_path, "response_id,task_id,answer\n1,t1,hi\n")
    e = _raises(lambda: load_table(p, registry=registry), line=1, column="text", match="missing column")
    assert "answer" in str(e)  # lists what is available
    p2 = _csv(tmp_path, GOOD_CSV, "r2.csv")
    _raises(lambda: load_table(p2, label_columns={"score": "Score1"}), line=1, column="Score1", match="missing column")


def test_label_out_of_range(tmp_path: Path, registry: TaskRegistry) -> None:
    p = _csv(tmp_path, GOOD_CSV.replace("\n3,t2,gas A and D are the same,,,1,0", "\n3,t2,gas A and D are the same,,,1,2"))
    _raises(lambda: load_table(p, registry=registry), line=5, column="E2", match="must be 0 or 1")
    p = _csv(tmp_path, GOOD_CSV.replace(",3,2,,,south", ",4,2,,,south"))
    _raises(lambda: load_table(p, registry=registry), line=3, column="score", match="0-3")
    p = _csv(tmp_path, GOOD_CSV.replace(",3,2,,,south", ",3,7,,,south"))
    _raises(lambda: load_table(p, registry=registry, rater2_columns={"score": "score2"}), line=3, column="score2",
            match="rater2")


def test_label_not_an_integer(tmp_path: Path, registry: TaskRegistry) -> None:
    for bad in ("2.5", "two"):
        p = _csv(tmp_path, GOOD_CSV.replace(",2,2,,,north", f",{bad},2,,,north"))
        _raises(lambda: load_table(p, registry=registry), line=2, column="score", match="integer")


def test_empty_text(tmp_path: Path, registry: TaskRegistry) -> None:
    p = _csv(tmp_path, GOOD_CSV.replace("gas A and D are the same", "   "))
    _raises(lambda: load_table(p, registry=registry), line=5, column="text", match="empty response text")
    j = tmp_path / "e.jsonl"
    j.write_text('{"response_id": "1", "task_id": "t1", "text": "ok"}\n\n{"response_id": "2", "task_id": "t1", "text": ""}\n')
    _raises(lambda: load_table(j), line=3, column="text", match="empty")


def test_undecodable_bytes(tmp_path: Path, registry: TaskRegistry) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes(GOOD_CSV.replace("gas A and D", "gas A and D caf\xe9").encode("latin-1"))
    e = _raises(lambda: load_table(p, registry=registry), line=5, column="text", match="undecodable")
    assert "0xe9" in str(e)
    j = tmp_path / "bad.jsonl"
    j.write_bytes(b'{"response_id": "1", "task_id": "t1", "text": "ok"}\n{"response_id": "2", "task_id": "t1", "text": "\xff"}\n')
    _raises(lambda: load_table(j), line=2, column=None, match="undecodable")


def test_duplicate_id(tmp_path: Path, registry: TaskRegistry) -> None:
    p = _csv(tmp_path, GOOD_CSV + "1,t1,again,1,1,,,north\n")
    e = _raises(lambda: load_table(p, registry=registry), line=6, column="response_id", match="duplicate")
    assert "line 2" in str(e)  # where it was first seen
    # The same response id under another task is a different response.
    ok = _csv(tmp_path, GOOD_CSV + "1,t2,other task,,,0,0,north\n", "ok.csv")
    assert len(load_table(ok, registry=registry)) == 4


def test_unknown_task_and_bad_json(tmp_path: Path, registry: TaskRegistry) -> None:
    p = _csv(tmp_path, GOOD_CSV.replace("3,t2,", "3,t9,"))
    _raises(lambda: load_table(p, registry=registry), line=5, column="task_id", match="unknown task 't9'")
    j = tmp_path / "x.jsonl"
    j.write_text('{"response_id": "1", "task_id": "t1", "text": "ok"}\n{"response_id": 2,\n')
    _raises(lambda: load_table(j), line=2, column=None, match="invalid JSON")
    with pytest.raises(InputError, match="unknown file type"):
        load_table(_csv(tmp_path, GOOD_CSV, "r.xlsx"))


def test_native_records_are_checked_too(tmp_path: Path, registry: TaskRegistry) -> None:
    recs = [Record("1", "t1", "hi", {"score": 1}), Record("2", "t1", "yo", {"score": 9})]
    p = write_records(recs, tmp_path / "n.jsonl")
    _raises(lambda: load_table(p, registry=registry), line=2, column="labels.score", match="0-3")
    p = write_records([recs[0], recs[0]], tmp_path / "d.jsonl")
    _raises(lambda: load_table(p), line=2, column="response_id", match="duplicate")


# --- the demo data ---------------------------------------------------------------------------------------------
def test_demo_data_loads_and_follows_the_rubrics() -> None:
    reg = TaskRegistry.from_dir(REPO / "tasks" / "demo")
    recs = load_table(REPO / "examples" / "demo" / "responses.csv", registry=reg,
                      rater2_columns={"score": "rater2_score"}, group_columns=["school"])
    by_task = Counter(r.task_id for r in recs)
    assert by_task == {"demo-gas": 80, "demo-ice": 80, "demo-moon": 80}
    for r in recs:
        task = reg.get(r.task_id)
        assert set(r.labels) == set(task.label_keys), r
        if task.scales:
            assert r.rater2 is not None and abs(r.rater2["score"] - r.labels["score"]) <= 1
    for tid in ("demo-ice", "demo-moon"):
        scores = Counter(r.labels["score"] for r in recs if r.task_id == tid)
        assert set(scores) == set(reg.get(tid).primary_scale.scores)  # every level occurs
        agree = sum(r.labels == r.rater2 for r in recs if r.task_id == tid) / 80
        assert 0.7 < agree < 0.97  # imperfect, realistic second rater
    new = load_table(REPO / "examples" / "demo" / "new_task_responses.csv",
                     registry=TaskRegistry.from_dir(REPO / "examples" / "demo" / "new_task.yaml"))
    assert len(new) >= 40


def test_demo_generator_is_deterministic(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_generate", REPO / "examples" / "demo" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    for name in ("responses.csv", "new_task_responses.csv"):
        assert (tmp_path / name).read_bytes() == (REPO / "examples" / "demo" / name).read_bytes(), name


# --- splits --------------------------------------------------------------------------------------------------
def _records(n_per_class: dict[int, int], task: str = "t1") -> list[Record]:
    out, i = [], 0
    for score, n in n_per_class.items():
        for _ in range(n):
            out.append(Record(str(i), task, f"text {i}", {"score": score}))
            i += 1
    return out


def test_split_is_deterministic_stratified_and_order_independent(registry: TaskRegistry) -> None:
    recs = _records({0: 100, 1: 50, 2: 30, 3: 20}) + [
        Record(f"g{i}", "t2", "x", {"E1": i % 2, "E2": (i // 2) % 2}) for i in range(40)
    ]
    a = make_split(recs, seed=7, registry=registry)
    b = make_split(list(reversed(recs)), seed=7, registry=registry)
    assert a.assignments == b.assignments
    assert make_split(recs, seed=8, registry=registry).assignments != a.assignments
    assert a.counts()["t1"] == {"train": 160, "validation": 20, "test": 20}
    for score, n in {0: 100, 1: 50, 2: 30, 3: 20}.items():
        got = Counter(a.of("t1", r.response_id) for r in recs if r.task_id == "t1" and r.labels["score"] == score)
        for s, frac in zip(SPLITS, (0.8, 0.1, 0.1)):
            assert abs(got[s] - frac * n) <= 1.0, (score, got)
    # analytic task: stratified on the criterion pattern
    assert stratum(recs[-1], registry) == "11"
    pattern = Counter(a.of("t2", r.response_id) for r in recs if r.task_id == "t2" and r.labels == {"E1": 1, "E2": 1})
    assert pattern["train"] == 8 and pattern["validation"] + pattern["test"] == 2


def test_split_handles_tiny_classes_and_custom_fractions() -> None:
    recs = _records({0: 7, 1: 1, 2: 2})
    sp = make_split(recs, fractions=(0.6, 0.2, 0.2), seed=1)
    assert sum(sp.counts()["t1"].values()) == 10
    assert sp.counts()["t1"] == {"train": 6, "validation": 2, "test": 2}
    with pytest.raises(ValueError, match="sum to 1"):
        make_split(recs, fractions=(0.5, 0.1, 0.1))


def test_split_file_round_trip_and_apply(tmp_path: Path) -> None:
    recs = _records({0: 30, 1: 30})
    sp = make_split(recs, seed=3, source="unit test")
    path = save_split(sp, tmp_path / "split.json")
    first = path.read_bytes()
    save_split(make_split(recs, seed=3, source="unit test"), path)
    assert path.read_bytes() == first  # byte-identical: no timestamps
    doc = json.loads(first)
    assert doc["seed"] == 3 and doc["fractions"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert doc["source"] == "unit test" and len(doc["assignments"]) == 60
    back = load_split(path)
    assert back.assignments == sp.assignments
    parts = apply_split(recs, path)
    assert {k: len(v) for k, v in parts.items()} == {"train": 48, "validation": 6, "test": 6}
    # a record absent from the split file is an error, never silently dropped
    with pytest.raises(InputError, match="not in the split file") as ei:
        apply_split(recs + [Record("new", "t1", "late", {"score": 0})], back)
    assert str(path) in str(ei.value)


def test_bad_split_files(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not a split file"):
        load_split(p)
    p.write_text(json.dumps({"format": "rubricate-split", "version": 1,
                             "assignments": [{"task_id": "t", "response_id": "1", "split": "dev"}]}))
    with pytest.raises(InputError, match="unknown split 'dev'") as ei:
        load_split(p)
    assert ei.value.column == "assignments[0].split"


def test_cli_data_split_and_validate(tmp_path: Path) -> None:
    from rubricate.cli import app

    runner = CliRunner()
    out = tmp_path / "split.json"
    args = [str(REPO / "examples" / "demo" / "responses.csv"), "--tasks", str(REPO / "tasks" / "demo"),
            "--rater2", "score=rater2_score"]
    res = runner.invoke(app, ["data", "split", *args, "--out", str(out), "--seed", "5"])
    assert res.exit_code == 0, res.output
    sp = load_split(out)
    assert sp.seed == 5 and sp.counts()["demo-gas"] == {"train": 64, "validation": 8, "test": 8}
    res = runner.invoke(app, ["data", "validate", *args])
    assert res.exit_code == 0, res.output
    assert "240 records" in res.output
    bad = _csv(tmp_path, "response_id,task_id,text,score\n1,demo-ice,hi,9\n")
    res = runner.invoke(app, ["data", "validate", str(bad), "--tasks", str(REPO / "tasks" / "demo")])
    assert res.exit_code != 0
    assert isinstance(res.exception, InputError) and res.exception.line == 2 and res.exception.column == "score"


# --- real datasets (skipped when ../shared/data is absent) ----------------------------------------------------
def test_asap_sas_real_file(shared_data: Path) -> None:
    reg = TaskRegistry.from_dir(REPO / "tasks" / "asap_sas")
    recs = load_asap_sas(shared_data / "asap-sas" / "train.tsv", registry=reg)
    assert len(recs) == 17043
    counts = Counter(r.task_id for r in recs)
    assert counts["asap-sas-1"] == 1672 and counts["asap-sas-3"] == 1808 and counts["asap-sas-10"] == 1640
    assert all(r.rater2 is not None and set(r.labels) == {"score"} for r in recs)
    quoted = [r for r in recs if '"' in r.text]
    assert quoted and not any(r.text.startswith('"') and r.text.endswith('"') for r in quoted)
    s5 = Counter(r.labels["score"] for r in recs if r.task_id == "asap-sas-5")
    assert s5 == {0: 1391, 1: 328, 2: 42, 3: 34}  # the README's Score1 distribution
    assert len(load_asap_sas(shared_data / "asap-sas" / "train.tsv", sets=[2, 5, 9])) == 1278 + 1795 + 1798


def test_asap_sas_human_agreement_matches_readme(shared_data: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    recs = load_asap_sas(shared_data / "asap-sas" / "train.tsv")
    exact = sum(r.labels["score"] == r.rater2["score"] for r in recs) / len(recs)
    assert exact == pytest.approx(0.880, abs=5e-4)
    s1 = [r for r in recs if r.task_id == "asap-sas-1"]
    qwk = cohen_kappa_score([r.labels["score"] for r in s1], [r.rater2["score"] for r in s1], weights="quadratic")
    assert qwk == pytest.approx(0.9435, abs=5e-5)


def test_asap_aes_real_file(shared_data: Path) -> None:
    recs = load_asap_aes(shared_data / "asap-aes" / "training_set_rel3.tsv")
    assert len(recs) == 12978
    ids = [r.response_id for r in recs]
    i = ids.index("10534")
    assert ids[i - 1 : i + 3] == ["10533", "10534", "10535", "10536"]  # the unclosed quote swallows nothing
    e = recs[i]
    assert e.text.startswith("When they come back, Saeng vowed") and e.text.endswith("the sun is shining.")
    assert e.labels["score"] == 1
    counts = Counter(r.task_id for r in recs)
    assert counts == {"asap-aes-1": 1783, "asap-aes-2": 1800, "asap-aes-3": 1726, "asap-aes-4": 1772,
                      "asap-aes-5": 1805, "asap-aes-6": 1800, "asap-aes-7": 1569, "asap-aes-8": 723}
    s1 = [r for r in recs if r.task_id == "asap-aes-1"]
    assert all(r.labels["score"] == r.labels["rater_score"] + r.rater2["rater_score"] for r in s1)
    s7 = next(r for r in recs if r.task_id == "asap-aes-7")
    assert set(s7.labels) == {"score", "rater_score", "ideas", "organization", "style", "conventions"}
    assert set(s7.rater2) == {"rater_score", "ideas", "organization", "style", "conventions"}
    s2 = next(r for r in recs if r.task_id == "asap-aes-2")
    assert "conventions" in s2.labels and "conventions" in s2.rater2
    assert not any(r.text.startswith('"') for r in recs)
    reg = TaskRegistry.from_dir(REPO / "tasks" / "asap_aes")
    assert len(load_asap_aes(shared_data / "asap-aes" / "training_set_rel3.tsv", sets=[1], registry=reg)) == 1783


def test_asap_pp_real_file(shared_data: Path) -> None:
    recs = load_asap_pp(shared_data / "asap-plus-plus" / "asap_pp_trait_scores.csv")
    assert len(recs) == 10684
    counts = Counter(r.task_id for r in recs)
    assert counts["asap-pp-2"] == 1798 and counts["asap-pp-6"] == 1800
    r1 = next(r for r in recs if r.task_id == "asap-pp-1")
    assert set(r1.labels) == {"score", "content", "organization", "word_choice", "sentence_fluency", "conventions"}
    r5 = next(r for r in recs if r.task_id == "asap-pp-5")
    assert set(r5.labels) == {"score", "content", "prompt_adherence", "language", "narrativity"}
    assert r5.rater2 is None and r5.metadata["pp_split"] in ("train", "dev", "test") and len(r5.text) > 50


def test_asap_split_is_persisted_and_reproducible(shared_data: Path, tmp_path: Path) -> None:
    recs = load_asap_sas(shared_data / "asap-sas" / "train.tsv", sets=[5])
    sp = make_split(recs, seed=13)
    save_split(sp, tmp_path / "s.json")
    parts = apply_split(recs, load_split(tmp_path / "s.json"))
    assert sum(len(v) for v in parts.values()) == 1795
    test_scores = Counter(r.labels["score"] for r in parts["test"])
    assert test_scores[3] >= 3 and test_scores[2] >= 4  # rare classes reach the test split
