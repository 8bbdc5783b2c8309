"""The checkpoint directory, read and written here alone.

A student checkpoint is a folder::

    config.json         the document: {"format": "rubricate-student", "format_version", "model": StudentConfig,
                        "model_id", "model_version" (hash of the weights), "weights_sha256", "tasks" (registry
                        snapshot), "label_encodings", "recipe", "metrics", "history", "decoder", "parameters", ...}
    model.safetensors   the weights
    token_counts.json   optional: how often each vocabulary id occurs in the training responses (truncated at
                        max_length), {"n_rows", "max_length", "counts": {id: count}}; the int8 export keeps the
                        most frequent word-embedding rows 8-bit (Int8Options.embedding_hot_rows)
    tokenizer files     whatever the encoder's tokenizer saves (tokenizer.json, tokenizer_config.json, ...)
    onnx/               optional, written by ``rubricate export`` (rubricate.student.export)

Readers that need only part of it (the ONNX scorer needs no torch, add-task's CLI only the task snapshot) use
:func:`read_document`, :func:`load_tasks` and :func:`load_tokenizer` instead of parsing files themselves.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rubricate.labels import LabelEncoding
from rubricate.tasks import TaskRegistry

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKEN_COUNTS_NAME = "token_counts.json"
FORMAT = "rubricate-student"
FORMAT_VERSION = 1


def is_checkpoint(checkpoint_dir: str | Path) -> bool:
    """True when the folder holds a checkpoint document (e.g. a finished fold of a resumable run)."""
    return (Path(checkpoint_dir) / CONFIG_NAME).exists()


def read_document(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` document, checked to be a rubricate student's."""
    path = Path(checkpoint_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{Path(checkpoint_dir)} is not a rubricate student checkpoint (no {CONFIG_NAME})")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a rubricate student checkpoint (format={doc.get('format')!r})")
    return doc


def load_tasks(doc: dict[str, Any]) -> tuple[TaskRegistry, dict[str, LabelEncoding]]:
    """The task registry snapshot and the label encodings stored in a checkpoint document."""
    registry = TaskRegistry.from_snapshot(doc["tasks"])
    encodings = {t: LabelEncoding.from_dict(e) for t, e in doc["label_encodings"].items()}
    return registry, encodings


def checkpoint_document(model: Any, registry: TaskRegistry, encodings: dict[str, LabelEncoding],
                        recipe: Any, metrics: dict[str, Any], model_id: str,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The non-model part of ``config.json``: task snapshot, label encodings, recipe, metrics.

    ``recipe`` is the ``TrainingArguments`` (anything with ``to_dict``) or a plain mapping (add-task's
    base + adaptation arguments). ``model_version`` is added by :func:`save_model` (a hash of the weights).
    """
    tids = model.config.task_ids
    doc = {
        "model_id": model_id,
        "tasks": registry.subset(tids).snapshot(),
        "label_encodings": {t: encodings[t].to_dict() for t in tids},
        "recipe": recipe.to_dict() if hasattr(recipe, "to_dict") else recipe,
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": model.count_parameters(),
    }
    doc.update(extra or {})
    return doc


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, extra: dict[str, Any] | None = None,
               token_counts: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (model config + ``extra``), ``model.safetensors``, the tokenizer files and, when
    given, ``token_counts.json`` (a :func:`rubricate.student.data.token_counts` document)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    sha = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict()}
    doc.update(extra or {})
    doc["weights_sha256"] = sha
    doc.setdefault("model_version", sha[:12])
    (out / CONFIG_NAME).write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    if token_counts is not None:
        (out / TOKEN_COUNTS_NAME).write_text(json.dumps(token_counts), encoding="utf-8")
    elif (out / TOKEN_COUNTS_NAME).exists():
        (out / TOKEN_COUNTS_NAME).unlink()  # counts of an earlier model in this folder would mislead the export
    return out


def read_token_counts(checkpoint_dir: str | Path, vocab_size: int) -> np.ndarray | None:
    """The training token counts as a (vocab_size,) int64 array, or None for a checkpoint saved without them."""
    path = Path(checkpoint_dir) / TOKEN_COUNTS_NAME
    if not path.exists():
        return None
    return dense_counts(json.loads(path.read_text(encoding="utf-8")), vocab_size, str(path))


def dense_counts(doc: dict[str, Any], vocab_size: int, source: str = "<token counts>") -> np.ndarray:
    """A token-counts document (:func:`rubricate.student.data.token_counts`) as a (vocab_size,) int64 array."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for token, n in doc["counts"].items():
        if not 0 <= int(token) < vocab_size:
            raise ValueError(f"{source}: token id {token} is outside the tokenizer's vocabulary ({vocab_size})")
        counts[int(token)] = int(n)
    return counts


def load_model(checkpoint_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """Load (model in eval mode, tokenizer, full config document) from a checkpoint directory."""
    from rubricate.student.configuration import StudentConfig
    from rubricate.student.modeling import StudentModel

    d = Path(checkpoint_dir)
    if not (d / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{d} is not a rubricate student checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    doc = read_document(d)
    model = load_weights(StudentModel(StudentConfig.from_dict(doc["model"])), d)
    return model, load_tokenizer(d), doc


def load_weights(model: Any, checkpoint_dir: str | Path) -> Any:
    """Load ``model.safetensors`` into ``model`` (strict but for position_ids buffers); returns it in eval mode."""
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / WEIGHTS_NAME
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    # position_ids buffers differ between transformers versions; anything else is a real mismatch
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval()


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Any, Any, TaskRegistry, dict[str, LabelEncoding],
                                                          dict[str, Any]]:
    """(model, tokenizer, task registry snapshot, label encodings, config document) of a checkpoint."""
    model, tok, doc = load_model(checkpoint_dir)
    registry, encodings = load_tasks(doc)
    return model, tok, registry, encodings, doc


def load_tokenizer(checkpoint_dir: str | Path, light: bool = False) -> Any:
    """The checkpoint's tokenizer: ``transformers.AutoTokenizer``, or with ``light`` a :class:`LightTokenizer`
    when ``tokenizer.json`` exists (no torch import: the ONNX scorer's path)."""
    d = Path(checkpoint_dir)
    if light and (d / "tokenizer.json").exists():
        return LightTokenizer(d)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


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
