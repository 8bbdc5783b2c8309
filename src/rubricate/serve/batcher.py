"""Dynamic batching for ``/v1/score``: concurrent requests share one forward pass.

A model forward over 32 rows costs far less than 32 forwards over one row, so (as Triton and TorchServe do)
the requests that arrive together are gathered - for at most ``max_wait_ms``, up to ``max_items`` items -
and run as one call. One queue and one worker thread; callers block on their own future:

* each caller gets exactly the results of its own items, in its order;
* errors stay per request: when the gathered call raises, each request of that batch is run again alone,
  so only the request that really fails gets the exception;
* the wait is skipped when every request in flight is already in the batch (one client alone, at
  concurrency 1, never waits).

The callers write their database rows themselves after :meth:`Batcher.submit` returns, so a request's rows
are committed before its reply, as without batching.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")


class Batcher(Generic[X, Y]):
    """Runs ``fn`` (a list of items -> one result per item, in order) over gathered concurrent submissions."""

    def __init__(self, fn: Callable[[list[X]], list[Y]], max_wait_ms: float, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.fn = fn
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_items = int(max_items)
        self._queue: queue.Queue[tuple[list[X], Future[list[Y]]]] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted and not yet answered
        self._worker: threading.Thread | None = None
        self.batches = 0  #: forward calls made (for tests and the benchmark)

    def submit(self, items: Sequence[X]) -> list[Y]:
        """The results of ``items`` (blocks until their batch has run); re-raises this request's error."""
        if not items:
            return []
        fut: Future[list[Y]] = Future()
        with self._lock:
            self._in_flight += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="rubricate-batcher", daemon=True)
                self._worker.start()
        self._queue.put((list(items), fut))
        try:
            return fut.result()
        finally:
            with self._lock:
                self._in_flight -= 1

    # -- the worker ---------------------------------------------------------------------------------------
    def _gather(self) -> list[tuple[list[X], Future[list[Y]]]]:
        """The first waiting request, then whatever arrives within ``max_wait_ms`` (up to ``max_items``)."""
        batch = [self._queue.get()]
        size = len(batch[0][0])
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_items:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    everyone_here = self._in_flight <= len(batch)
                remaining = deadline - time.monotonic()
                if everyone_here or remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if size + len(nxt[0]) > self.max_items:
                self._queue.put(nxt)  # starts the next batch (a single request never exceeds max_items)
                break
            batch.append(nxt)
            size += len(nxt[0])
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            self._run(batch)

    def _run(self, batch: list[tuple[list[X], Future[list[Y]]]]) -> None:
        self.batches += 1
        try:
            results = self.fn([x for items, _ in batch for x in items])
        except BaseException as e:  # noqa: BLE001 - delivered to the callers, never lost in this thread
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for one in batch:  # isolate the failing request
                self._run([one])
            return
        start = 0
        for items, fut in batch:
            fut.set_result(results[start: start + len(items)])
            start += len(items)
