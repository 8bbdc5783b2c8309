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
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@dataclass
class Int8Options:
    """How ``rubricate export --int8`` quantizes; every field is a documented knob (the CLI reads these)."""

    weight_block: int = 32  #: weights per scale along a MatMul column (a power of two >= 16); smaller = closer
    accuracy_level: int = 4  #: MatMulNBits compute: 4 = int8 activations per block (fast), 1 = fp32 (exact-er)
    embedding_bits: int | None = 8  #: bits of the word-embedding table (8 or 4); None keeps it fp32
    embedding_block: int = 128  #: values per scale in a row of the table (8 bits; 4 bits uses 16)
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


def quantize_int8(src: str | Path, dst: str | Path, options: Int8Options | None = None) -> tuple[Path, list[str]]:
    """Write the int8 graph of ``src`` (see the module docstring); returns its path and the nodes kept fp32."""
    import onnx

    o = options or Int8Options()
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and o.exclude
                and re.search(o.exclude, n.name)]
    model = _block_quantize(model, "MatMul", 8, o.weight_block, o.accuracy_level, excluded)
    if o.embedding_bits == 8:
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


def quantize_tables_int8(model: Any, block: int = 128, min_rows: int = EMBEDDING_MIN_ROWS) -> int:
    """8-bit block quantization of each Gather over a 2-D initializer table with at least ``min_rows`` rows (the
    word embeddings): ``GatherBlockQuantized`` with one scale per ``block`` values of a row, asymmetric uint8.
    (ONNX Runtime's quantizer only writes 4-bit tables; 4 bits moved probabilities by 0.07 on ASAP-SAS.)
    In place; returns the number of tables."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for n in model.graph.node:
        t = inits.get(n.input[0]) if n.op_type == "Gather" else None
        if t is None or len(t.dims) != 2 or t.dims[0] < min_rows or t.dims[1] % block:
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
