"""Every request the gateway hands to jina ends: its work is cancelled when its caller is gone,
and jina's pending-requests gauge counts it out.

jina 3.34's ``RequestStreamer`` runs each request as a task of its own (``asyncio.ensure_future``
in the gateway's request handler) and counts it out of ``jina_number_of_pending_requests`` only
when its result is read. A caller that goes away before that (a gRPC call cancelled, an HTTP
client or a WebSocket that hangs up, the gateway's own timeout, a ``/stream`` cancelled while
Whisper runs) stops reading, but the task runs on, the Executors keep working for nobody, and
the gauge, which drives the autoscaler, never comes down.

``end_requests_with_their_callers`` wraps the streamer's ``stream`` (every data call of the three
protocols, and ``/stream``'s Whisper stage, goes through it): when a call ends before the
results of its requests were read, their tasks are cancelled (which cancels the gRPC calls to
the Executors, and there the requests' jobs) and each is counted out as a failed request.

What was read is noted where the wrapper yields it, not by the task that reads it: a caller
may read each result in a task of its own (``asyncio.wait_for`` in Python 3.11 wraps each
``__anext__`` in a new task, with a copy of the caller's context, as the gateway's gRPC guard
does), and a note kept in a context variable there was lost, so that results already counted
out by jina were counted out again (a gRPC call of 12 requests left the gauge at -11).
jina does not cancel its request-reading task when a call is closed, so a call cancelled
before that task started its request (a ``/stream`` cancelled at once) gets the request
started after it ended: it is cancelled and counted out as it starts.

Cancelling a request's task must also cancel its call to the Executor, and with jina 3.34 and
grpc 1.x it did not, at once: jina awaits a unary call's ``trailing_metadata()`` first, and
grpc.aio cancels the RPC only when the awaiting of the call itself is cancelled (else when the
call object is garbage collected). The Executor heard of the hang-up 2.4-2.9 s late, about a
hundred steps of the offline model. ``cancel_executor_calls_with_their_tasks`` makes a
cancelled wait for the trailing metadata cancel the RPC.
"""

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, List, Optional, Set

CANCELLED_MESSAGE = 'the caller went away before the answer'


@dataclass
class CallRequests:
    """The request tasks one ``stream`` call started, and the results it read."""

    tasks: List[asyncio.Future] = field(default_factory=list)
    read: Set[int] = field(default_factory=set)  # ids of the results yielded to the caller
    ended: bool = False  # the call is over: a request jina starts now has no reader

    def unread(self) -> List[asyncio.Future]:
        """Tasks whose result the caller never read: still running, or done unread. A task
        that failed was counted out by jina when it failed."""
        return [
            task
            for task in self.tasks
            if not task.done()
            or (
                not task.cancelled()
                and task.exception() is None
                and id(task.result()) not in self.read
            )
        ]


# The call whose requests are being started: set by the wrapped ``stream`` in the context in
# which the streamer creates its request-reading task, which inherits it.
CURRENT_CALL: ContextVar[Optional[CallRequests]] = ContextVar('current_call', default=None)


def cancelled_response():
    """A jina error response for a request nobody waits for any more, to count it out with."""
    from jina.proto import jina_pb2
    from jina.types.request.data import DataRequest

    response = DataRequest()
    response.header.status.code = jina_pb2.StatusProto.ERROR
    response.header.status.description = CANCELLED_MESSAGE
    return response


class CancelledWithItsWaiter:
    """A grpc.aio unary call whose RPC is cancelled when a wait for its trailing metadata is."""

    def __init__(self, call):
        self.call = call

    async def trailing_metadata(self):
        try:
            return await self.call.trailing_metadata()
        except asyncio.CancelledError:
            self.call.cancel()
            raise

    def __await__(self):
        return self.call.__await__()

    def __getattr__(self, name: str):
        return getattr(self.call, name)


def cancel_executor_calls_with_their_tasks() -> None:
    """Wrap the unary methods of the stubs jina's gateway calls Executors with (once per
    process): each call they make is a ``CancelledWithItsWaiter``."""
    from jina.serve.networking.connection_stub import _ConnectionStubs

    init_stubs = _ConnectionStubs._init_stubs
    if getattr(init_stubs, 'cancels_calls', False):
        return

    async def init_stubs_cancelling(stubs) -> None:
        await init_stubs(stubs)
        for stub, method in (
            (stubs.single_data_stub, 'process_single_data'),
            (stubs.data_list_stub, 'process_data'),
        ):
            if stub is not None:
                make_call = getattr(stub, method)
                setattr(
                    stub,
                    method,
                    lambda *a, _call=make_call, **k: CancelledWithItsWaiter(_call(*a, **k)),
                )

    init_stubs_cancelling.cancels_calls = True
    _ConnectionStubs._init_stubs = init_stubs_cancelling


def end_requests_with_their_callers(gateway_streamer) -> None:
    """Wrap the ``RequestStreamer`` of jina's ``GatewayStreamer`` (shared by the gateway's three
    servers) so that each call's unread requests are cancelled and counted out when it ends."""
    streamer = gateway_streamer._streamer
    handle_request = streamer._request_handler
    handle_result = streamer._result_handler  # counts a result out of the pending gauge
    stream = streamer.stream

    def request_handler(*args, **kwargs):
        task, floating = handle_request(*args, **kwargs)
        call = CURRENT_CALL.get()
        if call is not None and call.ended:
            # jina's request-reading task outlives a call cancelled before it started this one
            task.cancel()
            handle_result(cancelled_response())
        elif call is not None:
            call.tasks.append(task)
        return task, floating

    async def stream_ending_with_its_caller(*args, **kwargs) -> AsyncIterator[Any]:
        call = CallRequests()
        CURRENT_CALL.set(call)
        try:
            async for response in stream(*args, **kwargs):
                # jina counted it out as it handed it over (its result handler's return value)
                call.read.add(id(response))
                yield response
        finally:
            call.ended = True
            for task in call.unread():
                task.cancel()
                handle_result(cancelled_response())

    streamer._request_handler = request_handler
    streamer.stream = streamer.Call = stream_ending_with_its_caller
