"""Hold calls to an Executor that has no ready replica, for a bounded time: scale to zero.

With the diffusion Deployment scaled to zero (k8s/autoscaling/scale-to-zero), its headless
Service name resolves to nothing until KEDA has started a pod and the pod has loaded its model.
jina's gateway fails such a call at once: gRPC reports UNAVAILABLE ("DNS resolution failed",
"connection refused") and jina's retries follow without a pause. gRPC's ``waitForReady`` does not
help either: a channel whose name never resolved fails even those calls.

``hold_calls_for_replicas`` wraps the gateway's connection pools so that a call (and jina's
endpoint discovery, which comes first) that fails with UNAVAILABLE is tried again, with growing
pauses, until a replica answers or ``seconds`` have passed since the first try. Then the call
fails with UNAVAILABLE and a message that says so. Off (0 s) unless ``COLD_START_ENV`` is set:
without scale to zero, an Executor with no replica is a fault to report at once.

Only UNAVAILABLE is held: the call never reached an Executor, or its replica went away, so trying
again cannot run it twice on a live replica. Timeouts and errors from Executors pass through.
"""

import asyncio
import os
from typing import Awaitable, Callable

import grpc
from jina.excepts import InternalNetworkError

COLD_START_ENV = 'S2I_COLD_START_SECONDS'
FIRST_PAUSE_SECONDS = 0.25
MAX_PAUSE_SECONDS = 2.0


def cold_start_seconds_from_environment() -> float:
    """How long a call waits for a replica (``COLD_START_ENV``, seconds); 0 when unset."""
    value = os.environ.get(COLD_START_ENV, '').strip()
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        raise ValueError(f'{COLD_START_ENV} must be a number of seconds, got {value!r}') from None
    if seconds < 0:
        raise ValueError(f'{COLD_START_ENV} must be 0 or more seconds, got {value!r}')
    return seconds


def no_replica(outcome) -> bool:
    """Whether a call's outcome (a result, or the error jina returns or raises) is UNAVAILABLE."""
    return (
        isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() == grpc.StatusCode.UNAVAILABLE
    )


def warming_up_error(
    error: grpc.aio.AioRpcError, deployment: str, seconds: float
) -> InternalNetworkError:
    """The error a held call ends with: still UNAVAILABLE, saying what it waited for."""
    return InternalNetworkError(
        og_exception=error,
        request_id=getattr(error, 'request_id', ''),
        dest_addr=getattr(error, 'dest_addr', {deployment}),
        details=f'{deployment} has no ready replica after waiting {seconds:g} s for one to '
        f'start (scaled to zero and still loading its model?); retry later. '
        f'Last error: {error.details()}',
    )


async def held(attempt: Callable[[], Awaitable], deployment: str, seconds: float):
    """Await ``attempt()`` again, with growing pauses, while its outcome is UNAVAILABLE and
    ``seconds`` have not passed; return its outcome (an UNAVAILABLE one as ``warming_up_error``).
    An error ``attempt`` raises counts as its outcome and is raised again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pause = FIRST_PAUSE_SECONDS
    while True:
        try:
            outcome, raised = await attempt(), False
        except grpc.aio.AioRpcError as error:
            outcome, raised = error, True
        left = deadline - loop.time()
        if not no_replica(outcome) or left <= 0:
            break
        await asyncio.sleep(min(pause, left))
        pause = min(2 * pause, MAX_PAUSE_SECONDS)
    if no_replica(outcome):
        outcome = warming_up_error(outcome, deployment, seconds)
    if raised:
        raise outcome
    return outcome


def hold_calls_for_replicas(pool, seconds: float) -> None:
    """Make jina's ``GrpcConnectionPool`` ``pool`` (the gateway's, shared by its three servers)
    hold its data calls and endpoint discoveries for up to ``seconds`` while the target Executor
    has no replica. 0 leaves it unchanged."""
    if seconds <= 0:
        return
    send_requests_once = pool.send_requests_once
    send_discover_endpoint = pool.send_discover_endpoint

    def held_send(*args, deployment: str, **kwargs):
        async def attempt():
            task = send_requests_once(*args, deployment=deployment, **kwargs)
            return None if task is None else await task

        # jina awaits the returned task, or gathers several.
        return asyncio.ensure_future(held(attempt, deployment, seconds))

    def held_discovery(deployment: str, *args, **kwargs):
        async def attempt():
            call = send_discover_endpoint(deployment, *args, **kwargs)
            return None if call is None else await call

        return held(attempt, deployment, seconds)

    pool.send_requests_once, pool.send_discover_endpoint = held_send, held_discovery
