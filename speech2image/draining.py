"""Graceful shutdown of an Executor: on SIGTERM, finish the requests in flight, then exit.

jina's worker stops its gRPC server with no grace period on SIGTERM, cancelling every request it
is working on. ``Drain`` takes SIGTERM over in the Executor's process: it waits until no request
has been in the Executor for ``QUIET_SECONDS`` (longer than a dynamic-batching window, so queued
requests reach the Executor and their answers are sent), at most ``drain_seconds``, then hands
over to jina's own shutdown by sending SIGINT, which jina handles as it handled SIGTERM.
"""

import asyncio
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

from jina import Executor

from speech2image.defaults import SHUTDOWN_GRACE_SECONDS

QUIET_SECONDS = 0.5
POLL_SECONDS = 0.05


class Drain:
    """Counts the requests inside an Executor and, under jina, drains them on SIGTERM."""

    def __init__(self, drain_seconds: float, logger=None):
        self.drain_seconds = drain_seconds
        self.logger = logger
        self.in_flight = 0
        self.last_active = time.monotonic()
        self._lock = threading.Lock()  # endpoints run in jina's worker threads
        self._draining = False
        self._install()

    def _install(self) -> None:
        """Take over SIGTERM on the loop jina serves this Executor from; outside jina (an
        Executor built in a test or a notebook) there is no such loop and nothing changes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    @contextmanager
    def tracking(self) -> Iterator[None]:
        """Mark one request (or one dynamic batch) as inside the Executor."""
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1
                self.last_active = time.monotonic()

    def _on_sigterm(self) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        deadline = time.monotonic() + self.drain_seconds
        while time.monotonic() < deadline and not self.idle():
            await asyncio.sleep(POLL_SECONDS)
        if self.logger is not None:
            self.logger.info(f'drained ({self.in_flight} requests still in flight); shutting down')
        exit_after(SHUTDOWN_GRACE_SECONDS, self.logger)
        os.kill(os.getpid(), signal.SIGINT)

    def idle(self) -> bool:
        """No request inside, and none for ``QUIET_SECONDS``."""
        with self._lock:
            return self.in_flight == 0 and time.monotonic() - self.last_active >= QUIET_SECONDS


def exit_after(seconds: float, logger) -> None:
    """End this process ``seconds`` from now unless it has ended by then (a daemon timer).

    jina's shutdown waits for what is still running without bound (a stuck model call in a
    worker thread, a hung request), so a drain would not be the last word without this."""

    def end():
        (logger or logging.getLogger(__name__)).warning(
            f'still shutting down {seconds:g} s after the drain; exiting now'
        )
        os._exit(1)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()


class DrainingExecutor(Executor):
    """An Executor whose requests drain on SIGTERM. Subclasses call ``start_draining_on_sigterm``
    at the end of ``__init__``, once the models are loaded."""

    drain: Drain = None

    def start_draining_on_sigterm(self, drain_seconds: float) -> None:
        self.drain = Drain(drain_seconds, self.logger)

    def tracking(self):
        """Count a request the drain waits for, from inside an endpoint: a streaming endpoint
        returns its generator before its work begins, so ``__acall__`` does not cover it."""
        return self.drain.tracking() if self.drain is not None else nullcontext()

    async def __acall__(self, req_endpoint: str, **kwargs):
        """jina's single entry into the Executor, per request or per dynamic batch; it includes
        the wait for the Executor's lock, so requests queued behind another are counted too."""
        if self.drain is None:
            return await super().__acall__(req_endpoint, **kwargs)
        with self.drain.tracking():
            return await super().__acall__(req_endpoint, **kwargs)
