"""Shared fixtures. Tests that need the real datasets use ``shared_data`` and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RUBRICATE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the datasets are absent (e.g. a clean CI clone)."""
    if not (SHARED_DATA / "asap-sas" / "train.tsv").exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster on 127.0.0.1: a head and one more worker node, each started by ``ray start
    --block`` (2 logical CPUs, a 100 MB object store), joined by this process; ``(address, temp dir)``.

    Torn down by signalling the sessions of the two ``ray start`` processes this fixture started (each holds
    that node's Ray processes), never by ``ray stop``, which would stop every Ray on the machine. Skips, with the log's tail
    as the reason, only when Ray is missing or the cluster does not come up."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rubricate[scale]')")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no ray command next to {sys.executable}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    keep = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE")}
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    common = ["--block", "--num-cpus=2", f"--object-store-memory={100 * 2 ** 20}", "--disable-usage-stats",
              "--node-ip-address=127.0.0.1"]
    log = (temp / "start.log").open("w")
    procs = [subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--temp-dir={temp}", *common], stdout=log, stderr=log, start_new_session=True)]
    address = f"127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return (temp / "start.log").read_text(errors="replace")[-1500:]

    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if procs[0].poll() is not None:
                    pytest.skip(f"ray start --head exited: {tail()}")
                time.sleep(0.3)
        procs.append(subprocess.Popen([str(ray_bin), "start", f"--address={address}", *common], stdout=log,
                                      stderr=log, start_new_session=True))
        ray.init(address=address, logging_level="warning")
        while time.time() < deadline and sum(n["Alive"] for n in ray.nodes()) < 2:
            time.sleep(0.3)
        if sum(n["Alive"] for n in ray.nodes()) < 2:
            pytest.skip(f"the Ray worker node did not join within 90 s: {tail()}")
        yield address, temp
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):  # the worker node first, then the head
            _stop_session(p, signal)
        log.close()
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


def _session_pids(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (one that this fixture created with ``start_new_session``)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


#: Seconds a test cluster's processes get to stop after SIGTERM before SIGKILL (nothing there needs saving).
RAY_STOP_GRACE_S = 5.0


def _stop_session(proc, signal) -> None:
    """SIGTERM the session that ``proc`` leads, wait up to ``RAY_STOP_GRACE_S``, then SIGKILL what is left."""
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + RAY_STOP_GRACE_S
        while time.time() < deadline and _session_pids(proc.pid):
            proc.poll()
            time.sleep(0.2)
    proc.wait()
