"""Batch scoring with a student checkpoint: files (``rubricate predict``) and row lists (the server's upload).

* :mod:`rubricate.batch.predict` - :func:`predict_file` (streamed, resumable), :func:`score_rows` (validate and
  score rows in memory), :func:`row_problem` (the per-row rules), :class:`PredictOptions`;
* :mod:`rubricate.batch.outputs` - output columns and writers, durable appends, sidecar files, progress bar.
"""

from rubricate.batch.outputs import sidecar_paths
from rubricate.batch.predict import (READERS, InputRow, PredictOptions, PredictSummary, input_row, predict_file,
                                     read_chunks, row_problem, score_rows)

__all__ = ["READERS", "InputRow", "PredictOptions", "PredictSummary", "input_row", "predict_file", "read_chunks",
           "row_problem", "score_rows", "sidecar_paths"]
