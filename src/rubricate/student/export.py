"""Fast inference for the student: ONNX export (fp32 and dynamic int8), parity check, ONNX Runtime engine.

The whole student - encoder, MoE blocks, every head - is exported as one graph of
``StudentModel.forward_padded(input_ids, attention_mask, task_index) -> (logits (B, L_max), gates (B, n_moe, M))``
with dynamic batch and sequence axes, so a mixed-task batch runs in one call with the task index as an
input. The tokenizer is *not* in the graph: the :class:`~rubricate.student.scorer.Scorer` tokenizes and
decodes, and :class:`OnnxEngine` only maps numpy arrays to numpy arrays (so the same engine serves any
tokenizer the checkpoint ships).

Files, next to the checkpoint: ``<checkpoint>/onnx/model.onnx`` and, with ``int8``,
``<checkpoint>/onnx/model.int8.onnx`` plus ``<checkpoint>/onnx/export.json`` (the parity report).

Parity: the export is run on real-looking inputs (the task questions and rubric texts stored in the
checkpoint, otherwise built-in sentences) for every task index, and the largest absolute difference of
the per-label *probabilities* against torch is reported; the export fails loudly when it exceeds the
tolerance (defaults: 1e-4 for fp32, 0.03 for int8, as documented in the serving issue).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ONNX_DIR = "onnx"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
REPORT_NAME = "export.json"
INPUT_NAMES = ["input_ids", "attention_mask", "task_index"]
OUTPUT_NAMES = ["logits", "gate_weights"]

DEFAULT_FP32_TOLERANCE = 1e-4
DEFAULT_INT8_TOLERANCE = 0.03
#: MatMuls kept in fp32, step by step, while the int8 graph fails its parity check. Step 1: each transformer
#: layer's feed-forward output projection (``layer.N/output/dense`` in BERT/MiniLM and MPNet alike), whose
#: input - the GELU activations of the 4x-wide intermediate layer - has the widest range, where 8-bit dynamic
#: activation quantization loses most. Step 2 adds the attention output and feed-forward input projections.
#: Measured on all-mpnet-base-v2 (``rubricate export --int8``, max |dprob| vs torch): fully quantized 0.054
#: (192 MB); step 1, 12 of 118 MatMuls in fp32: 0.024 (264 MB); step 2, 36 MatMuls: 0.008 (365 MB);
#: fp32 453 MB.
INT8_FALLBACK_STEPS: tuple[str, ...] = (
    r"layer\.\d+/output/dense/MatMul",
    r"layer\.\d+/(output/dense|attention/output/dense|attention/attn/o|intermediate/dense)/MatMul",
)

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
    int8_exclude: str | None = None  #: regex of the MatMul/Gemm nodes kept in fp32 in the int8 graph
    int8_excluded_nodes: int = 0
    int8_fallback_used: bool = False  #: the first int8 graph failed parity; INT8_FALLBACK_STEPS were applied
    max_abs_dprob_int8_full: float | None = None  #: the first int8 graph's max |dprob| (fallback only)
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

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(wrapper, (ids, mask, tidx), str(out_path), input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=dyn, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return out_path


def quantize_onnx_int8(src: str | Path, dst: str | Path, per_channel: bool = True,
                       reduce_range: bool = True, exclude: str | None = None) -> tuple[Path, list[str]]:
    """Dynamic int8 quantization of the MatMul/Gemm weights (activations quantized on the fly).

    ``reduce_range`` stores weights in 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs with a
    saturating 16-bit add, and full-range weights overflow it. Measured on a MiniLM student, max |dprob|
    vs torch is 0.043 with per-tensor full-range weights (fails the 0.03 tolerance), 0.018 per-channel,
    0.014 per-channel + reduced range; on a tiny random student 0.038 -> 0.0015. ``per_channel`` keeps
    one scale per output column. ``exclude``: a regex; MatMul/Gemm nodes whose name matches stay fp32.
    Returns the written path and the names of the excluded nodes.
    """
    import re

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    excluded: list[str] = []
    if exclude:
        graph = onnx.load(str(src), load_external_data=False).graph
        excluded = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and re.search(exclude, n.name)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=excluded)
    return dst, excluded


def quantize_torch_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every ``nn.Linear`` for torch CPU inference (returns a new module)."""
    import torch

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # pragma: no cover - very old torch
        from torch.quantization import quantize_dynamic
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


# --------------------------------------------------------------------------------------------------------
# ONNX Runtime side
# --------------------------------------------------------------------------------------------------------
class OnnxEngine:
    """Runs an exported student with ONNX Runtime: numpy in, numpy out, tokenizer-agnostic.

    ``intra_op_threads``: ONNX Runtime's per-call thread count (None = its default, all cores); set 1
    when several engines or server workers share a small machine.
    """

    def __init__(self, path: str | Path, intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
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


class LightTokenizer:
    """The checkpoint's ``tokenizer.json`` through the ``tokenizers`` library alone.

    ``transformers.AutoTokenizer`` imports torch (about 200 MB of resident memory) even when the model
    runs in ONNX Runtime; this adapter gives the same ids (special tokens come from the file's
    post-processor, truncation is applied here) with the call shape the Scorer uses:
    ``tok(texts, truncation=True, max_length=n)["input_ids"]`` and ``tok.pad_token_id``.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        d = Path(checkpoint_dir)
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        pad = "[PAD]"
        cfg = d / "tokenizer_config.json"
        if cfg.exists():
            pad = json.loads(cfg.read_text(encoding="utf-8")).get("pad_token") or pad
            pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        self.pad_token_id = self.tok.token_to_id(pad)

    def __call__(self, texts: Sequence[str], truncation: bool = True, max_length: int | None = None,
                 **_: Any) -> dict[str, list[list[int]]]:
        if truncation and max_length:
            self.tok.enable_truncation(max_length)
        else:
            self.tok.no_truncation()
        return {"input_ids": [e.ids for e in self.tok.encode_batch(list(texts))]}

    def __len__(self) -> int:
        return self.tok.get_vocab_size()


# --------------------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def parity_inputs(tokenizer: Any, texts: Sequence[str], n_tasks: int, max_length: int) -> dict[str, np.ndarray]:
    """Every text paired with every task index (so each head is checked), tokenized and padded."""
    rows_text, rows_task = [], []
    for t in range(n_tasks):
        for s in texts:
            rows_text.append(s)
            rows_task.append(t)
    enc = tokenizer(rows_text, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64),
            "task_index": np.asarray(rows_task, dtype=np.int64)}


def torch_outputs(model: Any, inputs: dict[str, np.ndarray], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    import torch

    logits, gates = [], []
    with torch.no_grad():
        for i in range(0, len(inputs["task_index"]), batch_size):
            sl = slice(i, i + batch_size)
            z, g = model.forward_padded(torch.from_numpy(inputs["input_ids"][sl]),
                                        torch.from_numpy(inputs["attention_mask"][sl]),
                                        torch.from_numpy(inputs["task_index"][sl]))
            logits.append(z.float().numpy())
            gates.append(g.float().numpy())
    return np.concatenate(logits), np.concatenate(gates)


def engine_outputs(engine: OnnxEngine, inputs: dict[str, np.ndarray], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    logits, gates = [], []
    for i in range(0, len(inputs["task_index"]), batch_size):
        sl = slice(i, i + batch_size)
        z, g = engine.run(inputs["input_ids"][sl], inputs["attention_mask"][sl], inputs["task_index"][sl])
        logits.append(z)
        gates.append(g)
    return np.concatenate(logits), np.concatenate(gates)


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


def export_checkpoint(
    checkpoint_dir: str | Path,
    *,
    int8: bool = False,
    opset: int = 17,
    parity_texts: Sequence[str] | None = None,
    tolerance_fp32: float = DEFAULT_FP32_TOLERANCE,
    tolerance_int8: float = DEFAULT_INT8_TOLERANCE,
    per_channel: bool = True,
    reduce_range: bool = True,
    int8_exclude: str | None = None,
    int8_fallback: bool = True,
    strict: bool = True,
) -> ExportReport:
    """Export a student checkpoint to ``<dir>/onnx/`` (+ int8), check parity against torch, report.

    ``parity_texts``: inputs for the parity check (default: texts stored in the checkpoint plus
    built-in sentences); each is run under every task index. ``per_channel``/``reduce_range``: see
    :func:`quantize_onnx_int8`. ``int8_exclude``: regex of MatMul/Gemm node names kept fp32. ``int8_fallback``:
    while the int8 graph fails its tolerance, quantize again with the next of :data:`INT8_FALLBACK_STEPS`
    added (the report says so and keeps the first attempt's difference). ``strict``: raise :class:`ParityError`
    (after writing the report) when a difference exceeds its tolerance.
    """
    from rubricate.student.modeling import load_model

    t0 = time.perf_counter()
    ckpt = Path(checkpoint_dir)
    model, tokenizer, doc = load_model(ckpt)
    cfg = model.config
    fp32_path, int8_path = onnx_paths(ckpt)
    export_model(model, fp32_path, opset=opset)

    texts = list(parity_texts) if parity_texts else (_texts_from_doc(doc) + _FALLBACK_TEXTS)
    inputs = parity_inputs(tokenizer, texts, len(cfg.task_ids), cfg.max_length)
    ref_logits, ref_gates = torch_outputs(model, inputs)
    fp32 = OnnxEngine(fp32_path)
    z32, g32 = engine_outputs(fp32, inputs)
    d32 = max_prob_difference(ref_logits, z32, inputs["task_index"], cfg.n_labels)
    dgate = float(np.abs(ref_gates - g32).max()) if ref_gates.size else 0.0
    sizes = {FP32_NAME: fp32_path.stat().st_size / 2**20}

    d8: float | None = None
    d8_first: float | None = None
    out_int8: Path | None = None
    excluded: list[str] = []
    exclude: str | None = None
    attempts = 0
    if int8:
        # the user's pattern first, then (while parity fails) each fallback step added to it
        steps = INT8_FALLBACK_STEPS if int8_fallback else ()
        patterns = [int8_exclude] + [f"({int8_exclude})|{s}" if int8_exclude else s for s in steps]
        for exclude in patterns:
            out_int8, excluded = quantize_onnx_int8(fp32_path, int8_path, per_channel=per_channel,
                                                    reduce_range=reduce_range, exclude=exclude)
            z8, _ = engine_outputs(OnnxEngine(out_int8), inputs)
            d8 = max_prob_difference(ref_logits, z8, inputs["task_index"], cfg.n_labels)
            attempts += 1
            d8_first = d8 if d8_first is None else d8_first
            if d8 <= tolerance_int8:
                break
        assert out_int8 is not None
        sizes[INT8_NAME] = out_int8.stat().st_size / 2**20
    elif int8_path.exists():
        int8_path.unlink()  # a stale int8 file from an older fp32 export would be picked up by the Scorer

    report = ExportReport(
        checkpoint=str(ckpt), onnx_path=str(fp32_path), int8_path=str(out_int8) if out_int8 else None,
        opset=opset, n_parity_inputs=int(len(inputs["task_index"])), max_abs_dprob_fp32=d32,
        max_abs_dprob_int8=d8, tolerance_fp32=tolerance_fp32, tolerance_int8=tolerance_int8,
        max_abs_dgate_fp32=dgate, int8_exclude=exclude, int8_excluded_nodes=len(excluded),
        int8_fallback_used=attempts > 1, max_abs_dprob_int8_full=d8_first if attempts > 1 else None,
        size_mb={k: round(v, 3) for k, v in sizes.items()},
        seconds=round(time.perf_counter() - t0, 2))
    (fp32_path.parent / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if strict and not report.passed:
        raise ParityError(
            f"ONNX export of {ckpt} fails the parity check: max |dprob| fp32 {d32:.2e} (tolerance "
            f"{tolerance_fp32:.0e})" + (f", int8 {d8:.3f} (tolerance {tolerance_int8})" if d8 is not None else "")
            + f"; report in {fp32_path.parent / REPORT_NAME}")
    return report
