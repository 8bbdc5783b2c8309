"""Batched inference, written once: length-sorted batches, dynamic padding, outputs back in input order.

Every place that runs the student over many rows goes through :func:`run_batched`: the trainer's evaluation
(:func:`run_model`), add-task (cached encoder states, self-distillation targets, agreement), the ONNX scorer
(:func:`run_engine`) and the export's parity check. Sorting by length keeps padding (and CPU time) small;
the sort is stable, so equal inputs give equal batches everywhere.

torch is imported inside the torch functions: the ONNX path of the scorer stays torch-free.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

#: a batch forward: the row indices of one batch -> (logits (B, L), gate weights (B, n_moe, M) or None)
BatchForward = Callable[[list[int]], tuple[np.ndarray, "np.ndarray | None"]]


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of ``batch_size``, shortest rows first (a stable sort)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


def run_batched(lengths: Sequence[int], batch_size: int, forward: BatchForward,
                width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``forward`` over length-sorted batches; (N, width) logits and (N, ...) gates (None without) in input order.

    An empty or zero-sized gate output (a model without MoE exported with a fixed signature) counts as None.
    """
    n = len(lengths)
    logits = np.zeros((n, width), dtype=np.float32)
    gates: np.ndarray | None = None
    for rows in length_batches(lengths, batch_size):
        z, g = forward(rows)
        logits[rows] = z
        if g is not None and np.size(g):
            if gates is None:
                gates = np.zeros((n, *np.shape(g)[1:]), dtype=np.float32)
            gates[rows] = g
    return logits, gates


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic padding: the ids of one batch -> (B, T_max) int64 input_ids and attention_mask."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """:func:`pad_ids` as torch long tensors (training and the torch backend)."""
    import torch

    ids, mask = pad_ids(seqs, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def run_model(model: Any, input_ids: Sequence[Sequence[int]], task_index: Sequence[int] | np.ndarray, pad_id: int,
              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, max_labels) and gate weights (N, n_moe, M) or None of a torch student, as numpy, in input order."""
    import torch

    model.eval()
    tidx = torch.as_tensor(np.asarray(task_index), dtype=torch.long)

    @torch.no_grad()
    def forward(rows: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        ids, mask = pad_batch([input_ids[i] for i in rows], pad_id)
        out = model(ids, mask, tidx[rows])
        g = out.gate_weights.float().numpy() if out.gate_weights is not None else None
        return out.logits.float().numpy(), g

    return run_batched([len(x) for x in input_ids], batch_size, forward, model.config.max_labels)


def run_engine(engine: Any, input_ids: Sequence[Sequence[int]], task_index: Sequence[int] | np.ndarray, pad_id: int,
               width: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """The same for an ONNX Runtime engine (``rubricate.student.export.OnnxEngine``); ``width`` = max labels."""
    tidx = np.asarray(task_index, dtype=np.int64)

    def forward(rows: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        ids, mask = pad_ids([input_ids[i] for i in rows], pad_id)
        return engine.run(ids, mask, tidx[rows])

    return run_batched([len(x) for x in input_ids], batch_size, forward, width)
