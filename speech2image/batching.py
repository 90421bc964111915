"""Continuous batching on one model thread: what queues while the model is busy runs as one batch.

An Executor owns one ``ModelWorker``: a thread, started at load, that makes every model call, the
warm-up included. Its async endpoints ``await worker.run(item, key, size)``. Whenever the thread
is free it takes the oldest queued job and every later one with the same ``key``, up to
``max_batch`` in total ``size``, and hands their items to ``run_batch`` in one call. A lone
request thus waits for nothing (no batching window), and under load a batch is whatever arrived
while the previous call ran.

Why one thread: jina runs a synchronous endpoint on whichever thread of its pool is free, and on
CPU a diffusers pipeline run from a thread other than the first that ran it was 1.6-1.9x slower
(the OpenMP team of each calling thread; docs/performance.md). One thread that makes every call
keeps the model at in-process speed.
"""

import asyncio
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Hashable, List, Optional, Sequence


@dataclass
class Job:
    """One request's work: its ``item`` for ``run_batch``, what it may share a call with
    (``key``), how much of a batch it fills (``size``), and where its result goes."""

    item: Any
    key: Hashable
    size: int
    future: Future = field(default_factory=Future)
    function: Optional[Callable[[], Any]] = None  # set by ``call``: run alone instead of a batch


class ModelWorker:
    """One thread that runs ``run_batch`` over batches of queued jobs.

    ``run_batch(items)`` returns one result per item, in order; a result that is an exception is
    raised to that item's caller alone. An exception raised by ``run_batch`` itself fails every
    job of the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[List[Any]], Sequence[Any]],
        max_batch: int,
        name: str,
        on_start: Optional[Callable[[], None]] = None,
    ):
        """
        :param run_batch: the model call, made on the worker thread only.
        :param max_batch: the most ``size`` one batch holds (a larger job still runs, alone).
        :param name: the thread's name, as logs and profilers show it.
        :param on_start: runs first on the worker thread (per-thread settings such as torch's
            thread count).
        """
        if max_batch < 1:
            raise ValueError(f'max_batch must be at least 1, got {max_batch}')
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._queue: Deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, args=(on_start,), name=name, daemon=True
        )
        self._thread.start()

    def submit(self, item: Any, key: Hashable = None, size: int = 1) -> Future:
        """Queue one job; its result (or exception) arrives on the returned future."""
        return self._enqueue(Job(item, key, size))

    def _enqueue(self, job: Job) -> Future:
        with self._ready:
            if self._closed:
                raise RuntimeError('the model worker is closed')
            self._queue.append(job)
            self._ready.notify()
        return job.future

    async def run(self, item: Any, key: Hashable = None, size: int = 1) -> Any:
        """``submit`` from a coroutine: await the result without blocking the event loop. A
        cancelled caller (client gone, timeout) cancels its job if it has not started."""
        return await asyncio.wrap_future(self.submit(item, key, size))

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the worker thread, in turn with the batches, and return its
        result: for model calls that are not requests, such as a warm-up at load."""
        return self._enqueue(Job(None, object(), 1, function=function)).result()

    def close(self) -> None:
        """Stop taking jobs; the thread ends once the queued ones have run."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _next_batch(self) -> Optional[List[Job]]:
        """Block until there is work; take the oldest job and the queued ones that share its key,
        up to ``max_batch``. None once closed and empty. Cancelled jobs are dropped."""
        with self._ready:
            while True:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return None
                first = self._queue.popleft()
                if not first.future.set_running_or_notify_cancel():
                    continue
                batch, size, kept = [first], first.size, deque()
                while self._queue:
                    job = self._queue.popleft()
                    if job.key != first.key or size + job.size > self.max_batch:
                        kept.append(job)
                    elif job.future.set_running_or_notify_cancel():
                        batch.append(job)
                        size += job.size
                self._queue = kept
                return batch

    def _serve(self, on_start: Optional[Callable[[], None]]) -> None:
        if on_start is not None:
            on_start()
        while (batch := self._next_batch()) is not None:
            try:
                if batch[0].function is not None:  # a ``call``: its key is its own
                    results = [batch[0].function()]
                else:
                    results = self.run_batch([job.item for job in batch])
            except BaseException as error:  # noqa: B902 - handed to every caller, not swallowed
                for job in batch:
                    job.future.set_exception(error)
                continue
            for job, result in zip(batch, results):
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
