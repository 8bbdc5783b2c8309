"""Training under torchrun: two gloo processes on CPU train the same model as one process (tiny models, fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rubricate.data.records import write_records
from rubricate.student.checkpoint import load_checkpoint
from rubricate.student.distributed import (
    SINGLE,
    DeviceView,
    DistContext,
    DistributedOptions,
    launch_rank,
    process_group,
    shard_rows,
)
from rubricate.student.inference import run_model
from rubricate.student.teachers import cross_fit_specialists
from rubricate.student.trainer import TrainingArguments, train
from tiny_models import make_tiny_encoder, tiny_records, tiny_tasks

#: How close the two-process checkpoint must be to the one-process one. Both runs see the same global batches, and
#: each rank's loss is weighted so that DDP's mean gradient is the whole batch's gradient: only the order of float32
#: sums differs (a batch's sums split over two shards, then all-reduced). Measured: 1.6e-7 at most on any weight
#: after the 15 AdamW steps. 1e-4 (on the weights and on validation probabilities) leaves room for other CPUs'
#: kernels and still fails on a real difference: ranks that simply average their own shard's losses end 5.4e-3 apart.
TOLERANCE = 1e-4


def test_shards_of_a_batch_are_disjoint_and_cover_it() -> None:
    rows = np.arange(11)
    shards = [shard_rows(rows, DistContext(rank=r, world_size=3, backend="gloo")) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == rows.tolist()
    assert [len(s) for s in shards] == [4, 4, 3]
    assert shard_rows(rows, SINGLE).tolist() == rows.tolist()
    assert shard_rows(rows[:1], DistContext(rank=1, world_size=2, backend="gloo")).size == 0  # the trainer pads it


def test_outside_a_launch_training_stays_one_process(monkeypatch) -> None:
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with process_group() as ctx:
        assert ctx is SINGLE and not ctx.enabled and ctx.is_main
    assert launch_rank() == 0
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="backend"):
        DistributedOptions(backend="mpi")  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_tasks(reg, folder: Path) -> Path:
    folder.mkdir()
    for t in reg:
        (folder / f"{t.id}.yaml").write_text(yaml.safe_dump(t.model_dump(exclude_none=True)), encoding="utf-8")
    return folder


def _no_dropout_encoder(folder: Path) -> Path:
    """A tiny encoder without dropout: ranks draw their own dropout masks, so only a dropout-free run is comparable
    number for number (with dropout the runs agree in distribution)."""
    enc = make_tiny_encoder(folder)
    cfg = json.loads((enc / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (enc / "config.json").write_text(json.dumps(cfg))
    return enc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same recipe trained by one process (library call) and by ``torchrun --nproc-per-node 2`` (the CLI)."""
    root = tmp_path_factory.mktemp("ddp")
    reg = tiny_tasks()
    # 65 rows in global batches of 16: the last batch has one row, so one rank's shard of it is empty
    tr = tiny_records("tiny-ord", 33) + tiny_records("tiny-crit", 32)
    va = tiny_records("tiny-ord", 20, seed=1, prefix="v") + tiny_records("tiny-crit", 20, seed=1, prefix="v")
    teacher = cross_fit_specialists(reg, tr, root / "teacher.jsonl", folds=2, options={"min_df": 1}, progress=False)
    recipe = {"tasks": str(_write_tasks(reg, root / "tasks")), "train_data": str(write_records(tr, root / "tr.jsonl")),
              "val_data": str(write_records(va, root / "va.jsonl")), "encoder": str(_no_dropout_encoder(root / "enc")),
              "method": "unimoe_guided", "teacher_file": str(teacher), "dropout": 0.0, "epochs": 3, "batch_size": 16,
              "early_stopping_patience": 10, "lr_encoder": 1e-3, "lr_new": 3e-3, "num_threads": 1,
              "progress": False, "seed": 3}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    one = train(replace(TrainingArguments.from_dict(recipe), output_dir=str(root / "one")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "rubricate", "train", "--recipe", str(root / "recipe.yaml"),
           "--output-dir", str(root / "two"), "--dist-backend", "gloo"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"one": one, "two": root / "two", "stdout": proc.stdout, "va": va, "root": root}


def test_two_gloo_processes_train_the_model_one_process_trains(runs) -> None:
    m1, _, _, _, d1 = load_checkpoint(runs["one"].checkpoint_dir)
    m2, tok, _, _, d2 = load_checkpoint(runs["two"])
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    worst = max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1)
    assert worst < TOLERANCE, worst
    # validation probabilities, and what rank 0 logged: the whole batch's losses, the same early-stopping choices
    ids = tok([r.text for r in runs["va"]], truncation=True)["input_ids"]
    task = [m1.config.task_ids.index(r.task_id) for r in runs["va"]]
    p1, p2 = (1 / (1 + np.exp(-run_model(m, ids, task, tok.pad_token_id)[0])) for m in (m1, m2))
    assert np.abs(p1 - p2).max() < TOLERANCE
    h1, h2 = d1["history"], d2["history"]
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [5, 10, 15]
    for a, b in zip(h1, h2):
        assert set(a) == set(b) and {"task", "lb", "kd"} <= set(a)
        assert b["val_mean_agreement"] == pytest.approx(a["val_mean_agreement"], abs=1e-6)
        for part in ("loss", "task", "lb", "kd"):
            assert b[part] == pytest.approx(a[part], rel=1e-4, abs=1e-6), part
    assert d2["decoder"] == d1["decoder"]


def test_only_rank_zero_prints_the_result(runs) -> None:
    lines = [json.loads(x) for x in runs["stdout"].splitlines() if x.startswith("{")]
    assert len(lines) == 1 and Path(lines[0]["checkpoint"]) == runs["two"]
    assert lines[0]["val_mean_agreement"] == pytest.approx(runs["one"].val_mean_agreement, abs=1e-6)


def test_a_process_group_the_caller_opened_is_used_and_left_open(tmp_path) -> None:
    """The library way: ``train`` inside a group of one gloo process is a DDP run (same model) and leaves it open."""
    import torch.distributed as dist

    reg = tiny_tasks()
    tr = tiny_records("tiny-ord", 21) + tiny_records("tiny-crit", 20)
    args = TrainingArguments(encoder=str(_no_dropout_encoder(tmp_path / "enc")), method="unimoe", dropout=0.0,
                             epochs=1, batch_size=8, progress=False, seed=1, output_dir=str(tmp_path / "one"))
    one = train(args, registry=reg, train_records=tr)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        with process_group() as ctx:
            assert ctx.enabled and ctx.world_size == 1 and ctx.backend == "gloo"
        ddp = train(replace(args, output_dir=str(tmp_path / "ddp")), registry=reg, train_records=tr)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    (m1, tok, *_), (m2, *_) = (load_checkpoint(r.checkpoint_dir) for r in (one, ddp))
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert max(float((s1[k] - s2[k]).abs().max()) for k in s1) < TOLERANCE
    # rank 0's validation on a GPU goes through DeviceView; on the CPU it must give run_model's own outputs
    ids, task = tok([r.text for r in tr[:5]])["input_ids"], [0] * 5
    direct, via = run_model(m1, ids, task, tok.pad_token_id), run_model(DeviceView(m1, "cpu"), ids, task,
                                                                        tok.pad_token_id)
    assert np.array_equal(direct[0], via[0]) and np.array_equal(direct[1], via[1])
