"""Training, checkpoints, teachers and add-task on tiny random models (fast, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rubricate.data.teacher_file import TeacherRow, read_teacher_file, write_teacher_file
from rubricate.errors import InputError, UnknownTaskError
from rubricate.student.adapt import AdaptArguments, add_task
from rubricate.student.checkpoint import TOKEN_COUNTS_NAME
from rubricate.student.scorer import Scorer
from rubricate.student.teachers import (
    LLMTeacherArguments,
    cross_fit_specialists,
    import_teacher,
    kfold_indices,
    train_llm_teacher,
)
from tiny_models import make_tiny_causal_lm, make_tiny_encoder, tiny_records, tiny_tasks
from rubricate.student.trainer import TrainingArguments, load_checkpoint, train
from rubricate.labels import LabelEncoding


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    enc = make_tiny_encoder(root / "enc")
    reg = tiny_tasks()
    tr = tiny_records("tiny-ord", 120) + tiny_records("tiny-crit", 120)
    va = tiny_records("tiny-ord", 40, seed=1, prefix="v") + tiny_records("tiny-crit", 40, seed=1, prefix="v")
    teacher = cross_fit_specialists(reg, tr, root / "teacher.jsonl", folds=3, options={"min_df": 1},
                                    progress=False)
    args = TrainingArguments(encoder=str(enc), method="unimoe_guided", teacher_file=str(teacher),
                             output_dir=str(root / "ck"), epochs=8, batch_size=16, early_stopping_patience=8, lr_encoder=1e-3,
                             lr_new=3e-3, progress=False, seed=7)
    res = train(args, registry=reg, train_records=tr, val_records=va)
    return {"root": root, "enc": enc, "reg": reg, "tr": tr, "va": va, "teacher": teacher, "res": res, "args": args}


def test_training_learns_and_writes_a_self_contained_checkpoint(setup) -> None:
    res = setup["res"]
    ck = Path(res.checkpoint_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in ck.iterdir()}
    doc = json.loads((ck / "config.json").read_text())
    assert [t["id"] for t in doc["tasks"]] == ["tiny-ord", "tiny-crit"]
    assert doc["label_encodings"]["tiny-ord"]["specs"][1]["name"] == "score>=2"
    assert doc["recipe"]["method"] == "unimoe_guided" and doc["recipe"]["lambda_kd"] == 1.0
    assert doc["metrics"]["teacher_rows"] == len(setup["tr"])
    assert res.metrics["val"]["mean_agreement"] > 0.5  # the words decide the labels: learnable
    assert len(res.history) >= 1 and "kd" in res.history[-1] and "lb" in res.history[-1]


def test_checkpoint_round_trip_gives_identical_predictions(setup) -> None:
    ck = setup["res"].checkpoint_dir
    model, tok, reg, encs, _ = load_checkpoint(ck)
    s1, s2 = Scorer.from_pretrained(ck, backend="torch"), Scorer.from_pretrained(ck, backend="torch")
    texts = ["acid rain and the", "cell energy more", "the plant"]
    tids = ["tiny-ord", "tiny-crit", "tiny-ord"]
    a, b = s1.predict(tids, texts, response_ids=["1", "2", "3"]), s2.predict(tids, texts)
    assert [p.probs for p in a] == [p.probs for p in b]
    assert a[0].response_id == "1" and set(a[1].scores) == {"E1", "E2"}
    assert len(a[0].gate_weights) == 2 and abs(sum(a[0].gate_weights[0]) - 1) < 1e-5
    assert sum(a[0].score_distribution["score"]) == pytest.approx(1.0)
    assert 0.0 <= a[0].confidence <= 1.0
    # the scorer's probabilities equal the model's own forward pass
    ids = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        z = model(ids["input_ids"], ids["attention_mask"], torch.tensor([0, 1, 0])).logits
    assert a[0].probs["score>=1"] == pytest.approx(torch.sigmoid(z[0, 0]).item(), abs=1e-5)


def test_training_is_reproducible(setup, tmp_path) -> None:
    from dataclasses import replace

    args = replace(setup["args"], output_dir=str(tmp_path / "again"), epochs=1)
    args2 = replace(args, output_dir=str(tmp_path / "again2"))
    kw = dict(registry=setup["reg"], train_records=setup["tr"][:32] + setup["tr"][120:152],
              val_records=setup["va"][:20])
    r1, r2 = train(args, **kw), train(args2, **kw)
    t = ["tiny-ord"]
    assert Scorer.from_pretrained(r1.checkpoint_dir).predict(t, ["acid"])[0].probs == \
        Scorer.from_pretrained(r2.checkpoint_dir).predict(t, ["acid"])[0].probs


def test_unknown_task_and_empty_text_are_clear_errors(setup) -> None:
    s = Scorer.from_pretrained(setup["res"].checkpoint_dir)
    with pytest.raises(UnknownTaskError, match="nope"):
        s.predict(["nope"], ["text"])
    with pytest.raises(InputError, match="empty"):
        s.predict(["tiny-ord"], ["  "])
    args = TrainingArguments(encoder=str(setup["enc"]), method="mtl", task_ids=["missing-task"], progress=False)
    with pytest.raises(UnknownTaskError):
        train(args, registry=setup["reg"], train_records=setup["tr"])


def test_misaligned_teacher_file_is_a_clear_error(setup, tmp_path) -> None:
    rows = read_teacher_file(setup["teacher"])
    # drop one training row's teacher output: strict alignment must name the missing key
    missing = list(rows.values())[1:]
    bad = write_teacher_file(missing, tmp_path / "missing.jsonl")
    from dataclasses import replace

    args = replace(setup["args"], teacher_file=str(bad), teacher_policy="strict", output_dir=str(tmp_path / "x"))
    with pytest.raises(InputError, match="no teacher row"):
        train(args, registry=setup["reg"], train_records=setup["tr"], val_records=setup["va"])
    # a row written for another label encoding is caught with file and line
    first = list(rows.values())[0]
    wrong = TeacherRow(first.task_id, first.response_id, ["score>=1"], probs=[0.5])
    bad2 = write_teacher_file([wrong], tmp_path / "wrong.jsonl")
    with pytest.raises(InputError, match=r"wrong.jsonl, line 1, column 'label_names'"):
        train(replace(args, teacher_file=str(bad2)), registry=setup["reg"], train_records=setup["tr"])


def test_unimoe_guided_needs_a_teacher() -> None:
    with pytest.raises(ValueError, match="teacher_file"):
        TrainingArguments(method="unimoe_guided")


def test_cross_fitting_never_predicts_a_row_with_a_model_that_saw_it(setup) -> None:
    reg, tr = setup["reg"], setup["tr"]
    recs = [r for r in tr if r.task_id == "tiny-ord"]
    folds = kfold_indices(recs, LabelEncoding.from_task(reg.get("tiny-ord")), 3, seed=0)
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(len(recs)))  # each row in exactly one held-out fold
    rows = read_teacher_file(setup["teacher"])
    assert {r.key for r in tr} == set(rows)
    assert all(isinstance(r.extra["fold"], int) for r in rows.values())


def test_import_teacher_from_csv(setup, tmp_path) -> None:
    csv = tmp_path / "ext.csv"
    csv.write_text("task_id,response_id,logit:score>=1,logit:score>=2\n"
                   "tiny-ord,r0,2.0,-1.0\ntiny-ord,r1,0.5,0.1\n")
    out = import_teacher(csv, setup["reg"], tmp_path / "t.jsonl", source="llm-x")
    rows = read_teacher_file(out)
    assert rows[("tiny-ord", "r0")].logits == [2.0, -1.0] and rows[("tiny-ord", "r0")].source == "llm-x"
    csv.write_text("task_id,response_id,score>=1,score>=2\ntiny-ord,r0,0.9,abc\n")
    with pytest.raises(InputError, match=r"line 2, column 'score>=2'"):
        import_teacher(csv, setup["reg"], tmp_path / "t2.jsonl")


def test_llm_lora_teacher_on_a_tiny_causal_lm(setup, tmp_path) -> None:
    llm = make_tiny_causal_lm(tmp_path / "llm")
    tr = tiny_records("tiny-ord", 24) + tiny_records("tiny-crit", 24)
    extra = tiny_records("tiny-ord", 6, seed=1, prefix="v")
    out = train_llm_teacher(LLMTeacherArguments(model_dir=str(llm), epochs=1, batch_size=12, progress=False),
                            setup["reg"], tr, tmp_path / "llm.jsonl", predict_records=extra)
    names = {t.id: LabelEncoding.from_task(t).names for t in setup["reg"]}
    rows = read_teacher_file(out, label_names=names)
    assert len(rows) == len(tr) + len(extra)
    assert rows[("tiny-crit", "r0")].logits is not None and len(rows[("tiny-crit", "r0")].logits) == 2


@pytest.mark.parametrize("mode", ["moe", "head"])
def test_add_task_freezes_encoder_old_heads_and_reports_forgetting(setup, tmp_path, mode: str) -> None:
    reg = setup["reg"]
    ck = setup["res"].checkpoint_dir
    before_model, *_ = load_checkpoint(ck)
    new_tr = tiny_records("tiny-new", 80)
    new_va = tiny_records("tiny-new", 30, seed=1, prefix="v")
    res = add_task(ck, reg.get("tiny-new"), new_tr, new_va, tmp_path / "adapted",
                   old_train_records=setup["tr"], old_eval_records=setup["va"],
                   args=AdaptArguments(mode=mode, rehearsal_size=40, epochs=2, progress=False))
    assert res.frozen_unchanged and set(res.old_before) == {"tiny-ord", "tiny-crit"}
    assert set(res.new_task_metrics) == {"tiny-new"}
    after_model, _, areg, _, _ = load_checkpoint(res.checkpoint_dir)
    assert "tiny-new" in areg and after_model.config.task_ids[-1] == "tiny-new"
    b, a = before_model.state_dict(), after_model.state_dict()
    for k in b:
        if k.startswith("encoder.") or k.startswith("heads.0.") or k.startswith("heads.1."):
            assert torch.equal(b[k], a[k]), k
    assert torch.equal(b["task_embedding.weight"], a["task_embedding.weight"][:2])
    moe_changed = any(not torch.equal(b[k], a[k]) for k in b if k.startswith("moe."))
    assert moe_changed == (mode == "moe")
    if mode == "head":
        assert res.old_after == res.old_before  # nothing shared moved
        assert res.trainable_share < 0.2
    assert 0 < res.trainable_share < 1
    base = json.loads((Path(ck) / TOKEN_COUNTS_NAME).read_text())
    grown = json.loads((Path(res.checkpoint_dir) / TOKEN_COUNTS_NAME).read_text())
    assert grown["n_rows"] == base["n_rows"] + len(new_tr)  # the new rows' tokens join the base counts
    assert all(grown["counts"].get(t, 0) >= n for t, n in base["counts"].items())


def _spy_on_fit(monkeypatch) -> dict:
    """Record the training set and keyword arguments add-task passes to ``fit`` (which still runs)."""
    import rubricate.student.adapt as adapt_mod

    seen: dict = {}
    real_fit = adapt_mod.fit

    def spy(model, train_set, *a, **kw):
        seen["set"], seen["kw"] = train_set, kw
        return real_fit(model, train_set, *a, **kw)

    monkeypatch.setattr(adapt_mod, "fit", spy)
    return seen


def test_add_task_self_distillation_targets_are_the_old_models_own_outputs(setup, tmp_path, monkeypatch) -> None:
    """Rehearsal rows get the pre-add-task logits as soft targets; new rows get none; the loss uses them."""
    seen = _spy_on_fit(monkeypatch)
    ck = setup["res"].checkpoint_dir
    new_tr = tiny_records("tiny-new", 60)
    res = add_task(ck, setup["reg"].get("tiny-new"), new_tr, tiny_records("tiny-new", 20, seed=1, prefix="v"),
                   tmp_path / "adapted", old_train_records=setup["tr"], old_eval_records=setup["va"],
                   args=AdaptArguments(mode="moe", rehearsal_size=40, epochs=1, lambda_self_kd=2.0,
                                       self_kd_temperature=1.5, progress=False))
    ts = seen["set"]
    assert seen["kw"]["anchor_weight"] == 2.0 and seen["kw"]["anchor_temperature"] == 1.5
    assert np.isnan(ts.anchor[: len(new_tr)]).all()
    old = Scorer.from_pretrained(ck, backend="torch")
    by_key = {r.key: r for r in setup["tr"]}
    keys = ts.keys[len(new_tr):]
    assert len(keys) == 40
    preds = old.predict([k[0] for k in keys], [by_key[k].text for k in keys])
    for i, p in enumerate(preds, start=len(new_tr)):
        n = len(p.probs)
        z = ts.anchor[i]
        np.testing.assert_allclose(1 / (1 + np.exp(-z[:n])), list(p.probs.values()), atol=1e-5)
        assert np.isnan(z[n:]).all()
    assert all("self_kd" in h for h in res.history)


def test_add_task_lr_moe_zero_leaves_old_tasks_exactly_as_they_were(setup, tmp_path) -> None:
    """``lr_moe`` reaches the shared parameters: at 0 the MoE cannot move, so nothing is forgotten."""
    ck = setup["res"].checkpoint_dir
    res = add_task(ck, setup["reg"].get("tiny-new"), tiny_records("tiny-new", 60),
                   tiny_records("tiny-new", 20, seed=1, prefix="v"), tmp_path / "adapted",
                   old_train_records=setup["tr"], old_eval_records=setup["va"],
                   args=AdaptArguments(mode="moe", rehearsal_size=40, epochs=1, lr_moe=0.0, progress=False))
    before, *_ = load_checkpoint(ck)
    after, *_ = load_checkpoint(res.checkpoint_dir)
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if k.startswith("moe."))
    assert res.old_after == res.old_before


@pytest.mark.parametrize("mode", ["moe", "head"])
def test_add_task_train_encoder_layers_moves_only_the_top_layers(setup, tmp_path, mode: str) -> None:
    """``train_encoder_layers=1`` trains the last encoder layer (with rehearsal in both modes); lower layers,
    embeddings and old heads stay bit-identical, and forgetting is measured on live encoder outputs."""
    ck = setup["res"].checkpoint_dir
    res = add_task(ck, setup["reg"].get("tiny-new"), tiny_records("tiny-new", 60),
                   tiny_records("tiny-new", 20, seed=1, prefix="v"), tmp_path / "adapted",
                   old_train_records=setup["tr"], old_eval_records=setup["va"],
                   args=AdaptArguments(mode=mode, rehearsal_size=40, epochs=1, train_encoder_layers=1,
                                       lr_encoder=1e-2, progress=False))
    before, *_ = load_checkpoint(ck)
    after, *_ = load_checkpoint(res.checkpoint_dir)
    b, a = before.state_dict(), after.state_dict()
    top = "encoder.encoder.layer.1."
    assert any(k.startswith(top) for k in b)
    assert all(not torch.equal(b[k], a[k]) for k in b if k.startswith(top) and k.endswith("dense.weight"))
    assert all(torch.equal(b[k], a[k]) for k in b
               if k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.", "heads.0.", "heads.1.")))
    assert res.frozen_unchanged and set(res.old_after) == {"tiny-ord", "tiny-crit"}
    assert res.trainable_parameters > sum(p.numel() for p in before.encoder.encoder.layer[1].parameters())
    # the encoder moved under the old tasks too (also in head mode), so their outputs changed
    rows = setup["va"][:8]
    old = Scorer.from_pretrained(ck, backend="torch").predict([r.task_id for r in rows], [r.text for r in rows])
    new = Scorer.from_pretrained(res.checkpoint_dir, backend="torch").predict([r.task_id for r in rows],
                                                                              [r.text for r in rows])
    assert any(not np.allclose(list(o.probs.values()), list(n.probs.values())) for o, n in zip(old, new))


@pytest.mark.parametrize("depth", [1, 2])
def test_add_task_branch_mode_leaves_old_tasks_bit_identical(setup, tmp_path, depth: int, monkeypatch) -> None:
    """Branch mode: the new task trains its own copy of the top layer(s), its head and its embedding row;
    nothing shared moves, no rehearsal rows are used, and the old tasks' outputs stay bit-identical."""
    seen = _spy_on_fit(monkeypatch)
    ck = setup["res"].checkpoint_dir
    new_tr = tiny_records("tiny-new", 60)
    res = add_task(ck, setup["reg"].get("tiny-new"), new_tr, tiny_records("tiny-new", 20, seed=1, prefix="v"),
                   tmp_path / "adapted", old_train_records=setup["tr"], old_eval_records=setup["va"],
                   args=AdaptArguments(mode="branch", branch_layers=depth, rehearsal_size=40, epochs=2,
                                       lr_encoder=1e-2, progress=False))
    assert len(seen["set"]) == len(new_tr)  # no rehearsal: nothing the old tasks use can move
    assert res.frozen_unchanged and res.old_after == res.old_before
    before, *_ = load_checkpoint(ck)
    after, *_ = load_checkpoint(res.checkpoint_dir)
    assert after.config.task_layers == {"tiny-new": depth}
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if k != "task_embedding.weight")
    assert torch.equal(b["task_embedding.weight"], a["task_embedding.weight"][:2])
    own = [k for k in a if k.startswith("task_layers.0.")]
    assert own and any(not torch.equal(a[k], b["encoder.encoder.layer." + str(2 - depth) + k[len("task_layers.0.0"):]])
                       for k in own if k.startswith("task_layers.0.0.") and k.endswith("dense.weight"))
    copy_params = sum(p.numel() for p in after.task_layers.parameters())
    assert copy_params == depth * sum(p.numel() for p in before.encoder.encoder.layer[1].parameters())
    assert res.trainable_parameters > copy_params
    rows = setup["va"][:10]
    tids, texts = [r.task_id for r in rows], [r.text for r in rows]
    old = Scorer.from_pretrained(ck, backend="torch").predict(tids, texts)
    new_scorer = Scorer.from_pretrained(res.checkpoint_dir, backend="torch")
    # the same batch as before (a batch of another size may take other GEMM kernels: last-bit differences)
    new = new_scorer.predict(tids, texts)
    for o, n in zip(old, new):
        assert list(o.probs.values()) == list(n.probs.values())
    mixed = new_scorer.predict(tids + ["tiny-new"], texts + ["a new answer"])
    for o, n in zip(old, mixed):  # beside a row of the new task: its own layers do not touch the old rows
        assert list(n.probs.values()) == pytest.approx(list(o.probs.values()), abs=1e-6)
    assert set(mixed[-1].probs) == set(LabelEncoding.from_task(setup["reg"].get("tiny-new")).names)


def test_cli_add_task_branch_mode(setup, tmp_path) -> None:
    """``rubricate add-task --mode branch --branch-layers 1`` writes a checkpoint whose new task owns a layer."""
    from typer.testing import CliRunner

    from rubricate.cli import app
    from rubricate.data.records import write_records

    task_file = tmp_path / "tiny-new.json"
    t = setup["reg"].get("tiny-new")
    task_file.write_text(json.dumps({"id": t.id, "title": t.id, "question": t.question,
                                     "rubric": {"scales": [{"id": "score", "min": 0, "max": 3}]}}))
    data = write_records(tiny_records("tiny-new", 60), tmp_path / "new.jsonl")
    res = CliRunner().invoke(app, ["add-task", "--model", str(setup["res"].checkpoint_dir), "--task", str(task_file),
                                   "--data", str(data), "--out", str(tmp_path / "out"), "--mode", "branch",
                                   "--branch-layers", "1", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output[res.output.index("{"):])
    assert d["mode"] == "branch" and d["frozen_unchanged"] and d["new_tasks"] == ["tiny-new"]
    doc = json.loads((tmp_path / "out" / "config.json").read_text())
    assert doc["model"]["task_layers"] == {"tiny-new": 1} and doc["recipe"]["add_task"]["branch_layers"] == 1


def test_add_task_branch_mode_rejects_train_encoder_layers() -> None:
    with pytest.raises(ValueError, match="branch mode trains copies"):
        AdaptArguments(mode="branch", train_encoder_layers=1)


def test_add_task_train_encoder_layers_rejects_more_layers_than_the_encoder_has(setup, tmp_path) -> None:
    with pytest.raises(InputError, match="train_encoder_layers=5 but the encoder has 2 layers"):
        add_task(setup["res"].checkpoint_dir, setup["reg"].get("tiny-new"), tiny_records("tiny-new", 20),
                 tiny_records("tiny-new", 10, seed=1, prefix="v"), tmp_path / "x",
                 args=AdaptArguments(train_encoder_layers=5, progress=False))


def test_shipped_recipes_parse_and_unknown_keys_name_the_file(repo_root: Path, tmp_path) -> None:
    for recipe in sorted((repo_root / "recipes").glob("*.yaml")):
        args = TrainingArguments.from_yaml(recipe)
        assert args.method in ("individual", "mtl", "unimoe", "unimoe_guided"), recipe
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: mtl\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml.*unknown recipe keys \['learning_rate'\]"):
        TrainingArguments.from_yaml(bad)
    overridden = TrainingArguments.from_yaml(repo_root / "recipes" / "mtl.yaml", {"epochs": 1})
    assert overridden.epochs == 1 and not overridden.use_moe


def test_mpnet_architecture_trains_round_trips_and_exports(tmp_path) -> None:
    """all-mpnet-base-v2's architecture (no token-type ids, relative positions) works end to end."""
    pytest.importorskip("onnxruntime")
    from rubricate.student.export import export_checkpoint

    enc = make_tiny_encoder(tmp_path / "mpnet", arch="mpnet")
    assert json.loads((enc / "config.json").read_text())["model_type"] == "mpnet"
    args = TrainingArguments(encoder=str(enc), method="unimoe", output_dir=str(tmp_path / "ck"), epochs=1,
                             batch_size=16, lr_encoder=1e-3, lr_new=3e-3, progress=False, seed=3)
    tr = tiny_records("tiny-ord", 40) + tiny_records("tiny-crit", 40)
    va = tiny_records("tiny-ord", 16, seed=1, prefix="v") + tiny_records("tiny-crit", 16, seed=1, prefix="v")
    res = train(args, registry=tiny_tasks(), train_records=tr, val_records=va)
    ck = res.checkpoint_dir
    assert json.loads((Path(ck) / "config.json").read_text())["model"]["encoder_config"]["model_type"] == "mpnet"
    texts, tids = ["acid rain and the", "cell energy more"], ["tiny-ord", "tiny-crit"]
    a = Scorer.from_pretrained(ck, backend="torch").predict(tids, texts)
    b = Scorer.from_pretrained(ck, backend="torch").predict(tids, texts)
    assert [p.probs for p in a] == [p.probs for p in b]
    rep = export_checkpoint(ck, int8=False)
    assert rep.passed and rep.max_abs_dprob_fp32 <= 1e-4
    c = Scorer.from_pretrained(ck, backend="onnx").predict(tids, texts)
    for p, q in zip(a, c):
        assert p.scores == q.scores
        assert max(abs(p.probs[k] - q.probs[k]) for k in p.probs) <= 1e-4


def test_evaluate_checkpoint_writes_predictions_and_the_report(setup, tmp_path) -> None:
    """``rubricate evaluate``'s library function: one prediction per scored row, in order, beside the report."""
    from rubricate.data.records import write_records
    from rubricate.student.arguments import EvaluateOptions
    from rubricate.student.evaluation import evaluate_checkpoint

    rows = setup["va"][:30]
    data = write_records(rows, tmp_path / "va.jsonl")
    run = evaluate_checkpoint(setup["res"].checkpoint_dir, data, tmp_path / "out",
                              options=EvaluateOptions(subset="all", backend="torch"))
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert run.n_predictions == len(lines) == len(rows)
    assert [(p["task_id"], p["response_id"]) for p in lines] == [(r.task_id, r.response_id) for r in rows]
    assert run.paths["predictions"] == tmp_path / "out" / "predictions.jsonl"
    assert (tmp_path / "out" / "report.json").exists()


def test_cli_option_defaults_are_the_library_defaults() -> None:
    """Every add-task / teach llm / evaluate option that names a dataclass field defaults to that field's default."""
    import dataclasses
    import inspect

    from rubricate.cli import student as cli
    from rubricate.student.arguments import AdaptArguments, EvaluateOptions, LLMTeacherArguments

    cases = [(cli.add_task_cmd, AdaptArguments, {"teacher": "teacher_file"}),
             (cli.teach_llm, LLMTeacherArguments, {}), (cli.evaluate_cmd, EvaluateOptions, {})]
    for fn, cls, renamed in cases:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        checked = 0
        for name, p in inspect.signature(fn).parameters.items():
            field_name = renamed.get(name, name)
            if field_name in defaults and p.default.default is not ...:
                assert p.default.default == defaults[field_name], (fn.__name__, name)
                checked += 1
        assert checked >= min(3, len(defaults)), fn.__name__
    # the drift this replaced: `teach llm` used lora_alpha = 2 * lora_r whatever the dataclass said
    assert inspect.signature(cli.teach_llm).parameters["lora_alpha"].default.default == LLMTeacherArguments.lora_alpha


def test_recipe_model_keys_are_defined_once_in_model_options() -> None:
    """TrainingArguments inherits the architecture keys; the checkpoint config gets exactly those values."""
    import dataclasses

    from rubricate.student.configuration import ModelOptions

    names = [f.name for f in dataclasses.fields(ModelOptions)]
    args = TrainingArguments(method="mtl", n_experts=3, dropout=0.2, max_length=96)
    cfg = args.model_config(["a"], [2])
    assert {n: getattr(cfg, n) for n in names} == {n: getattr(args, n) for n in names}
    assert cfg.n_experts == 3 and cfg.dropout == 0.2 and cfg.max_length == 96 and not cfg.use_moe
    assert TrainingArguments(method="unimoe").model_config(["a"], [2]).use_moe
