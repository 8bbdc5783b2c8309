"""Training on several processes (torchrun / DDP): the process group, the rank's shard of a batch, global-batch sums.

``rubricate train`` run by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) trains one model with ``torch.nn.parallel.DistributedDataParallel``; without those variables it is
today's single process. The rules (docs/distributed-training.md):

* ``TrainingArguments.batch_size`` is the **global** batch: every rank draws the same batches (same seed) and takes
  its own disjoint share of each (:func:`shard_rows`), so the recipe, its learning rates and its step count do not
  change with the number of processes;
* the loss of a shard is weighted so that DDP's mean of the ranks' gradients is the gradient of the whole batch's
  loss (:func:`all_reduce_sums` gives the batch's counts and sums);
* rank 0 alone validates, fits the decoder, shows the progress bar and writes the checkpoint; the validation metric
  is broadcast (:func:`broadcast_float`), so every rank takes the same early-stopping decisions.

Backends: ``gloo`` on CPU, ``nccl`` on GPU (each process takes GPU ``LOCAL_RANK``). torch is imported inside the
functions: the CLI reads :class:`DistributedOptions` without importing torch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "gloo", "nccl"]

#: the variables a torchrun worker (or any env:// launcher) has; all present = a distributed run
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedOptions:
    """How a launched run joins its process group (the recipe stays the same; these are about the machines)."""

    #: "auto": nccl when CUDA is available (one GPU per process, GPU = LOCAL_RANK), else gloo (CPU)
    backend: Backend = "auto"
    #: how long a collective may wait; rank 0 validates while the others wait in a broadcast, so a validation
    #: pass must finish within it
    timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {self.backend!r}")
        if not self.timeout_minutes > 0:
            raise ValueError(f"timeout_minutes must be > 0, got {self.timeout_minutes}")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run; the default is a single process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: no process group

    @property
    def enabled(self) -> bool:
        """True under a process group (even of one process: ``torchrun --nproc-per-node 1`` trains on GPU 0)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes."""
        return self.rank == 0


SINGLE = DistContext()


def launched() -> bool:
    """True in a process started by torchrun (all of :data:`LAUNCH_VARIABLES` set)."""
    return all(v in os.environ for v in LAUNCH_VARIABLES)


def launch_rank() -> int:
    """This process's rank in a torchrun launch (``RANK``), 0 outside one: who prints a verb's result."""
    return int(os.environ["RANK"]) if launched() else 0


def resolve_backend(backend: Backend) -> str:
    """The backend of ``backend`` ("auto": nccl with CUDA, gloo without)."""
    import torch

    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def _context_of_group(backend: str) -> DistContext:
    """The context of the process group already initialised in this process."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


@contextmanager
def process_group(options: DistributedOptions | None = None) -> Iterator[DistContext]:
    """The run's :class:`DistContext`: joins the process group of a torchrun launch (and leaves it at the end).

    A group the caller initialised already (a test, a notebook) is used as it is and left open; outside a launch and
    without a group this is the single process (:data:`SINGLE`), as before.
    """
    import torch
    import torch.distributed as dist

    opts = options or DistributedOptions()
    if dist.is_available() and dist.is_initialized():
        yield _context_of_group(dist.get_backend())
        return
    if not launched():
        yield SINGLE
        return
    backend = resolve_backend(opts.backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(minutes=opts.timeout_minutes))
    try:
        yield _context_of_group(backend)
    finally:
        dist.destroy_process_group()


def shard_rows(rows: np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's disjoint share of a global batch: every ``world_size``-th row from ``rank`` on.

    The batches are length-sorted, so striding gives every rank rows of similar lengths (and as little padding). Unlike
    ``DistributedSampler`` nothing is repeated to even out the shares: a rank can get fewer rows, or none at the
    end of an epoch (the trainer then runs a zero-weight row, so every rank still joins the gradient reduction).
    """
    return rows[ctx.rank:: ctx.world_size] if ctx.enabled else rows


def all_reduce_sums(values: Sequence["torch.Tensor"], ctx: DistContext) -> list["torch.Tensor"]:
    """The sums over ranks of ``values`` (detached; any shapes), in one collective."""
    import torch
    import torch.distributed as dist

    flat = [v.detach().reshape(-1).to(ctx.device, torch.float64) for v in values]
    if not ctx.enabled:
        return [f.reshape(v.shape) for f, v in zip(flat, values)]
    packed = torch.cat(flat)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for v in values:
        out.append(packed[start: start + v.numel()].reshape(v.shape))
        start += v.numel()
    return out


def broadcast_float(value: float | None, ctx: DistContext) -> float:
    """Rank 0's ``value`` on every rank (NaN for None), e.g. the validation metric early stopping reads."""
    import torch
    import torch.distributed as dist

    x = float("nan") if value is None else float(value)
    if not ctx.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (so no rank leaves while rank 0 still writes the checkpoint)."""
    import torch.distributed as dist

    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def wrap_model(model: "torch.nn.Module", ctx: DistContext) -> Any:
    """``model`` on this rank's device, in DistributedDataParallel (or as it is for a single process).

    ``find_unused_parameters=True``: a shard seldom holds every task, so some task heads (and task-owned layers)
    get no gradient on a rank. ``forward_sync_buffers=False``: the student has no running statistics (LayerNorm,
    not BatchNorm); its buffers are constants such as position ids (synced once, when DDP starts), so sending them
    again at every forward would be wasted.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    model.to(ctx.device)
    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True,
                                   forward_sync_buffers=False)


def shard_loss(out: Any, terms: Sequence[Any], n_rows: int, live: bool,
               ctx: DistContext) -> tuple["torch.Tensor", dict[str, float]]:
    """This rank's part of a global batch's loss, and the whole batch's term values (for the history).

    ``terms`` are the trainer's ``LossTerm`` on this rank's shard (``name``, ``weight``, ``value``, ``valid``).
    DDP averages the ranks' gradients, so each rank's loss is ``world_size`` times its share: a mean term
    contributes ``value * (own valid entries / the batch's)``; the load-balancing term (``valid`` None), a function
    ``f`` of the batch-mean gate weights, contributes ``<grad f(batch mean), own gate sum> / n_rows``, which has the
    same gradient. ``live=False``: this rank's shard is empty and ``out`` is a stand-in row of weight 0.
    """
    import torch

    from rubricate.student.losses import load_balancing_loss

    zero = torch.zeros((), device=out.logits.device)
    counts = torch.stack([t.valid.sum().to(zero.dtype) if live and t.valid is not None else zero for t in terms])
    gates = out.gate_weights.sum(dim=0) if out.gate_weights is not None else zero
    own_gates = gates if live else gates * 0.0
    counts_all, gates_all = all_reduce_sums([counts, own_gates], ctx)
    loss, shares, values = zero, [], {}
    for t, c, c_all in zip(terms, counts.tolist(), counts_all.tolist()):
        if t.valid is None:  # f(mean gate weights of the whole batch), linearised at that mean
            mean = (gates_all / n_rows).to(gates.dtype).requires_grad_(True)
            f = load_balancing_loss(mean.unsqueeze(0))
            (grad,) = torch.autograd.grad(f, mean)
            part = (own_gates * grad).sum() / n_rows
            values[t.name] = f.item()
        else:
            part = t.value * (c / c_all if c_all > 0 else 0.0)
            shares.append((t.name, part.detach()))
        loss = loss + t.weight * (ctx.world_size * part)
    if shares:  # the ranks' shares of a mean add up to the batch's mean
        summed = all_reduce_sums([torch.stack([v for _, v in shares])], ctx)[0].tolist()
        values.update({name: v for (name, _), v in zip(shares, summed)})
    return loss, {t.name: values[t.name] for t in terms}


class DeviceView:
    """A student on an accelerator as ``inference.run_model`` uses a CPU one: inputs go over, outputs come back."""

    def __init__(self, model: Any, device: str) -> None:
        self.model, self.device = model, device

    @property
    def config(self) -> Any:
        return self.model.config

    def eval(self) -> "DeviceView":
        self.model.eval()
        return self

    def __call__(self, input_ids: Any, attention_mask: Any, task_index: Any) -> Any:
        from dataclasses import replace

        out = self.model(input_ids.to(self.device), attention_mask.to(self.device), task_index.to(self.device))
        gates = None if out.gate_weights is None else out.gate_weights.cpu()
        return replace(out, logits=out.logits.cpu(), gate_weights=gates)


def host_view(model: Any, ctx: DistContext) -> Any:
    """``model`` itself on the CPU, else a :class:`DeviceView` of it (validation on rank 0's GPU)."""
    return model if ctx.device == "cpu" else DeviceView(model, ctx.device)
