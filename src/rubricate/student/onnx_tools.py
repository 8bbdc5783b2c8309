"""ONNX graph tools for the int8 export (block-wise int8 weights and tables) and the CPU session options.

Why full *dynamic* int8 (``onnxruntime.quantization.quantize_dynamic``) failed parity on a trained student:
it gives each MatMul input one activation scale per tensor, and the fine-tuned encoder's activations have a
few outlier hidden dimensions, so one scale sized for them leaves the rest a handful of levels. Measured on
the ten-item ASAP-SAS MiniLM checkpoint (``runs/bench_ten/runs/unimoe-soft``), max |dprob| against fp32
over its 1,672 test rows: everything dynamic int8, per-channel, 7-bit weights 0.29 (0.25 full-range
weights); one group at a time: each encoder layer 0.03-0.16 (the feed-forward output projections 0.21
together), the embedding table per-tensor 0.034, the MoE experts 0.002. SmoothQuant scaling (alpha 0.5 /
0.75, calibrated on 256 training responses) did not fix it (0.40 / 0.15).

What does: **block-wise** quantization, ONNX Runtime's ``MatMulNBits`` with 8-bit weights and one scale per
``weight_block`` (32) values of a column, run with ``accuracy_level`` 4 (activations quantized to int8 per
block of 32 as well, so an outlier only coarsens its own block): max |dprob| 0.029, test QWK -0.0008
(blocks of 128: 0.074). The heads and MoE gates (``Gemm``) are rewritten as MatMul + Add to be covered too.
The word-embedding table (45% of the weights) is stored 8-bit per block of ``embedding_block`` values of a
row (``GatherBlockQuantized``): with it the file is 27.8 MB, max |dprob| 0.038, QWK -0.0015. 4-bit tables
(``embedding_bits=4``, ONNX Runtime's own Gather quantizer, blocks of 16) reach 24.3 MB at 0.071 / -0.0020.
**Hot rows** (``embedding_hot_rows``, :func:`split_table_by_frequency`): the 8192 rows most frequent in the
training texts stay 8-bit, the other 22k 4-bit (blocks of 32): 24.4 MiB, max |dprob| 0.020 on the ten-item
student's 1,675 test rows, QWK -0.0002 against fp32 (``docs/serving.md``).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np


@dataclass
class Int8Options:
    """How ``rubricate export --int8`` quantizes; every field is a documented knob (the CLI reads these)."""

    weight_block: int = 32  #: weights per scale along a MatMul column (a power of two >= 16); smaller = closer
    accuracy_level: int = 4  #: MatMulNBits compute: 4 = int8 activations per block (fast), 1 = fp32 (exact-er)
    embedding_bits: int | None = 8  #: bits of the word-embedding table (8 or 4); None keeps it fp32
    embedding_block: int = 128  #: values per scale in a row of the table (8 bits; 4 bits uses 16)
    #: 8-bit tables only: keep this many of the table's most frequent rows 8-bit and store the other, rare rows
    #: 4-bit; None: every row 8-bit. Frequencies: texts given to the export, else the training token counts the
    #: checkpoint stores. 8192 (of MiniLM's 30,522) measured on the ten-item ASAP-SAS student: 24.4 MiB, test
    #: max |dprob| 0.020, QWK -0.0002 vs fp32 (4096: 23.8 MiB, 0.029); docs/serving.md
    embedding_hot_rows: int | None = 8192
    #: values per scale of the rare rows' 4-bit table: the fp32 scales are a third of a 4-bit row at 16, a fifth
    #: at 32 (a rare row is seen by few responses, so its coarser blocks cost little)
    embedding_cold_block: int = 32
    exclude: str | None = None  #: regex of MatMul/Gemm node names kept fp32


@dataclass
class SessionOptions:
    """ONNX Runtime CPU session settings, defined once (OnnxEngine, Scorer, server and CLI read them)."""

    intra_op_threads: int | None = None  #: threads inside one operator; None = ONNX Runtime's default (all cores)
    inter_op_threads: int | None = 1  #: threads across independent operators (the graph is sequential: 1)
    graph_optimization: str = "all"  #: disabled | basic | extended | all
    cpu_arena: bool = True  #: reuse one memory arena across calls (faster; RSS keeps the largest batch's peak)
    memory_pattern: bool = True  #: plan buffers per input shape (pays with the dynamic axes here)

    def to_ort(self) -> Any:
        """An ``onnxruntime.SessionOptions`` with these settings."""
        import onnxruntime as ort

        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if self.graph_optimization not in levels:
            raise ValueError(f"graph_optimization must be one of {sorted(levels)}, got {self.graph_optimization!r}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[self.graph_optimization]
        if self.intra_op_threads is not None:
            opts.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads is not None:
            opts.inter_op_num_threads = int(self.inter_op_threads)
        opts.enable_cpu_mem_arena = bool(self.cpu_arena)
        opts.enable_mem_pattern = bool(self.memory_pattern)
        return opts


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """ONNX Runtime's optimizer and quantizer log every node they visit (at INFO/WARNING, from per-module
    loggers); keep errors only for the call, then restore whatever logging was disabled before."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def optimize_graph(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (``model_type="bert"``) on an exported student, written to ``dst``.

    The graph must come from an *eager-attention* export (``export.export_model`` does that): the SDPA
    graph of transformers 5 (about 50 small mask and reshape ops per layer) is not recognised. On the MiniLM
    student it fuses each layer's attention into ``MultiHeadAttention``, residual Add + LayerNorm into
    ``SkipLayerNormalization`` and bias + erf-GELU into ``BiasGelu`` (the MoE experts' too). Two fusions
    are turned off on purpose: the packed-QKV ``Attention`` op (its weights are not a MatMul, so the int8
    step would leave 6 x 3 projections fp32: 35 MB instead of 27.7) and ``EmbedLayerNormalization`` (it
    hides the word-embedding ``Gather`` from the 8-bit table quantizer: 68 MB). Measured on the trained
    ten-item student, 600 test responses, 2 threads, batch 32: fp32 149 -> 171 rows/s, int8 122 -> 141
    (``docs/serving.md``). The MoE and head parts are left as they are; the export's parity check proves
    the result. Returns the fused-operator counts.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.use_multi_head_attention = True  # q/k/v stay MatMuls (quantizable); MHA does the attention core
    options.enable_embed_layer_norm = False  # keep the embedding Gather visible to the table quantizer
    with _quiet_logs():
        model = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                         optimization_options=options, opt_level=0)
    model.save_model_to_file(str(dst))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


EMBEDDING_MIN_ROWS = 1024  #: a Gather table with fewer rows (positions, token types, tasks) stays fp32
TABLE_4BIT_BLOCK = 16  #: 4-bit tables: values per scale (blocks of 32 measured 0.087 vs 0.071)


def _block_quantize(model: Any, op_type: str, bits: int, block: int, accuracy_level: int | None,
                    exclude: list[str]) -> Any:
    """ONNX Runtime's block-wise weight quantizer over one op type (MatMul -> MatMulNBits, Gather -> 4-bit)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=bits,
                                                accuracy_level=accuracy_level, op_types_to_quantize=(op_type,),
                                                quant_axes=(("MatMul", 0), ("Gather", 1)))
    q = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    with _quiet_logs():
        q.process()
    return q.model.model


def quantize_int8(src: str | Path, dst: str | Path, options: Int8Options | None = None,
                  hot_ids: np.ndarray | None = None) -> tuple[Path, list[str]]:
    """Write the int8 graph of ``src`` (see the module docstring); returns its path and the nodes kept fp32.

    ``hot_ids``: word-embedding rows, most frequent first (needed by ``options.embedding_hot_rows``)."""
    import onnx

    o = options or Int8Options()
    if o.embedding_hot_rows and (o.embedding_bits != 8 or hot_ids is None):
        raise ValueError("embedding_hot_rows needs embedding_bits=8 and token frequencies (hot_ids): give the "
                         "export texts to count tokens on (rubricate export --frequency-data FILE)")
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and o.exclude
                and re.search(o.exclude, n.name)]
    model = _block_quantize(model, "MatMul", 8, o.weight_block, o.accuracy_level, excluded)
    if o.embedding_bits == 8 and o.embedding_hot_rows:
        hot, cold = split_table_by_frequency(model, np.asarray(hot_ids)[: o.embedding_hot_rows])
        others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name not in cold]
        model = _block_quantize(model, "Gather", 4, o.embedding_cold_block, None, others)
        quantize_tables_int8(model, o.embedding_block, names=hot)
    elif o.embedding_bits == 8:
        quantize_tables_int8(model, o.embedding_block)
    elif o.embedding_bits == 4:
        inits = {i.name: i for i in model.graph.initializer}
        small = [n.name for n in model.graph.node if n.op_type == "Gather"
                 and (n.input[0] not in inits or inits[n.input[0]].dims[0] < EMBEDDING_MIN_ROWS)]
        model = _block_quantize(model, "Gather", 4, TABLE_4BIT_BLOCK, None, small)
    elif o.embedding_bits is not None:
        raise ValueError(f"embedding_bits must be 8, 4 or None, got {o.embedding_bits!r}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst, excluded


def gemm_to_matmul(model: Any) -> int:
    """Rewrite each ``Gemm(A, B, C)`` with an initializer ``B`` (``nn.Linear`` on 2-D input: the heads and the
    MoE gates) as ``MatMul(A, B') + C``, so the block quantizer covers it too. In place; returns the count."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    del model.graph.node[:]
    count = 0
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            model.graph.node.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w.T.copy() if attrs.get("transB", 0) else w, n.input[1]))
        mm_out = f"{n.output[0]}_matmul" if len(n.input) > 2 else n.output[0]
        model.graph.node.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=f"{n.name}_matmul"))
        if len(n.input) > 2:
            model.graph.node.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
        count += 1
    return count


def quantize_tables_int8(model: Any, block: int = 128, min_rows: int = EMBEDDING_MIN_ROWS,
                         names: Collection[str] | None = None) -> int:
    """8-bit block quantization of each Gather over a 2-D initializer table with at least ``min_rows`` rows (the
    word embeddings), or of the Gather nodes ``names``: ``GatherBlockQuantized`` with one scale per ``block``
    values of a row, asymmetric uint8. (ONNX Runtime's quantizer only writes 4-bit tables; 4 bits moved
    probabilities by 0.07 on ASAP-SAS.) In place; returns the number of tables."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for n in model.graph.node:
        t = inits.get(n.input[0]) if n.op_type == "Gather" else None
        small = t is not None and (t.dims[0] < min_rows if names is None else n.name not in names)
        if t is None or len(t.dims) != 2 or small or t.dims[1] % block:
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        blocks = w.reshape(w.shape[0], -1, block)
        lo, hi = np.minimum(blocks.min(axis=2), 0.0), np.maximum(blocks.max(axis=2), 0.0)
        scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
        zero = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
        q = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 255).astype(np.uint8)
        base = n.input[0]
        model.graph.initializer.extend([numpy_helper.from_array(q.reshape(w.shape), f"{base}_q8"),
                                        numpy_helper.from_array(scale, f"{base}_q8_scale"),
                                        numpy_helper.from_array(zero, f"{base}_q8_zero")])
        model.graph.initializer.remove(t)
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        new = helper.make_node("GatherBlockQuantized", [f"{base}_q8", n.input[1], f"{base}_q8_scale", f"{base}_q8_zero"],
                               list(n.output), name=n.name, domain="com.microsoft", gather_axis=axis,
                               quantize_axis=1, block_size=block, bits=8)
        n.CopyFrom(new)
        count += 1
    if count and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def split_table_by_frequency(model: Any, hot_ids: np.ndarray,
                             ids_input: str = "input_ids") -> tuple[list[str], list[str]]:
    """Split the word-embedding table (a Gather over an initializer, indexed by the graph input ``ids_input``)
    into a *hot* table of the rows ``hot_ids`` and a *cold* table of the others, so they can get different
    bits (``Int8Options.embedding_hot_rows``).

    Why: a 4-bit table moved probabilities by 0.07-0.08 on ASAP-SAS, because every token of every response
    goes through it; a response's tokens are mostly a few thousand frequent ones, so keeping those 8-bit
    bounds the error while the ~20k rare rows (the bulk of the table) shrink by half. In the graph, one int32
    code per vocabulary row (``j`` for hot row ``j``, ``-1 - j`` for cold row ``j``) picks the row of either
    table, and ``Where`` keeps the right one; both lookups are cheap next to the encoder. In place; returns
    the names of the new hot and cold Gather nodes."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    hot = np.unique(np.asarray(hot_ids, dtype=np.int64))
    hot_names: list[str] = []
    cold_names: list[str] = []
    nodes = list(model.graph.node)
    del model.graph.node[:]
    for n in nodes:
        t = inits.get(n.input[0]) if n.op_type == "Gather" else None
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        if t is None or n.input[1] != ids_input or len(t.dims) != 2 or axis != 0 or uses[t.name] != 1:
            model.graph.node.append(n)
            continue
        w = numpy_helper.to_array(t)
        if hot.size == 0 or hot.min() < 0 or hot.max() >= w.shape[0]:
            raise ValueError(f"hot rows of table {t.name} must lie in [0, {w.shape[0]}), got "
                             f"[{hot.min() if hot.size else '-'}, {hot.max() if hot.size else '-'}]")
        is_hot = np.zeros(w.shape[0], dtype=bool)
        is_hot[hot] = True
        cold = np.flatnonzero(~is_hot)
        code = np.empty(w.shape[0], dtype=np.int32)
        code[hot] = np.arange(hot.size, dtype=np.int32)
        code[cold] = -1 - np.arange(cold.size, dtype=np.int32)
        b = t.name
        model.graph.initializer.remove(t)
        model.graph.initializer.extend([
            numpy_helper.from_array(code, f"{b}_code"), numpy_helper.from_array(w[hot], f"{b}_hot"),
            numpy_helper.from_array(w[cold] if cold.size else w[:1], f"{b}_cold"),
            numpy_helper.from_array(np.array(0, np.int32), f"{b}_zero"),
            numpy_helper.from_array(np.array(-1, np.int32), f"{b}_minus_one"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{b}_last_axis")])
        p, out = f"{n.name}_split", n.output[0]
        model.graph.node.extend([
            helper.make_node("Gather", [f"{b}_code", n.input[1]], [f"{p}_code"], name=f"{p}/code"),
            helper.make_node("Max", [f"{p}_code", f"{b}_zero"], [f"{p}_hot_index"], name=f"{p}/hot_index"),
            helper.make_node("Sub", [f"{b}_minus_one", f"{p}_code"], [f"{p}_cold_raw"], name=f"{p}/cold_raw"),
            helper.make_node("Max", [f"{p}_cold_raw", f"{b}_zero"], [f"{p}_cold_index"], name=f"{p}/cold_index"),
            helper.make_node("Gather", [f"{b}_hot", f"{p}_hot_index"], [f"{p}_hot_rows"], name=f"{p}/hot"),
            helper.make_node("Gather", [f"{b}_cold", f"{p}_cold_index"], [f"{p}_cold_rows"], name=f"{p}/cold"),
            helper.make_node("GreaterOrEqual", [f"{p}_code", f"{b}_zero"], [f"{p}_is_hot"], name=f"{p}/is_hot"),
            helper.make_node("Unsqueeze", [f"{p}_is_hot", f"{b}_last_axis"], [f"{p}_is_hot_3d"], name=f"{p}/expand"),
            helper.make_node("Where", [f"{p}_is_hot_3d", f"{p}_hot_rows", f"{p}_cold_rows"], [out], name=f"{p}/pick")])
        hot_names.append(f"{p}/hot")
        cold_names.append(f"{p}/cold")
    return hot_names, cold_names
