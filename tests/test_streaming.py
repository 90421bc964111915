"""The streaming call /stream over gRPC, HTTP (Server-Sent Events) and WebSocket: its events in
order, the transcript before the first preview, the same images as '/', each request of a batch
with its own progress, and cancel, which stops the generation and frees the Executor.

Bad input on /stream is in tests/test_protocol_contract.py, with the same cases as '/'."""

import base64
import io
import json
import statistics
import threading
import time

import grpc
import pytest
import requests
from jina.proto import jina_pb2_grpc
from jina.types.request.data import SingleDocumentRequest
from PIL import Image
from websockets.sync.client import connect

from devtools.offline_flow import ASSETS
from speech2image.defaults import (
    STREAM_CANCEL_PATH,
    STREAM_ENDPOINT,
)
from speech2image.schema import SpeechDoc, StreamEvent, StreamRequest
from speech2image.streaming import event_json
from tests.protocols import (
    ANSWER_TIMEOUT_S,
    OK,
    STREAM_SENDERS,
    over_grpc,
    post_stream,
    sse_events,
    stream_body,
    stream_over_http,
)
from tests.support import diffusion_metric, poll_until

APPLE = (ASSETS / 'apple.wav').read_bytes()
STEPS = 10
PARAMETERS = {'num_inference_steps': STEPS, 'num_images': 2, 'seed': 7}
# A long request: the most steps the Executor allows.
LONG = {'num_inference_steps': 100, 'seed': 1}
CANCEL_AT_STEP = 3
CANCELLED = 'speech2image_diffusion_cancelled_requests_total'
UNET_CALLS = 'speech2image_diffusion_step_seconds_count'


def image_bytes(image: dict) -> bytes:
    return base64.b64decode(image['bytes_'])


@pytest.mark.parametrize('protocol', sorted(STREAM_SENDERS))
def test_events_arrive_in_order_and_end_with_the_images_of_slash(running_flow, protocol):
    answer = STREAM_SENDERS[protocol](running_flow, SpeechDoc(bytes_=APPLE), PARAMETERS)
    assert answer.status == OK, answer.message
    kinds = answer.kinds
    assert kinds[:2] == ['accepted', 'transcript'] and kinds[-1] == 'done', kinds
    assert len({event['request_id'] for event in answer.events}) == 1
    assert 'apple' in answer.events[1]['text'].lower()
    assert [e['step'] for e in answer.events if e['event'] == 'progress'] == list(
        range(1, STEPS + 1)
    )
    previews = [event for event in answer.events if event['event'] == 'preview']
    assert [preview['step'] for preview in previews] == [2, 4, 6, 8]
    assert kinds.index('transcript') < kinds.index('preview') < kinds.index('done')
    for preview in previews:
        assert [image['tags']['image'] for image in preview['images']] == [0, 1]
        for image in preview['images']:
            assert Image.open(io.BytesIO(image_bytes(image))).format == 'JPEG'
    # The final images: the same bytes as '/' makes with the same seed, previews or not.
    slash = over_grpc(running_flow.grpc, '/', [SpeechDoc(bytes_=APPLE)], PARAMETERS)
    assert slash.status == OK
    assert [image_bytes(image) for image in answer.events[-1]['images']] == [
        bytes(match['bytes_']) for match in slash.docs[0]['matches']
    ]


def test_no_previews_when_asked_for_none(running_flow):
    answer = stream_over_http(
        running_flow.http, SpeechDoc(text='a red apple'), {**PARAMETERS, 'preview_every': 0}
    )
    assert answer.status == OK and 'preview' not in answer.kinds
    assert answer.kinds.count('progress') == STEPS


def test_each_request_of_a_batch_gets_its_own_progress(running_flow):
    """Three streams queued behind a long request share the next pipeline call; each still
    sees every step and ends with its own images."""
    batches_before = diffusion_metric(running_flow, 'speech2image_diffusion_batch_documents_sum')
    calls_before = diffusion_metric(running_flow, 'speech2image_diffusion_batch_documents_count')
    blocker = threading.Thread(
        target=over_grpc,
        args=(running_flow.grpc, '/generate', [SpeechDoc(text='busy')], LONG),
    )
    blocker.start()
    answers = {}

    def stream(number: int) -> None:
        answers[number] = stream_over_http(
            running_flow.http, SpeechDoc(text=f'apple {number}'), PARAMETERS
        )

    time.sleep(0.5)  # the long request is on the model thread: these three queue behind it
    streams = [threading.Thread(target=stream, args=(number,)) for number in range(3)]
    for thread in streams:
        thread.start()
    for thread in (blocker, *streams):
        thread.join(timeout=ANSWER_TIMEOUT_S)
    for number, answer in answers.items():
        assert answer.status == OK, answer.message
        assert [e['step'] for e in answer.events if e['event'] == 'progress'] == list(
            range(1, STEPS + 1)
        )
        assert answer.events[-1]['images'][0]['tags']['prompt'] == f'apple {number}'
    documents = diffusion_metric(running_flow, 'speech2image_diffusion_batch_documents_sum')
    calls = diffusion_metric(running_flow, 'speech2image_diffusion_batch_documents_count')
    # 4 documents (the blocker and the three) in fewer than 4 calls: some shared a call.
    assert documents - batches_before == 4 and calls - calls_before < 4


# --- cancel -----------------------------------------------------------------------------------


def stop_at_step(events, step: int, stop) -> list:
    """Read events until progress reaches ``step``, call ``stop(accepted_event)``; returns the
    arrival times of the progress events read."""
    times, accepted = [], None
    for event in events:
        accepted = accepted or event
        if event['event'] == 'progress':
            times.append(time.monotonic())
            if event['step'] == step:
                stop(accepted)
                return times
    raise AssertionError(f'the stream ended before step {step}')


def cancel_over_grpc(flow) -> list:
    request = SingleDocumentRequest()
    request.header.exec_endpoint = STREAM_ENDPOINT
    request.document_cls = StreamRequest
    request.data.doc = StreamRequest(text='a long one', parameters=LONG)
    with grpc.insecure_channel(flow.grpc.removeprefix('grpc://')) as channel:
        call = jina_pb2_grpc.JinaSingleDocumentRequestRPCStub(channel).stream_doc(
            request, timeout=ANSWER_TIMEOUT_S
        )

        def events():
            for response in call:
                response.document_cls = StreamEvent
                yield json.loads(event_json(response.data.doc))

        return stop_at_step(events(), CANCEL_AT_STEP, lambda accepted: call.cancel())


def cancel_over_http(flow, by_id: bool) -> list:
    with post_stream(flow.http, SpeechDoc(text='a long one'), LONG) as response:
        events = sse_events(response)
        if not by_id:  # hang up
            return stop_at_step(events, CANCEL_AT_STEP, lambda accepted: response.close())

        def cancel(accepted):
            answer = requests.post(
                f'{flow.http}{STREAM_CANCEL_PATH}',
                json={'request_id': accepted['request_id']},
                timeout=10,
            )
            assert answer.json() == {'request_id': accepted['request_id'], 'cancelled': True}

        times = stop_at_step(events, CANCEL_AT_STEP, cancel)
        assert [event['event'] for event in events][-1] == 'cancelled'
        return times


def cancel_over_websocket(flow, by_message: bool) -> list:
    url = flow.websocket.replace('websocket://', 'ws://') + STREAM_ENDPOINT
    with connect(url, open_timeout=ANSWER_TIMEOUT_S, max_size=None) as websocket:
        websocket.send(stream_body(SpeechDoc(text='a long one'), LONG).decode())
        events = (json.loads(message) for message in websocket)
        if not by_message:
            return stop_at_step(events, CANCEL_AT_STEP, lambda accepted: websocket.close())
        times = stop_at_step(
            events, CANCEL_AT_STEP, lambda accepted: websocket.send(json.dumps({'cancel': True}))
        )
        assert [event['event'] for event in events][-1] == 'cancelled'
        return times


CANCELLERS = {
    'gRPC call cancelled': cancel_over_grpc,
    'HTTP client hangs up': lambda flow: cancel_over_http(flow, by_id=False),
    'HTTP cancel by request id': lambda flow: cancel_over_http(flow, by_id=True),
    'WebSocket cancel message': lambda flow: cancel_over_websocket(flow, by_message=True),
    'WebSocket closed': lambda flow: cancel_over_websocket(flow, by_message=False),
}


@pytest.mark.parametrize('how', sorted(CANCELLERS))
def test_cancel_stops_the_generation_and_frees_the_executor(running_flow, how):
    cancelled_before = diffusion_metric(running_flow, CANCELLED)
    unet_calls_before = diffusion_metric(running_flow, UNET_CALLS)
    progress_times = CANCELLERS[how](running_flow)
    step_seconds = statistics.median(b - a for a, b in zip(progress_times, progress_times[1:]))
    started = time.monotonic()
    answer = over_grpc(
        running_flow.grpc, '/generate', [SpeechDoc(text='next')], {'num_inference_steps': 1}
    )
    next_seconds = time.monotonic() - started
    assert answer.status == OK, answer.message
    # Served at once, not after the cancelled request's remaining steps.
    remaining_seconds = (LONG['num_inference_steps'] - CANCEL_AT_STEP) * step_seconds
    assert next_seconds < remaining_seconds / 4, (next_seconds, step_seconds)
    poll_until(
        lambda: diffusion_metric(running_flow, CANCELLED) == cancelled_before + 1,
        10,
        'the cancel to be counted',
    )
    # The cancelled request's remaining steps were not computed: its UNet calls (one per
    # step) stop within a few steps of the cancel; the next request made one.
    computed = diffusion_metric(running_flow, UNET_CALLS) - unet_calls_before - 1
    assert CANCEL_AT_STEP <= computed <= CANCEL_AT_STEP + 5, computed


def test_a_cancelled_request_in_a_batch_does_not_fail_the_others(running_flow):
    """Two streams queued behind a long request share the next call; one is cancelled at its
    first step: the other still gets every step and its images."""
    blocker = threading.Thread(
        target=over_grpc,
        args=(running_flow.grpc, '/generate', [SpeechDoc(text='busy')], LONG),
    )
    blocker.start()
    time.sleep(0.5)  # the long request is on the model thread: the two streams queue behind it
    kept = {}
    keeper = threading.Thread(
        target=lambda: kept.update(
            answer=stream_over_http(running_flow.http, SpeechDoc(text='kept'), LONG)
        )
    )
    keeper.start()
    with post_stream(running_flow.http, SpeechDoc(text='cancelled'), LONG) as response:
        stop_at_step(sse_events(response), 1, lambda accepted: response.close())
    for thread in (blocker, keeper):
        thread.join(timeout=ANSWER_TIMEOUT_S)
    answer = kept['answer']
    assert answer.status == OK, answer.message
    assert [e['step'] for e in answer.events if e['event'] == 'progress'] == list(
        range(1, LONG['num_inference_steps'] + 1)
    )
    assert answer.events[-1]['images'][0]['tags']['prompt'] == 'kept'
