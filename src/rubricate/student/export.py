"""Fast inference for the student: ONNX export (fp32 and dynamic int8), parity check, ONNX Runtime engine.

The whole student - encoder, MoE blocks, every head - is exported as one graph of
``StudentModel.forward_padded(input_ids, attention_mask, task_index) -> (logits (B, L_max), gates (B, n_moe, M))``
with dynamic batch and sequence axes, so a mixed-task batch runs in one call with the task index as an
input. The tokenizer is *not* in the graph: the :class:`~rubricate.student.scorer.Scorer` tokenizes and
decodes, and :class:`OnnxEngine` only maps numpy arrays to numpy arrays (so the same engine serves any
tokenizer the checkpoint ships).

Files, next to the checkpoint: ``<checkpoint>/onnx/model.onnx`` and, with ``int8``,
``<checkpoint>/onnx/model.int8.onnx`` (block-wise int8 weights and embedding table, see
:mod:`rubricate.student.onnx_tools` for why and what was measured) plus ``<checkpoint>/onnx/export.json``
(the parity report).

Parity: the export is run on real-looking inputs (the task questions and rubric texts stored in the
checkpoint, otherwise built-in sentences) for every task index, and the largest absolute difference of
the per-label *probabilities* against torch is reported; the export fails loudly when it exceeds the
tolerance (defaults: 1e-4 for fp32, 0.03 for int8, as documented in the serving issue).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rubricate.student.inference import run_engine, run_model
from rubricate.student.onnx_tools import Int8Options, SessionOptions, optimize_graph, quantize_int8

ONNX_DIR = "onnx"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
REPORT_NAME = "export.json"
INPUT_NAMES = ["input_ids", "attention_mask", "task_index"]
OUTPUT_NAMES = ["logits", "gate_weights"]

#: rows per forward in the parity check (torch and ONNX Runtime run the same length-sorted batches)
PARITY_BATCH_SIZE = 32
DEFAULT_FP32_TOLERANCE = 1e-4
DEFAULT_INT8_TOLERANCE = 0.03
_FALLBACK_TEXTS = [
    "Gas A and gas D could be the same substance because they have the same density.",
    "The plant grew more in the light because photosynthesis needs energy from light.",
    "i dont know",
    "Acid rain lowers the pH of the water, so the fish and the plants in the lake die and the "
    "food web changes; more experiments would need to measure the temperature and the color too.",
    "Protein synthesis starts when mRNA leaves the nucleus and a ribosome reads each codon; tRNA "
    "brings the matching amino acid with its anticodon and the chain grows until a stop codon.",
    "black lid = warmer",
]


class ParityError(RuntimeError):
    """The exported graph disagrees with torch by more than the tolerance."""


@dataclass
class ExportReport:
    """What ``rubricate export`` did and measured; also written to ``onnx/export.json``."""

    checkpoint: str
    onnx_path: str
    int8_path: str | None
    opset: int
    n_parity_inputs: int
    max_abs_dprob_fp32: float
    max_abs_dprob_int8: float | None
    tolerance_fp32: float
    tolerance_int8: float
    max_abs_dgate_fp32: float
    int8_options: dict[str, Any] | None = None  #: the :class:`Int8Options` used
    int8_excluded_nodes: int = 0  #: MatMul/Gemm nodes kept fp32 (``Int8Options.exclude``)
    fused_operators: dict[str, int] = field(default_factory=dict)  #: the transformer optimizer's fusions
    #: where the token counts behind ``int8_options["embedding_hot_rows"]`` came from: "texts" (given to the
    #: export), "checkpoint" (its ``token_counts.json``, written at train time) or None (no split)
    hot_rows_source: str | None = None
    notes: list[str] = field(default_factory=list)  #: what the export changed from what was asked, and why
    size_mb: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        ok = self.max_abs_dprob_fp32 <= self.tolerance_fp32
        if self.max_abs_dprob_int8 is not None:
            ok = ok and self.max_abs_dprob_int8 <= self.tolerance_int8
        return ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def onnx_paths(checkpoint_dir: str | Path) -> tuple[Path, Path]:
    """(fp32 path, int8 path) where the Scorer looks for an export."""
    d = Path(checkpoint_dir) / ONNX_DIR
    return d / FP32_NAME, d / INT8_NAME


# --------------------------------------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------------------------------------
class _PaddedForward:
    """Wraps a student so that ``forward`` is ``forward_padded`` (what the exporter traces)."""

    def __new__(cls, model: Any):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, task_index):  # type: ignore[override]
                return self.m.forward_padded(input_ids, attention_mask, task_index)

        return Wrapper(model)


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Trace the encoder with its eager attention, then restore the original setting.

    The eager graph (matmul, scale, mask add, softmax, matmul) is the pattern ONNX Runtime's optimizer fuses
    into ``MultiHeadAttention``; the SDPA graph is not matched (see ``onnx_tools.optimize_graph``). Both
    compute the same function: the parity check compares the graph with the torch model as it runs.
    """
    # every config an attention module reads: the encoder's, and the copies held by task layers (add-task --mode branch)
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) is not None}
    before = {k: c._attn_implementation for k, c in configs.items()}
    for c in configs.values():
        c._attn_implementation = "eager"
    try:
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def export_model(model: Any, out_path: str | Path, *, opset: int = 17, example_batch: int = 2,
                 example_len: int = 16) -> Path:
    """Export ``model.forward_padded`` to ONNX with dynamic batch and sequence axes.

    ``example_batch``/``example_len`` only shape the tracing example; the graph accepts any size.
    Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra packages and handles
    the Hugging Face encoders the student uses.
    """
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    wrapper = _PaddedForward(model).eval()
    ids = torch.randint(5, 20, (example_batch, example_len), dtype=torch.long)
    mask = torch.ones(example_batch, example_len, dtype=torch.long)
    mask[-1, example_len // 2:] = 0
    tidx = torch.zeros(example_batch, dtype=torch.long)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "task_index": {0: "batch"}, "logits": {0: "batch"}, "gate_weights": {0: "batch"}}
    import warnings

    with torch.no_grad(), warnings.catch_warnings(), eager_attention(model):
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(wrapper, (ids, mask, tidx), str(out_path), input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=dyn, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return out_path


# --------------------------------------------------------------------------------------------------------
# ONNX Runtime side
# --------------------------------------------------------------------------------------------------------
class OnnxEngine:
    """Runs an exported student with ONNX Runtime: numpy in, numpy out, tokenizer-agnostic.

    ``session``: the CPU session settings (:class:`~rubricate.student.onnx_tools.SessionOptions`, defaults
    there); ``intra_op_threads`` overrides its thread count (set 1 when several engines share a small machine).
    """

    def __init__(self, path: str | Path, intra_op_threads: int | None = None,
                 session: SessionOptions | None = None) -> None:
        import dataclasses

        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        settings = session or SessionOptions()
        if intra_op_threads is not None:
            settings = dataclasses.replace(settings, intra_op_threads=int(intra_op_threads))
        self.session = ort.InferenceSession(str(self.path), sess_options=settings.to_ort(),
                                            providers=["CPUExecutionProvider"])
        self.quantized = self.path.name.endswith(".int8.onnx")

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            task_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) ids, (B, T) mask, (B,) task indices -> ((B, L_max) logits, (B, n_moe, M) gate weights)."""
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "task_index": np.ascontiguousarray(task_index, dtype=np.int64).reshape(-1),
        }
        logits, gates = self.session.run(OUTPUT_NAMES, feeds)
        return logits, gates

    def __repr__(self) -> str:
        return f"OnnxEngine({self.path})"


# --------------------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def parity_inputs(tokenizer: Any, texts: Sequence[str], n_tasks: int,
                  max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Every text paired with every task index (so each head is checked): (token ids per row, task index)."""
    rows_text = [s for _ in range(n_tasks) for s in texts]
    rows_task = [t for t in range(n_tasks) for _ in texts]
    ids = tokenizer(rows_text, truncation=True, max_length=max_length)["input_ids"]
    return [list(x) for x in ids], np.asarray(rows_task, dtype=np.int64)


def max_prob_difference(logits_a: np.ndarray, logits_b: np.ndarray, task_index: np.ndarray,
                        n_labels: Sequence[int]) -> float:
    """Largest |sigmoid(a) - sigmoid(b)| over each row's *real* labels (padding columns are ignored)."""
    pa, pb = _sigmoid(logits_a), _sigmoid(logits_b)
    width = np.asarray(n_labels)[task_index]
    valid = np.arange(pa.shape[1])[None, :] < width[:, None]
    if not valid.any():
        return 0.0
    return float(np.abs(pa - pb)[valid].max())


def _texts_from_doc(doc: dict[str, Any]) -> list[str]:
    """Questions and rubric descriptions stored in a checkpoint: realistic, in-domain parity inputs."""
    out: list[str] = []
    for t in doc.get("tasks") or []:
        if not isinstance(t, dict):
            continue
        if t.get("question"):
            out.append(str(t["question"]))
        rub = t.get("rubric") or {}
        out += [str(c.get("description", "")) for c in rub.get("criteria", [])[:3]]
        for s in rub.get("scales", [])[:1]:
            out += [str(lv.get("description", "")) for lv in s.get("levels", [])[:3]]
    return [s for s in out if s.strip()][:12]


def count_tokens(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """(vocab,) int64: how often each token id occurs in ``texts`` tokenized as the model sees them (the same
    count that training stores in the checkpoint)."""
    from rubricate.student.checkpoint import dense_counts
    from rubricate.student.data import token_counts

    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return dense_counts(token_counts(ids, max_length), len(tokenizer))


def hot_order(counts: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """Every vocabulary id, most frequent first (special tokens first of all; ties by id), for
    ``Int8Options.embedding_hot_rows``: which word-embedding rows stay 8-bit."""
    counts = np.array(counts, dtype=np.int64)
    counts[list(special_ids)] = np.iinfo(np.int64).max
    return np.argsort(-counts, kind="stable")


def frequent_token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """:func:`hot_order` of the token counts of ``texts``."""
    return hot_order(count_tokens(tokenizer, texts, max_length), tokenizer.all_special_ids)


def _hot_rows(ckpt: Path, tokenizer: Any, options: Int8Options, texts: Sequence[str] | None,
              max_length: int) -> tuple[Int8Options, np.ndarray | None, str | None, list[str]]:
    """Resolve ``options.embedding_hot_rows``: the row order (from ``texts`` if given, else from the counts the
    checkpoint stored at train time) or, when there is nothing to count or no row would be cold, every row
    8-bit, said in a note. Returns (options used, hot order, its source, notes)."""
    from rubricate.student.checkpoint import read_token_counts

    n_hot = options.embedding_hot_rows
    if not n_hot or options.embedding_bits != 8:
        return options, None, None, []
    if n_hot >= len(tokenizer):
        return (replace(options, embedding_hot_rows=None), None, None,
                [f"embedding_hot_rows {n_hot} >= vocabulary {len(tokenizer)}: every row stays 8-bit"])
    if texts:
        counts, source = count_tokens(tokenizer, texts, max_length), "texts"
    else:
        counts, source = read_token_counts(ckpt, len(tokenizer)), "checkpoint"
    if counts is None:
        return (replace(options, embedding_hot_rows=None), None, None,
                ["the checkpoint has no token counts (saved before they were stored) and no frequency texts "
                 "were given: every word-embedding row stays 8-bit (rubricate export --frequency-data FILE)"])
    return options, hot_order(counts, tokenizer.all_special_ids), source, []


def export_checkpoint(
    checkpoint_dir: str | Path,
    *,
    int8: bool = False,
    opset: int = 17,
    parity_texts: Sequence[str] | None = None,
    frequency_texts: Sequence[str] | None = None,
    tolerance_fp32: float = DEFAULT_FP32_TOLERANCE,
    tolerance_int8: float = DEFAULT_INT8_TOLERANCE,
    int8_options: Int8Options | None = None,
    optimize: bool = True,
    strict: bool = True,
) -> ExportReport:
    """Export a student checkpoint to ``<dir>/onnx/`` (+ int8), check parity against torch, report.

    ``parity_texts``: inputs for the parity check (default: texts stored in the checkpoint plus
    built-in sentences); each is run under every task index. ``frequency_texts``: responses like those to be
    scored, whose token counts choose the 8-bit rows of ``Int8Options.embedding_hot_rows`` (default: the
    training counts stored in the checkpoint; without either, every row stays 8-bit and the report says so).
    ``int8_options``: how the int8 graph is
    quantized (:class:`~rubricate.student.onnx_tools.Int8Options`). ``optimize``: run ONNX Runtime's
    transformer optimizer on the fp32 graph first (:func:`~rubricate.student.onnx_tools.optimize_graph`;
    both graphs are checked after it). ``strict``: raise :class:`ParityError`
    (after writing the report) when a difference exceeds its tolerance.
    """
    from rubricate.student.checkpoint import load_model

    t0 = time.perf_counter()
    ckpt = Path(checkpoint_dir)
    model, tokenizer, doc = load_model(ckpt)
    cfg = model.config
    fp32_path, int8_path = onnx_paths(ckpt)
    export_model(model, fp32_path, opset=opset)
    fused: dict[str, int] = {}
    if optimize:
        enc = cfg.encoder_config or {}
        fused = optimize_graph(fp32_path, fp32_path, int(enc.get("num_attention_heads", 0)),
                               int(enc.get("hidden_size", cfg.hidden_size)))

    texts = list(parity_texts) if parity_texts else (_texts_from_doc(doc) + _FALLBACK_TEXTS)
    ids, tidx = parity_inputs(tokenizer, texts, len(cfg.task_ids), cfg.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def onnx_logits(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        return run_engine(OnnxEngine(path), ids, tidx, pad_id, cfg.max_labels, PARITY_BATCH_SIZE)

    ref_logits, ref_gates = run_model(model, ids, tidx, pad_id, PARITY_BATCH_SIZE)
    z32, g32 = onnx_logits(fp32_path)
    d32 = max_prob_difference(ref_logits, z32, tidx, cfg.n_labels)
    dgate = float(np.abs(ref_gates - g32).max()) if ref_gates is not None and g32 is not None else 0.0
    sizes = {FP32_NAME: fp32_path.stat().st_size / 2**20}

    d8: float | None = None
    out_int8: Path | None = None
    excluded: list[str] = []
    options = int8_options or Int8Options()
    hot_source: str | None = None
    notes: list[str] = []
    if int8:
        options, hot, hot_source, notes = _hot_rows(ckpt, tokenizer, options, frequency_texts, cfg.max_length)
        out_int8, excluded = quantize_int8(fp32_path, int8_path, options, hot_ids=hot)
        d8 = max_prob_difference(ref_logits, onnx_logits(out_int8)[0], tidx, cfg.n_labels)
        sizes[INT8_NAME] = out_int8.stat().st_size / 2**20
    elif int8_path.exists():
        int8_path.unlink()  # a stale int8 file from an older fp32 export would be picked up by the Scorer

    report = ExportReport(
        checkpoint=str(ckpt), onnx_path=str(fp32_path), int8_path=str(out_int8) if out_int8 else None,
        opset=opset, n_parity_inputs=int(len(tidx)), max_abs_dprob_fp32=d32,
        max_abs_dprob_int8=d8, tolerance_fp32=tolerance_fp32, tolerance_int8=tolerance_int8,
        max_abs_dgate_fp32=dgate, int8_options=asdict(options) if int8 else None, int8_excluded_nodes=len(excluded),
        fused_operators=fused, hot_rows_source=hot_source, notes=notes,
        size_mb={k: round(v, 3) for k, v in sizes.items()},
        seconds=round(time.perf_counter() - t0, 2))
    (fp32_path.parent / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if strict and not report.passed:
        raise ParityError(
            f"ONNX export of {ckpt} fails the parity check: max |dprob| fp32 {d32:.2e} (tolerance "
            f"{tolerance_fp32:.0e})" + (f", int8 {d8:.3f} (tolerance {tolerance_int8})" if d8 is not None else "")
            + f"; report in {fp32_path.parent / REPORT_NAME}")
    return report
