"""Nothing held, nothing left running: every way a request ends frees what it took.

One Flow with small bounds given as flags (a 2 s client idle bound, a 3 s per-Executor limit);
after each test jina's pending-requests gauge (which drives the autoscaler) is back to 0.

- Idle callers: WebSockets and gRPC calls that send nothing hold no slot and are closed.
- Stalled readers: a ``/stream`` reader that stops reading frees its slot once the work is done
  and is dropped after the idle bound, on every protocol.
- Hang-ups: a caller that goes away mid-request, on every protocol, cancels its job within a
  step or so, and the Executor is free for the next request.
- Time limits: a job longer than ``--timeout-send-ms`` is started once and answered with one
  timeout error, naming the limit and no address, on every protocol.
"""

import json
import socket
import threading
import time
from typing import Callable

import grpc
import pytest
from jina.proto import jina_pb2_grpc
from jina.types.request.data import SingleDocumentRequest
from websockets.sync.client import connect

from devtools.offline_flow import serve_flow_process
from speech2image.defaults import STREAM_ENDPOINT
from speech2image.schema import SpeechDoc, StreamRequest
from tests.protocols import (
    WS_END_OF_ITERATION,
    data_request,
    http_path,
    json_body,
    over_grpc,
    over_http,
    over_websocket,
    stream_body,
)
from tests.support import diffusion_metric, gateway_pending_requests, poll_until

IDLE_S = 2
TIMEOUT_SEND_S = 3
MAX_PENDING = 3
FLOW_FLAGS = (
    '--client-idle-timeout-s',
    str(IDLE_S),
    '--timeout-send-ms',
    str(TIMEOUT_SEND_S * 1000),
    '--max-pending-requests',
    str(MAX_PENDING),
    '--request-timeout-s',
    '60',
)
# How much later than a bound its effect may show, on a busy machine.
MARGIN_S = 8
# A job of many steps (4 images of the tiny model): far longer than TIMEOUT_SEND_S.
LONG = {'num_inference_steps': 100, 'num_images': 4}
# A stream whose events (a preview of each image at every step, then 4 PNGs of 128 px) are far
# more than a stalled reader's socket buffers take.
BIG = {'num_inference_steps': 30, 'num_images': 4, 'width': 128, 'height': 128, 'preview_every': 1}
STEPS = 'speech2image_diffusion_step_seconds_count'
PIPELINE_CALLS = 'speech2image_diffusion_batch_documents_count'
CANCELLED = 'speech2image_diffusion_cancelled_requests_total'
QUICK = {'num_inference_steps': 1}
# Steps a job may make before its caller's hang-up stops it: 2 before the hang-up, a few while
# the cancel travels (each step of LONG takes tens of ms).
HANG_UP_STEPS = 6


@pytest.fixture(scope='module')
def flow():
    # Its own process: a Flow forked from the test process after earlier tests ran models in it
    # crashed that process (docs/testing.md).
    with serve_flow_process(*FLOW_FLAGS) as running:
        yield running


@pytest.fixture(autouse=True)
def pending_gauge_returns_to_zero(flow):
    """After every test, whatever ended its requests, jina's pending gauge falls back to 0."""
    yield
    poll_until(
        lambda: gateway_pending_requests(flow.port_monitoring) == 0,
        MARGIN_S * 2,
        'jina_number_of_pending_requests did not return to 0',
        detail=lambda: str(gateway_pending_requests(flow.port_monitoring)),
    )


def served(flow) -> None:
    """A quick request is answered (not "server busy") over gRPC and HTTP."""
    for answer in (
        over_grpc(flow.grpc, '/generate', [SpeechDoc(text='next')], QUICK),
        over_http(flow.http, '/generate', [SpeechDoc(text='next')], QUICK),
    ):
        assert answer.status == 'ok', answer.message


def steps_started(flow, before: float, steps: int = 2) -> Callable[[], bool]:
    return lambda: diffusion_metric(flow, STEPS) >= before + steps


# --- 3. idle callers ---------------------------------------------------------------------------


def test_idle_websockets_hold_no_slot_and_are_closed(flow):
    url = flow.websocket.replace('websocket://', 'ws://')
    idle = [connect(f'{url}/', open_timeout=30) for _ in range(MAX_PENDING + 1)]
    idle_stream = connect(f'{url}{STREAM_ENDPOINT}', open_timeout=30)
    try:
        served(flow)  # more idle connections than slots: the others are served
        started = time.monotonic()
        for websocket in idle:
            with pytest.raises(Exception) as closed:  # noqa: PT011 - the close, of any kind
                websocket.recv(timeout=IDLE_S + MARGIN_S)
            assert 'no request within 2 s' in str(closed.value), closed.value
        # /stream answers the idle client with an error event before closing.
        event = json.loads(idle_stream.recv(timeout=IDLE_S + MARGIN_S))
        assert event['event'] == 'error' and event['status'] == 408, event
        assert 'no request within 2 s' in event['message']
        assert time.monotonic() - started < IDLE_S + MARGIN_S
    finally:
        for websocket in (*idle, idle_stream):
            websocket.close()


def test_grpc_calls_that_send_nothing_hold_no_slot_and_end(flow):
    channel = grpc.insecure_channel(flow.grpc.removeprefix('grpc://'))
    silent = threading.Event()

    def nothing():
        silent.wait(60)
        return
        yield

    try:
        calls = [
            jina_pb2_grpc.JinaRPCStub(channel).Call(nothing(), timeout=60)
            for _ in range(MAX_PENDING + 1)
        ]
        time.sleep(0.5)  # the calls are open at the gateway
        served(flow)
        for call in calls:
            with pytest.raises(grpc.RpcError) as ended:
                list(call)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 'no request within 2 s' in ended.value.details()
    finally:
        silent.set()
        channel.close()


def test_a_grpc_call_of_many_answered_requests_counts_each_out_once(flow):
    """Every request of one gRPC call answered: the gauge is back to 0, not below (each
    response was counted out again when the call ended, leaving it at 1 - MAX_PENDING)."""
    requests = [
        data_request('/generate', [SpeechDoc(text=f'p{i}')], QUICK) for i in range(MAX_PENDING)
    ]
    with grpc.insecure_channel(flow.grpc.removeprefix('grpc://')) as channel:
        call = jina_pb2_grpc.JinaRPCStub(channel).Call(iter(requests), timeout=60)
        assert len(list(call)) == len(requests)


# --- 5. stalled /stream readers ----------------------------------------------------------------


def stall_over_http(flow) -> Callable[[], None]:
    """POST /stream on a socket with a tiny receive buffer, never read; returns its closer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(('127.0.0.1', flow.port_http))
    body = stream_body(SpeechDoc(text='stalled'), BIG)
    sock.sendall(
        f'POST {STREAM_ENDPOINT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
        f'Content-Length: {len(body)}\r\n\r\n'.encode()
        + body
    )
    return sock.close


def stall_over_grpc(flow) -> Callable[[], None]:
    """The stream_doc call, never read."""
    channel = grpc.insecure_channel(flow.grpc.removeprefix('grpc://'))
    request = SingleDocumentRequest()
    request.header.exec_endpoint = STREAM_ENDPOINT
    request.document_cls = StreamRequest
    request.data.doc = StreamRequest(text='stalled', parameters=BIG)
    call = jina_pb2_grpc.JinaSingleDocumentRequestRPCStub(channel).stream_doc(request, timeout=120)
    return lambda: (call.cancel(), channel.close())


def stall_over_websocket(flow) -> Callable[[], None]:
    """The /stream WebSocket on a socket with a tiny receive buffer, never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(('127.0.0.1', flow.port_websocket))
    url = flow.websocket.replace('websocket://', 'ws://') + STREAM_ENDPOINT
    websocket = connect(url, sock=sock, max_size=None, max_queue=1)
    websocket.send(stream_body(SpeechDoc(text='stalled'), BIG).decode())
    return websocket.close


STALLERS = {'HTTP': stall_over_http, 'gRPC': stall_over_grpc, 'WebSocket': stall_over_websocket}


def queue_position_of_a_new_stream(flow) -> int:
    """Open a /stream (WebSocket) and read its accepted event's queue position: how many calls
    hold a slot at the gateway; then cancel it."""
    url = flow.websocket.replace('websocket://', 'ws://') + STREAM_ENDPOINT
    with connect(url, open_timeout=30) as websocket:
        websocket.send(stream_body(SpeechDoc(text='probe'), QUICK).decode())
        accepted = json.loads(websocket.recv(timeout=30))
        websocket.send(json.dumps({'cancel': True}))
    return accepted['queue_position']


@pytest.mark.parametrize('protocol', sorted(STALLERS))
def test_a_stalled_stream_reader_frees_its_slot_and_is_dropped(flow, protocol):
    calls_before = diffusion_metric(flow, PIPELINE_CALLS)
    close = STALLERS[protocol](flow)
    try:
        poll_until(
            lambda: diffusion_metric(flow, PIPELINE_CALLS) > calls_before,
            60,
            'the stalled stream never reached the diffusion Executor',
        )
        # Its images are made; the reader reads none of them: the slot is free all the same.
        poll_until(
            lambda: queue_position_of_a_new_stream(flow) == 0,
            IDLE_S + MARGIN_S,
            'the stalled reader still holds its slot',
        )
    finally:
        close()


# --- 6. hang-ups -------------------------------------------------------------------------------


def hang_up_grpc(flow, endpoint: str, wait: Callable[[], None]) -> None:
    with grpc.insecure_channel(flow.grpc.removeprefix('grpc://')) as channel:
        request = data_request(endpoint, [SpeechDoc(text='gone')], LONG)
        call = jina_pb2_grpc.JinaRPCStub(channel).Call(iter([request]), timeout=120)
        wait()
        call.cancel()


def hang_up_http(flow, endpoint: str, wait: Callable[[], None]) -> None:
    body = json_body([SpeechDoc(text='gone')], LONG)
    with socket.create_connection(('127.0.0.1', flow.port_http)) as sock:
        sock.sendall(
            f'POST {http_path(endpoint)} HTTP/1.1\r\nHost: x\r\n'
            f'Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n'.encode()
            + body
        )
        wait()


def hang_up_websocket(flow, endpoint: str, wait: Callable[[], None]) -> None:
    url = flow.websocket.replace('websocket://', 'ws://')
    with connect(f'{url}/', subprotocols=['bytes'], open_timeout=30) as websocket:
        request = data_request(endpoint, [SpeechDoc(text='gone')], LONG)
        websocket.send(request.SerializeToString())
        websocket.send(WS_END_OF_ITERATION)
        wait()


HANG_UPS = {'gRPC': hang_up_grpc, 'HTTP': hang_up_http, 'WebSocket': hang_up_websocket}


@pytest.mark.parametrize('endpoint', ['/generate', '/'])
@pytest.mark.parametrize('protocol', sorted(HANG_UPS))
def test_a_caller_who_hangs_up_cancels_the_job(flow, protocol, endpoint):
    cancelled_before = diffusion_metric(flow, CANCELLED)
    steps_before = diffusion_metric(flow, STEPS)
    HANG_UPS[protocol](
        flow,
        endpoint,
        lambda: poll_until(steps_started(flow, steps_before), 60, 'the job never started'),
    )
    poll_until(
        lambda: diffusion_metric(flow, CANCELLED) == cancelled_before + 1,
        MARGIN_S,
        'the job of the caller who hung up was not cancelled',
    )
    steps_at_cancel = diffusion_metric(flow, STEPS)
    served(flow)
    # The quick requests made 2 steps; the cancelled job at most one more after its cancel.
    assert diffusion_metric(flow, STEPS) - steps_at_cancel <= 2 + 1
    # Hung up after its first 2 steps; the cancel reaches the Executor within a few more. When
    # the Executor heard of it only as grpc collected the call, 8-95 of the 100 steps ran.
    assert steps_at_cancel - steps_before <= HANG_UP_STEPS


def test_a_stream_hung_up_while_whisper_runs_ends(flow):
    """Hanging up /stream right after "accepted" (the Whisper stage) ends its request there."""
    url = flow.websocket.replace('websocket://', 'ws://') + STREAM_ENDPOINT
    for _ in range(5):
        with connect(url, open_timeout=30) as websocket:
            websocket.send(stream_body(SpeechDoc(text='gone'), LONG).decode())
            assert json.loads(websocket.recv(timeout=30))['event'] == 'accepted'


# --- 8. time limits ----------------------------------------------------------------------------


TIMEOUT_SENDERS = {
    'gRPC': lambda flow: over_grpc(flow.grpc, '/generate', [SpeechDoc(text='long')], LONG),
    'HTTP': lambda flow: over_http(flow.http, '/generate', [SpeechDoc(text='long')], LONG),
    'WebSocket': lambda flow: over_websocket(
        flow.websocket, '/generate', [SpeechDoc(text='long')], LONG
    ),
}
TIMEOUT_STATUSES = {'gRPC': 'DEADLINE_EXCEEDED', 'HTTP': '504', 'WebSocket': 'ExecutorTimeout'}


@pytest.mark.parametrize('protocol', sorted(TIMEOUT_SENDERS))
def test_a_job_longer_than_the_executor_limit_runs_once_and_gets_one_timeout_error(flow, protocol):
    calls_before = diffusion_metric(flow, PIPELINE_CALLS)
    started = time.monotonic()
    answer = TIMEOUT_SENDERS[protocol](flow)
    took = time.monotonic() - started
    assert answer.status == TIMEOUT_STATUSES[protocol], answer
    assert f'within {TIMEOUT_SEND_S} s (--timeout-send-ms)' in answer.message, answer.message
    assert '127.0.0.1' not in answer.message and 'address' not in answer.message
    assert TIMEOUT_SEND_S <= took < TIMEOUT_SEND_S + MARGIN_S, 'answered at the limit, once'
    # Started once, not again by jina's retry: one pipeline call (the next request's is later).
    served(flow)
    assert diffusion_metric(flow, PIPELINE_CALLS) - calls_before == 1 + 2


def test_grpc_timeout_error_is_deadline_exceeded_on_the_wire(flow):
    """The status class above reads the gRPC code; check the code itself too."""
    with grpc.insecure_channel(flow.grpc.removeprefix('grpc://')) as channel:
        request = data_request('/generate', [SpeechDoc(text='long')], LONG)
        with pytest.raises(grpc.RpcError) as error:
            list(jina_pb2_grpc.JinaRPCStub(channel).Call(iter([request]), timeout=60))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
