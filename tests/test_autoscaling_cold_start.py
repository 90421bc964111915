"""Scale to zero's first request, on real processes: the gateway holds it until a replica is ready.

As in test_autoscaling_simulation, the gateway runs with the gateway Deployment's arguments and
resolves the diffusion Service name from a private /etc/hosts. It starts beside one replica (jina's
gateway learns the Executors' endpoints before it serves), which then goes away as KEDA takes the
Deployment to zero: the name resolves to nothing (a headless Service with no endpoints) and the
replica is sent SIGTERM. A new replica comes up at another address, as a new pod would.

- With ``S2I_COLD_START_SECONDS`` (what k8s/autoscaling/scale-to-zero sets), a request sent
  while the name resolves to nothing is answered once a replica joins it; with none joining, it
  ends after that bound with a message saying what it waited for.
- Without it (jina's own retries and timeouts alone), the same request fails at once: the control.
"""

import signal
import threading
import time
from contextlib import ExitStack
from typing import Dict, List, Tuple, Union

import pytest

from devtools.offline_flow import free_ports
from speech2image.client import ServiceError, send
from speech2image.cold_start import COLD_START_ENV, cold_start_seconds_from_environment
from speech2image.schema import SpeechDoc
from tests.test_autoscaling_simulation import (
    PRIVATE_HOSTS,
    REPLICA_HOSTS,
    HostsFile,
    gateway_args,
    http_ready,
    private_hosts_supported,  # noqa: F401
    replica_args,
    wait_until,
)
from tests.test_k8s import built_manifests
from tests.test_k8s_load_sharing import jina_process, wait_serving

HOLD_SECONDS = 8
HELD_BEFORE_READY_S = 3  # how long the request waits before the new replica joins the name
START_LIMIT_S = 30


def timed_generate(grpc_url: str) -> Tuple[Union[List[SpeechDoc], str], float]:
    """A one-image /generate request over gRPC; the answered documents (or the error message)
    and how long it took. (Over HTTP, jina 3.34 answers any Executor connection error with a
    bare 500: http_fastapi_app_docarrayv2.py reads an unbound ``status``.)"""
    started = time.monotonic()
    try:
        outcome = send(grpc_url, '/generate', [SpeechDoc(text='a lighthouse')], {'num_images': 1})
    except ServiceError as error:
        outcome = str(error)
    return outcome, time.monotonic() - started


@pytest.fixture(scope='module')
def manifests() -> List[Dict]:
    return built_manifests()


@pytest.fixture
def scaled_to_zero(manifests, tmp_path, private_hosts_supported):
    """A function that starts a gateway (``environment`` added to its process) beside one replica,
    checks it serves, then scales the replica to zero; it returns (gateway gRPC URL, HostsFile,
    replica port). Everything stops at the end of the test."""
    stack = ExitStack()

    def start(environment: Dict[str, str]) -> Tuple[str, HostsFile, int]:
        replica_port, monitoring_port = free_ports(2)
        log = tmp_path / 'replica0.log'
        replica = stack.enter_context(
            jina_process(
                replica_args(manifests, REPLICA_HOSTS[0], replica_port, monitoring_port),
                tmp_path / 'home-replica0',
                log,
            )
        )
        wait_serving(replica_port, replica, log, host=REPLICA_HOSTS[0])
        hosts = HostsFile(tmp_path / 'hosts')
        hosts.resolve_to(REPLICA_HOSTS[0])
        ports = free_ports(4)
        gateway_log = tmp_path / 'gateway.log'
        gateway = stack.enter_context(
            jina_process(
                gateway_args(manifests, replica_port, ports),
                tmp_path / 'home-gateway',
                gateway_log,
                prefix=[
                    'env',
                    *(f'{name}={value}' for name, value in environment.items()),
                    *PRIVATE_HOSTS,
                    str(hosts.path),
                ],
            )
        )
        wait_serving(ports[0], gateway, gateway_log)
        url = f'http://127.0.0.1:{ports[1]}'
        wait_until(lambda: http_ready(url), START_LIMIT_S, "the gateway's HTTP server")
        grpc_url = f'grpc://127.0.0.1:{ports[0]}'
        answer, _ = timed_generate(grpc_url)
        assert isinstance(answer, list), answer
        hosts.resolve_to()
        replica.send_signal(signal.SIGTERM)
        replica.wait(timeout=60)
        return grpc_url, hosts, replica_port

    with stack:
        yield start


def test_first_request_at_zero_replicas_is_held_until_a_replica_is_ready(
    manifests, scaled_to_zero, tmp_path
):
    url, hosts, replica_port = scaled_to_zero({COLD_START_ENV: str(HOLD_SECONDS)})

    # No replica comes: the request waits the whole bound, then says why it failed.
    answer, seconds = timed_generate(url)
    assert 'stablediffusion has no ready replica after waiting 8 s' in answer, answer
    assert HOLD_SECONDS <= seconds < HOLD_SECONDS + 10, seconds

    # KEDA starts a pod; it loads its model; only once ready does its address join the name.
    log = tmp_path / 'replica1.log'
    [monitoring_port] = free_ports(1)
    with jina_process(
        replica_args(manifests, REPLICA_HOSTS[1], replica_port, monitoring_port),
        tmp_path / 'home-replica1',
        log,
    ) as replica:
        wait_serving(replica_port, replica, log, host=REPLICA_HOSTS[1])
        outcome = {}
        request = threading.Thread(
            target=lambda: outcome.update(zip(('answer', 'seconds'), timed_generate(url)))
        )
        request.start()
        time.sleep(HELD_BEFORE_READY_S)
        assert request.is_alive(), f'not held: {outcome}'
        hosts.resolve_to(REPLICA_HOSTS[1])
        request.join(timeout=60)
    [doc] = outcome['answer']
    assert len(doc.matches) == 1
    assert HELD_BEFORE_READY_S <= outcome['seconds'] < HOLD_SECONDS, outcome['seconds']
    print(
        f'\nheld request answered {outcome["seconds"]:.1f} s after it was sent, '
        f'{outcome["seconds"] - HELD_BEFORE_READY_S:.1f} s after the new replica joined the name'
    )


def test_without_the_hold_a_request_at_zero_replicas_fails_at_once(scaled_to_zero):
    """The control: jina's retries (1) and timeout_send (60 s) alone give no hold."""
    url, _, _ = scaled_to_zero({})
    answer, seconds = timed_generate(url)
    assert isinstance(answer, str) and 'stablediffusion' in answer, answer
    assert seconds < 2, seconds


@pytest.mark.parametrize('value, seconds', [(None, 0.0), ('', 0.0), ('240', 240.0), (' 7.5 ', 7.5)])
def test_hold_time_comes_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(COLD_START_ENV, raising=False)
    else:
        monkeypatch.setenv(COLD_START_ENV, value)
    assert cold_start_seconds_from_environment() == seconds


@pytest.mark.parametrize('value', ['four minutes', '-1'])
def test_a_bad_hold_time_is_refused_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv(COLD_START_ENV, value)
    with pytest.raises(ValueError, match=f'{COLD_START_ENV} must be .*{value!r}'):
        cold_start_seconds_from_environment()
