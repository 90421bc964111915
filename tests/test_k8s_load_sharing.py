"""Replicas share load with no service mesh, as the manifests deploy them.

In the cluster, an Executor's headless Service name resolves to one address per ready pod, and
the gateway's ``round_robin`` gRPC channel spreads calls over them. Here two WhisperExecutor
replicas run on two 127.0.0.1 ports with the manifest's container arguments, and one gateway
address lists both (gRPC's ``ipv4:`` resolver stands in for cluster DNS: one name, several
addresses). With the manifest's gateway arguments, both replicas serve calls; with gRPC's default
policy (what jina's export gives), one replica serves them all, which is the failure this fixes.
"""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import grpc
import pytest
from docarray import DocList
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jina import Client

from devtools.offline_flow import ROOT, WHISPER_TINY_EN, free_ports, logged_process_group
from speech2image.schema import SpeechDoc
from tests.support import poll_until
from tests.test_k8s import built_manifests, flag_values, of_kind

JINA = str(Path(sys.executable).parent / 'jina')
REQUESTS = 12
START_TIMEOUT_S = 90
# After SIGTERM, how long a jina process group may take to stop before it is killed.
JINA_STOP_TIMEOUT_S = 15
SUCCESSES = re.compile(r'^jina_successful_requests_total\{[^}]*\} (\S+)$', re.M)


def container_args(docs: List[Dict], deployment: str) -> List[str]:
    [container] = of_kind(docs, 'Deployment')[deployment]['spec']['template']['spec']['containers']
    return list(container['args'])


def replace_flag(args: List[str], flag: str, *values: str) -> List[str]:
    """``args`` with the values of ``flag`` replaced (the flag appended when absent)."""
    if flag not in args:
        return [*args, flag, *values]
    start = args.index(flag)
    end = start + 1 + len(flag_values(args, flag))
    return [*args[:start], flag, *values, *args[end:]]


@contextmanager
def jina_process(
    args: List[str], home: Path, log: Path, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen]:
    """``jina ARGS`` in its own process group, stopped (group and all) on exit. Its own HOME:
    jina serialises Executor start-up through a lock file under ~/.cache. ``prefix``: a command
    that runs jina (``exec``), such as one that gives it its own view of the files."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        'HOME': str(home),
        'PYTHONPATH': str(ROOT),
        'JINA_OPTOUT_TELEMETRY': '1',
        'HF_HUB_OFFLINE': '1',
    }
    with logged_process_group(
        [*prefix, JINA, *args], env, log, signal.SIGTERM, JINA_STOP_TIMEOUT_S
    ) as process:
        yield process


def wait_serving(port: int, process: subprocess.Popen, log: Path, host: str = '127.0.0.1') -> None:
    """Until the gRPC health service on ``host``:``port`` answers SERVING (what the manifests'
    probes ask)."""

    def serving() -> bool:
        assert process.poll() is None, f'exited {process.returncode}:\n{log.read_text()[-3000:]}'
        with grpc.insecure_channel(f'{host}:{port}') as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    poll_until(
        serving,
        START_TIMEOUT_S,
        f'{host}:{port} not serving',
        interval=0.5,
        ignore=(grpc.RpcError,),
        detail=lambda: log.read_text()[-3000:],
    )


def successes(monitoring_port: int) -> float:
    body = (
        urllib.request.urlopen(f'http://127.0.0.1:{monitoring_port}/metrics', timeout=10)
        .read()
        .decode()
    )
    return sum(float(value) for value in SUCCESSES.findall(body))


@pytest.fixture(scope='module')
def manifests() -> List[Dict]:
    return built_manifests()


@pytest.fixture(scope='module')
def replicas(manifests, tmp_path_factory) -> Iterator[List[Dict[str, int]]]:
    """Two WhisperExecutor replicas started with the whisper Deployment's container arguments;
    only the ports, bind address, config path and model differ."""
    tmp = tmp_path_factory.mktemp('replicas')
    args = container_args(manifests, 'whisper')
    ports = free_ports(4)
    started = []
    with ExitStack() as stack:
        for index in range(2):
            port, monitoring = ports[2 * index], ports[2 * index + 1]
            replica_args = args
            for flag, *values in (
                ('--port', str(port)),
                ('--port-monitoring', str(monitoring)),
                ('--host', '127.0.0.1'),
                ('--uses', str(ROOT / 'executors/whisper/config.yml')),
                ('--uses-with', json.dumps({'model': str(WHISPER_TINY_EN)})),
            ):
                replica_args = replace_flag(replica_args, flag, *values)
            log = tmp / f'replica{index}.log'
            process = stack.enter_context(jina_process(replica_args, tmp / f'home{index}', log))
            started.append({'port': port, 'monitoring': monitoring, 'process': process, 'log': log})
        for replica in started:
            wait_serving(replica['port'], replica['process'], replica['log'])
        yield started


def local_gateway_args(
    manifests: List[Dict], executor: str, addresses: List[str], ports: List[int]
) -> List[str]:
    """The gateway Deployment's container arguments, with a graph of ``executor`` alone at
    ``addresses`` and free ``ports`` (gRPC, HTTP, WebSocket, monitoring) on 127.0.0.1. All three
    protocols stay: jina's composite gateway with gRPC alone exits as soon as it starts."""
    args = container_args(manifests, 'gateway')
    for flag, *values in (
        ('--deployments-addresses', json.dumps({executor: addresses})),
        (
            '--graph-description',
            json.dumps({'start-gateway': [executor], executor: ['end-gateway']}),
        ),
        ('--port', *map(str, ports[:3])),
        ('--port-monitoring', str(ports[3])),
        ('--host', '127.0.0.1'),
        # The image holds speech2image/gateway.yml as its config.yml (Dockerfile.gateway).
        ('--uses', str(ROOT / 'speech2image' / 'gateway.yml')),
    ):
        args = replace_flag(args, flag, *values)
    return args


def gateway_args(manifests: List[Dict], replicas: List[Dict], ports: List[int]) -> List[str]:
    """The gateway's arguments with whisper's one address resolving to both ``replicas``."""
    addresses = ','.join(f'127.0.0.1:{replica["port"]}' for replica in replicas)
    return local_gateway_args(manifests, 'whisper', [f'ipv4:{addresses}'], ports)


def served_per_replica(args: List[str], port: int, replicas: List[Dict], tmp: Path) -> List[float]:
    """Send REQUESTS calls through a gateway started with ``args`` (gRPC on ``port``); the calls
    each replica served."""
    before = [successes(replica['monitoring']) for replica in replicas]
    log = tmp / 'gateway.log'
    with jina_process(args, tmp / 'home', log) as process:
        wait_serving(port, process, log)
        client = Client(host=f'grpc://127.0.0.1:{port}')
        for index in range(REQUESTS):
            [doc] = client.post(
                '/generate',
                inputs=DocList[SpeechDoc]([SpeechDoc(text=f'a red apple {index}')]),
                return_type=DocList[SpeechDoc],
            )
            assert doc.text == f'a red apple {index}'
    return [
        successes(replica['monitoring']) - earlier for replica, earlier in zip(replicas, before)
    ]


def test_gateway_arguments_spread_calls_over_all_replicas(manifests, replicas, tmp_path):
    ports = free_ports(4)
    served = served_per_replica(
        gateway_args(manifests, replicas, ports), ports[0], replicas, tmp_path
    )
    assert sum(served) == REQUESTS
    assert min(served) >= REQUESTS // 3, f'calls per replica: {served}'


def test_without_round_robin_one_replica_serves_everything(manifests, replicas, tmp_path):
    """The control: jina's export alone (no channel option) pins every call to one replica."""
    ports = free_ports(4)
    args = gateway_args(manifests, replicas, ports)
    start = args.index('--grpc-channel-options')
    args = args[:start] + args[start + 2 :]
    served = served_per_replica(args, ports[0], replicas, tmp_path)
    assert sorted(served) == [0, REQUESTS], f'calls per replica: {served}'
