"""The streaming call ``/stream``: one document's events, in order, as they happen.

    accepted -> transcript -> progress (every step) and preview (every few steps) -> done
    (or one ``error``; or ``cancelled`` when the client cancelled it)

jina 3.34 streams from one Executor only: its gateway sends a ``stream_doc`` call to the first
Executor of the Flow ("this assumes there is only one Executor behind this Gateway", in
``handle_single_document_request``), here Whisper, which has no generator endpoint. And the
per-Executor streamer a custom gateway gets (``_ExecutorStreamer.stream_doc``) wraps the
document's protobuf as if it were a whole request, which fails with DocArray v2. So the gateway
runs the two stages itself, with jina's own means: Whisper through the Flow's ``/transcribe``
(jina's streamer: routing, retries, tracing; the diffusion Executor passes the transcript
through), then the diffusion Executor's generator endpoint ``/generate_stream`` through jina's
connection pool (``send_single_document_request``, as ``_ExecutorStreamer`` would), whose
events it relays. This module is protocol-free; speech2image/gateway.py serves it over gRPC,
HTTP (Server-Sent Events) and WebSocket.

Cancelling a stream (the client closed it, or asked by request id) cancels the task that reads
the diffusion Executor's stream; closing that gRPC stream cancels the generation there.
"""

import asyncio
import uuid
from typing import AsyncIterator, Dict, Optional

from docarray import DocList

from speech2image import defaults
from speech2image.request_policy import (
    Refusal,
    RequestGuard,
    executor_refusal,
    invalid,
    service_failure,
)
from speech2image.schema import SpeechDoc, StreamEvent, StreamRequest

DIFFUSION_EXECUTOR = 'stablediffusion'
# The events a stream ends with.
FINAL_EVENTS = frozenset({'done', 'error', 'cancelled'})


def error_event(refusal: Refusal) -> StreamEvent:
    return StreamEvent(event='error', status=refusal.http_status, message=refusal.message)


def event_json(event: StreamEvent) -> str:
    """An event as the JSON that HTTP and WebSocket clients get: the set fields only."""
    return event.model_dump_json(exclude_none=True, exclude={'id'})


def server_sent_event(event: StreamEvent) -> bytes:
    """An event in the Server-Sent Events format: its kind as the SSE event name."""
    return f'event: {event.event}\ndata: {event_json(event)}\n\n'.encode()


def as_call_parameters(parameters: Dict) -> Dict:
    """``parameters`` as every other call hands them to the Executors: through a protobuf
    Struct, where every number is a float. (DocArray stores a document's integers as int32, so
    a seed of 2**31 sent as an int would fail on the way instead of being refused by name.)"""
    from google.protobuf import json_format, struct_pb2

    struct = struct_pb2.Struct()
    struct.update(parameters)
    return json_format.MessageToDict(struct)


def stream_request_from_json(request: Dict) -> StreamRequest:
    """The document and parameters of a ``/stream`` body already passed by
    ``check_json_request`` (an object with a non-empty ``data`` list): it must hold one document."""
    if len(request['data']) != 1:
        raise invalid(f'a stream takes exactly one document in "data", got {len(request["data"])}')
    return StreamRequest(**request['data'][0], parameters=request.get('parameters') or {})


class LiveStream:
    """One admitted stream: its events, and a way to cancel it.

    A task (started by ``events``) runs the two stages and puts each event in a queue; ``events``
    hands them out. Cancelling, or the reader stopping early, cancels the task."""

    def __init__(self, service: 'StreamService', request: StreamRequest, queue_position: int):
        self.service = service
        self.request = request
        self.request_id = uuid.uuid4().hex
        self.queue_position = queue_position
        self._task: Optional[asyncio.Task] = None

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Every event of this stream, the last one final (done, error or cancelled)."""
        queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._produce(queue))
        try:
            while True:
                event = await queue.get()
                yield event
                if event.event in FINAL_EVENTS:
                    return
        finally:
            self._task.cancel()
            self.service.closed(self)

    def cancel(self) -> None:
        """Stop the stream at once: the generation stops at its next step."""
        if self._task is not None:
            self._task.cancel()

    async def _produce(self, queue: asyncio.Queue) -> None:
        def put(event: StreamEvent) -> None:
            event.request_id = self.request_id
            queue.put_nowait(event)

        put(StreamEvent(event='accepted', queue_position=self.queue_position))
        try:
            await asyncio.wait_for(self._stages(put), self.service.guard.request_timeout)
        except asyncio.CancelledError:
            put(StreamEvent(event='cancelled', message='cancelled by the client'))
        except asyncio.TimeoutError:
            put(error_event(self.service.guard.timed_out()))
        except Refusal as refusal:
            put(error_event(refusal))
        except Exception as error:  # noqa: BLE001 - the client gets it as its error event
            put(StreamEvent(event='error', status=500, message=f'the stream failed: {error}'))
        finally:
            # The work is over: its slot is free, whether or not the reader has read it all
            # (the gateway bounds how long it waits for a reader that stopped reading).
            self.service.closed(self)

    async def _stages(self, put) -> None:
        """1. Whisper (the Flow's /transcribe), 2. diffusion (/generate_stream), relayed."""
        parameters = self.request.parameters
        document = self.request.document()
        # 1. The transcript, through the Flow: Whisper, then the diffusion pass-through.
        async for docs, error in self.service.streamer.stream(
            docs=DocList[SpeechDoc]([document]),
            exec_endpoint='/transcribe',
            parameters=parameters,
            return_type=DocList[SpeechDoc],
        ):
            if error is not None:
                raise executor_refusal(error.name, error.args[0] if error.args else str(error))
            [document] = docs
        put(StreamEvent(event='transcript', text=document.text, tags=document.tags))
        # 2. The images, from the diffusion Executor's stream.
        request = StreamRequest(**document.model_dump(), parameters=parameters)
        async for response in self.service.diffusion_stream(request):
            failure = executor_failure(response)
            if failure is not None:
                raise failure
            response.document_cls = StreamEvent
            put(response.data.doc)


def executor_failure(response) -> Optional[Refusal]:
    """The error jina wrote in a streamed response's header (not the Executor's own error
    events, which are documents), or None."""
    from jina.proto import jina_pb2

    status = response.header.status
    if status.code != jina_pb2.StatusProto.ERROR:
        return None
    exception = status.exception
    return executor_refusal(exception.name, exception.args[0] if exception.args else str(status))


class StreamService:
    """What the gateway's three servers share for ``/stream``: the guard that admits streams,
    the Flow's streamer (jina's ``GatewayStreamer``), and the live streams by request id (to
    cancel one)."""

    def __init__(self, guard: RequestGuard, streamer):
        self.guard = guard
        self.streamer = streamer
        self._live: Dict[str, LiveStream] = {}

    def open(self, request: StreamRequest) -> LiveStream:
        """Admit a stream (one pending slot until it ends) or raise ``Refusal``; the stream's
        place in the queue is how many calls were in flight at this gateway before it."""
        queue_position = self.guard.pending
        self.guard.admit()
        request.parameters = as_call_parameters(request.parameters)
        stream = LiveStream(self, request, queue_position)
        self._live[stream.request_id] = stream
        return stream

    def diffusion_stream(self, request: StreamRequest) -> AsyncIterator:
        """The diffusion Executor's responses to ``request`` on its generator endpoint."""
        from jina.types.request.data import SingleDocumentRequest

        single = SingleDocumentRequest()
        single.header.exec_endpoint = defaults.DIFFUSION_STREAM_ENDPOINT
        single.document_cls = StreamRequest
        single.data.doc = request
        responses = self.streamer._connection_pool.send_single_document_request(
            request=single,
            deployment=DIFFUSION_EXECUTOR,
            head=True,
            endpoint=defaults.DIFFUSION_STREAM_ENDPOINT,
        )
        if responses is None:
            raise service_failure('the diffusion Executor has no replica to serve the stream')
        return (response async for response, _ in responses)

    def closed(self, stream: LiveStream) -> None:
        if self._live.pop(stream.request_id, None) is not None:
            self.guard.release()

    def cancel(self, request_id: str) -> bool:
        """Cancel the live stream ``request_id``; False when this gateway serves no such stream."""
        stream = self._live.get(request_id)
        if stream is None:
            return False
        stream.cancel()
        return True
