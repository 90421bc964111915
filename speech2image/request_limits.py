"""Limits on how requests arrive at the gateway, kept before jina buffers, counts or splits
them (speech2image/gateway.py calls these; request_policy.py says what a refusal looks like):

- Counting: ``RequestSlots`` holds one of the guard's pending slots per request in flight on one
  gRPC call or WebSocket connection, so that many requests on one connection count as many.
- Arrival: ``read_body`` refuses an HTTP body by its declared size before reading it, bounds
  the bytes of bodies still arriving, all connections together (``BodyLimits``), and times out
  a body that stalls.
- One request per call: ``whole_requests`` stops jina's HTTP gateway from splitting a call's
  documents into requests of 100 (of which it answered only the first).
"""

import asyncio
from collections import Counter
from typing import List, Optional

import grpc

from speech2image.defaults import MEBIBYTE
from speech2image.request_policy import Refusal, RequestGuard, too_large

# At most this many request bodies of the largest size may be arriving at once, all HTTP
# connections together; more waiting bytes get "server busy".
BUFFERED_BODIES = 4


def whole_requests(streamer) -> None:
    """Send each HTTP call's documents to the Executors as one request, as gRPC and WebSocket
    calls are. jina's HTTP gateway hands them to ``stream_docs`` with its default
    ``request_size`` of 100, which splits them into requests of 100 documents, and answers with
    the first request's response only: the rest were computed and dropped, and an error in them
    named the document by its place in its own hundred."""
    split = streamer.stream_docs

    def stream_docs(docs, request_size: int = 0, **kwargs):
        return split(docs, request_size=max(len(docs), 1), **kwargs)

    streamer.stream_docs = stream_docs


class RequestSlots:
    """The guard's pending slots held by one gRPC call or WebSocket connection: one per request
    admitted and not answered yet, matched to its answer by request id."""

    def __init__(self, guard: RequestGuard):
        self.guard = guard
        self._held: Counter = Counter()

    def admit(self, request_id: str) -> None:
        """Take a slot for one more request, or raise the guard's ``Refusal``."""
        self.guard.admit()
        self._held[request_id] += 1

    def answered(self, request_id: str) -> None:
        """Give back the slot of the request a response with ``request_id`` answers (jina keeps
        the request's id); a response to no held request (a dry run) gives back nothing."""
        if not self._held[request_id]:
            return
        self._held[request_id] -= 1
        if not self._held[request_id]:
            del self._held[request_id]
        self.guard.release()

    def release_all(self) -> None:
        """Give back every slot still held (the call or connection ended)."""
        for _ in range(sum(self._held.values())):
            self.guard.release()
        self._held.clear()


class BodyLimits:
    """How HTTP request bodies may arrive: at most ``max_bytes`` each, each whole within
    ``timeout`` seconds, and at most ``max_buffered`` bytes of them arriving at once, all
    connections together (a body holds its declared size, or what has come of it, while it
    arrives), so that stalled or slow uploads cannot pile up memory."""

    def __init__(self, max_request_bytes: int, timeout_seconds: float):
        self.max_bytes = max_request_bytes
        self.max_buffered = BUFFERED_BODIES * max_request_bytes
        self.timeout = timeout_seconds
        self.buffered = 0

    def hold(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise a "server busy" ``Refusal`` when there is no room."""
        if self.buffered + size > self.max_buffered:
            raise Refusal(
                f'server busy: {self.max_buffered / MEBIBYTE:g} MiB of request bodies are '
                'arriving; retry later',
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                503,
            )
        self.buffered += size


def body_timed_out(seconds: float) -> Refusal:
    return Refusal(
        f'the request body did not arrive within {seconds:g} s',
        grpc.StatusCode.DEADLINE_EXCEEDED,
        408,
    )


def declared_size(content_length: Optional[str]) -> int:
    """A body's size as its ``Content-Length`` header declares it; 0 when it declares none."""
    try:
        return max(int(content_length or 0), 0)
    except ValueError:
        return 0


async def read_body(receive, content_length: Optional[str], limits: BodyLimits) -> bytes:
    """The whole request body. Refused past ``limits.max_bytes`` by its declared size before
    any of it is read (else as it arrives), when too many bytes are arriving already, and when
    it has not all arrived within ``limits.timeout`` seconds."""
    declared = declared_size(content_length)
    if declared > limits.max_bytes:
        raise too_large(limits.max_bytes)
    limits.hold(declared)
    held = [declared]  # what this body holds; grows when more comes than it declared
    try:
        return await asyncio.wait_for(read_chunks(receive, limits, held), limits.timeout)
    except asyncio.TimeoutError:
        raise body_timed_out(limits.timeout) from None
    finally:
        limits.buffered -= held[0]


async def read_chunks(receive, limits: BodyLimits, held: List[int]) -> bytes:
    """The body's chunks joined, holding in ``limits`` what comes beyond ``held[0]``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message['type'] == 'http.disconnect':
            break
        chunk = message.get('body', b'')
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large(limits.max_bytes)
        if size > held[0]:
            limits.hold(size - held[0])
            held[0] = size
        chunks.append(chunk)
        if not message.get('more_body'):
            break
    return b''.join(chunks)
