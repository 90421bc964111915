"""Load, faults and backpressure against the real Flow on the offline models (127.0.0.1 only).

One Flow, two diffusion replicas, serves the whole module; the tests run in file order and the
later ones break it on purpose (a killed replica, a frozen Executor, SIGTERMs), so each states
what it leaves behind.
"""

import asyncio
import os
import signal
import sys
import time
from contextlib import ExitStack

import psutil
import pytest
import requests
from jina.enums import PodRoleType
from jina.orchestrate.deployments.config.helper import construct_runtime_container_args
from prometheus_client.parser import text_string_to_metric_families

from bench.load import one_request, run_load
from devtools import OFFLINE_ENVIRONMENT
from devtools.offline_flow import logged_process_group, serve_flow
from tests.support import gateway_pending_requests, poll_until

REQUEST_TIMEOUT_S = 12
# How much later than the request timeout its error may arrive, on a busy machine.
TIMEOUT_MARGIN_S = 5
MAX_PENDING = 12
BODY_TIMEOUT_S = 3
FLOW_FLAGS = (
    '--diffusion-replicas',
    '2',
    '--timeout-send-ms',
    '30000',
    '--retries',
    '1',
    '--request-timeout-s',
    str(REQUEST_TIMEOUT_S),
    '--max-pending-requests',
    str(MAX_PENDING),
    '--drain-seconds',
    '30',
    '--body-timeout-s',
    str(BODY_TIMEOUT_S),
)
# The gateway's own refusals, and jina's words for an Executor it could not reach or that timed out.
CLEAR_ERRORS = ('server busy', 'no answer within', 'shutting down', 'may be down', 'timed out')
MEMORY_REQUESTS = 1000
MEMORY_GROWTH_LIMIT_MB = 25
REVIVAL_SECONDS = 60
SLOW = {'num_inference_steps': 40}
# After a SIGTERM to the gateway: a request every LATE_INTERVAL_S until one is refused.
LATE_REQUESTS, LATE_INTERVAL_S = 50, 0.1
# 4 clients: at most the requests in flight on the killed replica, and a retry's bad luck.
KILLED_REPLICA_MAX_FAILED_SHARE = (
    0.25  # seconds of work on the tiny model: still running at SIGTERM
)


@pytest.fixture(scope='module')
def flow():
    with serve_flow(*FLOW_FLAGS) as running:
        wait_until_serving(running)
        yield running


@pytest.fixture(scope='module')
def restarted_replicas():
    """Replica processes a test started in place of killed ones; stopped before the Flow."""
    with ExitStack() as processes:
        yield processes


def wait_until_serving(running, successes=4, seconds=60):
    """jina reports the Flow ready once every process is up; the gateway's connections to
    replicas that came up late may still be backing off for a few seconds."""
    poll_until(
        lambda: (
            asyncio.run(post_many(running.grpc, successes, {'num_inference_steps': 1}))
            == [None] * successes
        ),
        seconds,
        f'the Flow did not serve {successes} requests in a row',
        interval=0.5,
    )


def pods(running, name):
    """The replicas (jina Pods) of one Deployment, in replica order."""
    return [
        pod for shard in running.flow._deployment_nodes[name].shards.values() for pod in shard._pods
    ]


def all_pids(running):
    return {
        f'{name}/{index}': pod.worker.pid
        for name in running.flow._deployment_nodes
        for index, pod in enumerate(pods(running, name))
    }


def diffusion_documents(pod) -> float:
    """Documents this diffusion replica has put through its pipeline, from its own /metrics."""
    text = requests.get(f'http://127.0.0.1:{pod.args.port_monitoring}/metrics', timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == 'speech2image_diffusion_batch_documents':
            return sum(s.value for s in family.samples if s.name.endswith('_sum'))
    return 0.0


def assert_nothing_lost(report, max_failed_share: float):
    """Every request answered: with documents, or with an error that says what happened, and
    errors no more than ``max_failed_share`` of what was sent; each error printed with its count."""
    print('errors:', report.errors)
    assert report.lost == 0, report.summary()
    assert report.sent == report.answered + report.failed
    assert report.failed <= max_failed_share * report.sent, report.summary()
    for message in report.errors:
        assert any(clear in message for clear in CLEAR_ERRORS), message


def post_many(address, count, parameters, timeout=60):
    async def all_of_them():
        from jina import Client

        client = Client(host=address, asyncio=True)
        return await asyncio.gather(
            *(
                one_request(client, '/generate', f'prompt {i}', parameters, timeout, {})
                for i in range(count)
            )
        )

    return all_of_them()


def test_load_every_request_is_answered(flow):
    report = asyncio.run(run_load(flow.grpc, clients=6, seconds=8, timeout=REQUEST_TIMEOUT_S + 10))
    print('load:', report.summary())
    assert_nothing_lost(report, max_failed_share=0.0)  # within the bounds: nothing may fail
    assert report.answered > 0


def test_memory_stays_flat_over_1000_requests(flow):
    """Cheapest full path: text through /transcribe crosses the gateway and both Executors."""
    processes = {name: psutil.Process(pid) for name, pid in all_pids(flow).items()}
    warm_up = asyncio.run(run_load(flow.grpc, 8, 60, 200, '/transcribe', {}, timeout=30))
    assert_nothing_lost(warm_up, max_failed_share=0.0)
    before = {name: p.memory_info().rss for name, p in processes.items()}
    report = asyncio.run(
        run_load(flow.grpc, 8, 120, MEMORY_REQUESTS, '/transcribe', {}, timeout=30)
    )
    after = {name: p.memory_info().rss for name, p in processes.items()}
    growth_mb = {name: round((after[name] - before[name]) / 2**20, 1) for name in processes}
    print('memory:', report.summary(), 'RSS growth MiB:', growth_mb)
    assert report.sent == report.answered == MEMORY_REQUESTS
    assert all(growth < MEMORY_GROWTH_LIMIT_MB for growth in growth_mb.values()), growth_mb


def grpc_call_of_many(address: str, count: int):
    """One gRPC call (jina's ``Call``) carrying ``count`` requests: (documents answered, the
    call's final status, its details)."""
    import grpc
    from jina.proto import jina_pb2_grpc

    from speech2image.schema import SpeechDoc
    from tests.protocols import data_request

    requests_ = [data_request('/generate', [SpeechDoc(text=f'p{i}')], {}) for i in range(count)]
    with grpc.insecure_channel(address.removeprefix('grpc://')) as channel:
        call = jina_pb2_grpc.JinaRPCStub(channel).Call(iter(requests_), timeout=60)
        answered = 0
        try:
            for _ in call:
                answered += 1
        except grpc.RpcError as error:
            return answered, error.code().name, error.details()
    return answered, 'OK', ''


def websocket_of_many(address: str, count: int, first_answers: int):
    """One WebSocket carrying ``count`` requests: (the first ``first_answers`` answers' error
    messages, '' for a success; a function that reads the rest and closes)."""
    from jina.types.request.data import DataRequest
    from websockets.sync.client import connect

    from speech2image.schema import SpeechDoc
    from tests.protocols import WS_END_OF_ITERATION, data_request

    websocket = connect(address.replace('websocket://', 'ws://') + '/', subprotocols=['bytes'])
    for index in range(count):
        websocket.send(
            data_request('/generate', [SpeechDoc(text=f'p{index}')], {}).SerializeToString()
        )

    def answer() -> str:
        status = DataRequest(websocket.recv(timeout=30)).header.status
        return status.description if status.code == status.ERROR else ''

    def the_rest():
        rest = [answer() for _ in range(count - first_answers)]
        websocket.send(WS_END_OF_ITERATION)
        websocket.close()
        return rest

    return [answer() for _ in range(first_answers)], the_rest


def test_many_requests_on_one_connection_count_as_many(flow):
    """More requests than the bound on one gRPC call, then on one WebSocket, while Whisper is
    frozen: the bound's worth are admitted and the rest refused at once, and meanwhile an HTTP
    request is refused too (30 requests on one connection used to be admitted with a bound of
    8, counted as one)."""
    from concurrent.futures import ThreadPoolExecutor

    whisper = pods(flow, 'whisper')[0].worker.pid
    count = MAX_PENDING + 4

    def http_refused() -> bool:
        response = requests.post(f'{flow.http}/generate', json={'data': [{'text': 'x'}]}, timeout=5)
        return response.status_code == 503 and 'server busy' in response.json()['detail']

    with ThreadPoolExecutor(1) as pool:
        os.kill(whisper, signal.SIGSTOP)
        try:
            call = pool.submit(grpc_call_of_many, flow.grpc, count)
            poll_until(
                lambda: gateway_pending_requests(flow.port_monitoring) >= MAX_PENDING,
                30,
                'the requests of the call did not pile up',
            )
            assert http_refused()
            assert gateway_pending_requests(flow.port_monitoring) == MAX_PENDING
        finally:
            os.kill(whisper, signal.SIGCONT)
        answered, status, details = call.result(timeout=60)
    assert (answered, status) == (MAX_PENDING, 'RESOURCE_EXHAUSTED'), (answered, details)
    assert 'server busy' in details

    os.kill(whisper, signal.SIGSTOP)
    try:
        refused, the_rest = websocket_of_many(flow.websocket, count, count - MAX_PENDING)
        assert all('server busy' in message for message in refused), refused
        assert http_refused()  # (jina's own gauge counts one WebSocket connection as one)
    finally:
        os.kill(whisper, signal.SIGCONT)
    assert the_rest() == [''] * MAX_PENDING
    poll_until(lambda: gateway_pending_requests(flow.port_monitoring) == 0, 30, 'slots were kept')


def test_a_stalled_http_body_is_answered_408_after_the_body_timeout(flow):
    """Part of a declared body, then nothing: such connections used to stay open, their bytes
    held (12 of them, each 30 of a declared 32 MiB, added 352 MiB and were open after 33 s)."""
    from tests.protocols import post_head, raw_http_request, status_line

    started = time.monotonic()
    with raw_http_request(flow.port_http, post_head(1000), b'{"data": [') as connection:
        assert status_line(connection) == b'HTTP/1.1 408 Request Timeout'
    assert time.monotonic() - started < BODY_TIMEOUT_S + TIMEOUT_MARGIN_S


def restart_replica(pod, processes: ExitStack, log) -> None:
    """``pod``'s Executor started again at its addresses, as ``jina executor`` in a process of
    its own (what a Kubernetes pod runs), until ``processes`` closes; returns once it is ready.
    Not a fork of this process: that holds gRPC's threads, and a forked replica once hung in
    grpc.aio's Server.__init__."""
    from jina.serve.runtimes.servers import BaseServer

    args = construct_runtime_container_args(
        pod.args, pod.args.uses_metas, pod.args.uses_with, PodRoleType.WORKER
    )
    command = [sys.executable, '-m', 'jina', *args]
    process = processes.enter_context(
        logged_process_group(command, {**os.environ, **OFFLINE_ENVIRONMENT}, log)
    )

    def ready() -> bool:
        assert process.poll() is None, f'the restarted replica exited: {log.read_text()[-2000:]}'
        return BaseServer.is_ready(f'127.0.0.1:{pod.args.port[0]}')

    poll_until(ready, REVIVAL_SECONDS, 'the restarted replica did not start')


def test_killed_replica_under_load_loses_nothing_and_is_used_again_once_back(
    flow, restarted_replicas, tmp_path_factory
):
    """Leaves the restarted replica in the killed one's place, at its addresses."""
    [first, second] = pods(flow, 'stablediffusion')

    async def kill_during_load():
        load = asyncio.create_task(run_load(flow.grpc, 4, 6, timeout=REQUEST_TIMEOUT_S + 10))
        await asyncio.sleep(1.5)
        os.kill(first.worker.pid, signal.SIGKILL)
        # jina's event that the runtime sets on its way out, which a killed one cannot: unset,
        # the Flow's close waits 60 s for it.
        first.is_shutdown.set()
        return await load

    report = asyncio.run(kill_during_load())
    print('replica killed under load:', report.summary())
    # Only the requests on the killed replica at that moment may fail (jina retries once).
    assert_nothing_lost(report, max_failed_share=KILLED_REPLICA_MAX_FAILED_SHARE)
    assert report.answered > 0

    # The replica comes back on the same address, as a restarted pod would.
    log = tmp_path_factory.mktemp('restarted') / 'replica.log'
    restart_replica(first, restarted_replicas, log)
    started = time.monotonic()

    def revived_served() -> bool:
        """Whether the revived replica has served; if not, 4 more requests, all answered."""
        if diffusion_documents(first):  # the same monitoring port
            return True
        answers = asyncio.run(post_many(flow.grpc, 4, {'num_inference_steps': 1}))
        assert answers == [None] * 4
        return False

    poll_until(revived_served, REVIVAL_SECONDS, 'the revived replica got no requests', interval=0)
    print(f'revived replica served again after {time.monotonic() - started:.1f} s')


def test_stuck_executor_gives_a_timeout_error_and_pending_requests_are_bounded(flow):
    """Freezes Whisper (SIGSTOP) so requests pile up, then thaws it."""
    whisper = pods(flow, 'whisper')[0].worker.pid
    os.kill(whisper, signal.SIGSTOP)
    try:

        async def pile_up():
            stuck = asyncio.create_task(post_many(flow.grpc, MAX_PENDING, {}, timeout=60))
            await asyncio.to_thread(
                poll_until,
                lambda: gateway_pending_requests(flow.port_monitoring) >= MAX_PENDING,
                30,
                'the requests did not pile up',
            )
            started = time.monotonic()
            [refused] = await post_many(flow.grpc, 1, {}, timeout=10)
            refused_after = time.monotonic() - started
            http = await asyncio.to_thread(
                requests.post, f'{flow.http}/generate', json={'data': [{'text': 'x'}]}, timeout=10
            )
            started = time.monotonic()
            stuck_errors = await stuck
            return refused, refused_after, http, stuck_errors, time.monotonic() - started

        refused, refused_after, http, stuck_errors, stuck_after = asyncio.run(pile_up())
    finally:
        os.kill(whisper, signal.SIGCONT)
    assert 'server busy' in refused
    assert refused_after < REQUEST_TIMEOUT_S / 2, 'refused at once, not after waiting its turn'
    assert http.status_code == 503 and 'server busy' in http.json()['detail']
    assert all(f'no answer within {REQUEST_TIMEOUT_S} s' in error for error in stuck_errors)
    assert stuck_after < REQUEST_TIMEOUT_S + TIMEOUT_MARGIN_S

    for _ in range(20):  # thawed, it serves again
        if asyncio.run(post_many(flow.grpc, 1, {'num_inference_steps': 1}))[0] is None:
            break
        time.sleep(1)
    else:
        pytest.fail('the Flow did not serve again after Whisper was thawed')


def test_sigterm_on_an_executor_lets_its_requests_finish(flow):
    """Terminates the second diffusion replica for good. The replica is working on a batch when
    SIGTERM arrives (its own metrics say so); every request is answered; and the other replica
    did only the rest of the work, so the draining replica itself answered its batch (a retry
    onto the other one would show there as the same documents done twice)."""
    first, second = pods(flow, 'stablediffusion')
    process = psutil.Process(second.worker.pid)
    first_before, second_before = diffusion_documents(first), diffusion_documents(second)
    requests_sent = 4

    async def terminate_while_busy():
        answers = asyncio.create_task(post_many(flow.grpc, requests_sent, SLOW))
        while True:  # until the replica is working on a batch (post_many's timeout bounds it)
            await asyncio.sleep(0.05)
            working = await asyncio.to_thread(diffusion_documents, second) - second_before
            if working or answers.done():
                break
        process.send_signal(signal.SIGTERM)
        return working, await answers

    working, answers = asyncio.run(terminate_while_busy())
    assert working > 0, 'the second replica never got a batch'
    assert answers == [None] * requests_sent
    assert diffusion_documents(first) - first_before <= requests_sent - working
    process.wait(timeout=30)


def test_sigterm_on_the_gateway_drains_and_refuses_new_requests(flow):
    """Terminates the gateway: the Flow serves nothing after this test."""
    gateway = psutil.Process(pods(flow, 'gateway')[0].worker.pid)

    async def terminate_while_busy():
        answers = asyncio.create_task(post_many(flow.grpc, 2, SLOW))
        await asyncio.to_thread(
            poll_until,
            lambda: gateway_pending_requests(flow.port_monitoring) >= 2,
            30,
            'the two requests did not reach the gateway',
        )
        gateway.send_signal(signal.SIGTERM)
        # A new request every LATE_INTERVAL_S, not waiting for it: one sent before the drain
        # began queues behind the two and must not hold up the next one.
        late = []
        for _ in range(LATE_REQUESTS):
            late.append(asyncio.create_task(post_many(flow.grpc, 1, {'num_inference_steps': 1})))
            await asyncio.sleep(LATE_INTERVAL_S)
            if any(task.done() and 'shutting down' in (task.result()[0] or '') for task in late):
                break
        in_flight_at_refusal = not answers.done()
        return in_flight_at_refusal, await answers, [(await task)[0] for task in late]

    in_flight_at_refusal, answers, late = asyncio.run(terminate_while_busy())
    assert any('shutting down' in (answer or '') for answer in late), late
    assert all(answer is None or 'shutting down' in answer for answer in late), late
    assert in_flight_at_refusal, 'the two requests were done before the drain refused anything'
    assert answers == [None, None]
    gateway.wait(timeout=30)
