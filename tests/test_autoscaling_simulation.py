"""Scale-up and scale-down as the autoscaler does them, on real processes, with nothing lost.

In the cluster, KEDA changes the diffusion Deployment's replicas; a new pod becomes ready and the
headless Service name ``stablediffusion.speech2image.svc`` resolves to one more address; a removed
pod is taken out of the name and sent SIGTERM at the same time. Here the gateway runs with the
gateway Deployment's container arguments and that same name, in a private mount namespace whose
/etc/hosts this test writes (gRPC's DNS resolver reads it; the machine's own file is untouched).
StableDiffusionExecutor replicas run with the diffusion Deployment's container arguments on
127.0.0.1 and 127.0.0.2, the same port, like two pods.

Under closed-loop HTTP load, one replica serves; a second starts and is added to the name; the
test measures how long it waits for its first call (the Executors' ``grpc.max_connection_age_ms``
decides: the gateway re-resolves the name when a connection is closed), and that both replicas
then serve. Then the second is removed from the name and sent SIGTERM: the test measures how
long it kept receiving calls, that it drained and exited, and that every request of the whole
run was answered. Throughput with one and with two replicas is printed, not asserted (timing on a
shared machine; docs/autoscaling.md gives a run's figures).
"""

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import requests

from devtools.offline_flow import ROOT, TINY_SD, free_ports
from tests.support import poll_until
from tests.test_k8s import built_manifests
from tests.test_k8s_load_sharing import (
    container_args,
    jina_process,
    local_gateway_args,
    replace_flag,
    successes,
    wait_serving,
)

SERVICE = (
    'stablediffusion.speech2image.svc'  # the gateway Deployment's address of the diffusion Pods
)
REPLICA_HOSTS = ('127.0.0.1', '127.0.0.2')
CLIENTS = 4
PHASE_SECONDS = 8
POLL_SECONDS = 0.2
# What "seconds, not a minute" means here: the max connection age (5 s), jitter, a slow machine.
DISCOVERY_LIMIT_S = 15
REMOVAL_LIMIT_S = 15
DRAIN_LIMIT_S = 60
# Runs jina with /etc/hosts replaced by the file given as its first argument, in its own mount
# namespace: only that process tree sees it.
PRIVATE_HOSTS = [
    'unshare',
    '--mount',
    '--propagation',
    'private',
    'sh',
    '-c',
    'mount --bind "$1" /etc/hosts && shift && exec "$@"',
    'sh',
]


class HostsFile:
    """The gateway's /etc/hosts: the machine's own entries plus the Service name's addresses."""

    def __init__(self, path: Path):
        self.path = path
        self.base = Path('/etc/hosts').read_text()
        path.write_text(self.base)

    def resolve_to(self, *addresses: str) -> None:
        """Make SERVICE resolve to ``addresses``, in place: the bind mount keeps the inode."""
        with open(self.path, 'r+') as hosts:
            hosts.write(self.base + ''.join(f'{address} {SERVICE}\n' for address in addresses))
            hosts.truncate()


@pytest.fixture(scope='module')
def private_hosts_supported() -> None:
    if subprocess.run(['unshare', '--mount', 'true'], capture_output=True, timeout=30).returncode:
        pytest.skip(
            'needs a private mount namespace (root or CAP_SYS_ADMIN) to give the gateway its own /etc/hosts'
        )


def replica_args(manifests: List[Dict], host: str, port: int, monitoring: int) -> List[str]:
    """The diffusion Deployment's container arguments, on ``host``:``port`` with the tiny model."""
    args = container_args(manifests, 'stablediffusion')
    for flag, *values in (
        ('--host', host),
        ('--port', str(port)),
        ('--port-monitoring', str(monitoring)),
        ('--uses', str(ROOT / 'executors/stablediffusion/config.yml')),
        ('--uses-with', json.dumps({'model': str(TINY_SD), 'num_inference_steps': 2})),
    ):
        args = replace_flag(args, flag, *values)
    return args


def gateway_args(manifests: List[Dict], replica_port: int, ports: List[int]) -> List[str]:
    """The gateway's arguments with a graph of the diffusion Executor alone at SERVICE."""
    return local_gateway_args(
        manifests, 'stablediffusion', [f'grpc://{SERVICE}:{replica_port}'], ports
    )


class Load:
    """CLIENTS threads posting one-image /generate requests back to back; every answer's time."""

    def __init__(self, url: str):
        self.url = url
        self.answered: List[float] = []
        self.failures: List[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(index,), daemon=True)
            for index in range(CLIENTS)
        ]

    def client(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                response = requests.post(
                    f'{self.url}/generate',
                    timeout=120,
                    json={
                        'data': [{'text': f'a lighthouse {index}'}],
                        'parameters': {'num_images': 1},
                    },
                )
                if response.status_code == 200 and len(response.json()['data'][0]['matches']) == 1:
                    self.answered.append(time.monotonic())
                else:
                    self.failures.append(f'{response.status_code}: {response.text[:300]}')
            except requests.RequestException as error:
                self.failures.append(repr(error))

    def rate(self, start: float, end: float) -> float:
        """Answers per second between two monotonic times."""
        return sum(start <= moment < end for moment in self.answered) / (end - start)

    @contextmanager
    def running(self) -> Iterator['Load']:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=130)


class Calls:
    """A replica's served-call count, polled every POLL_SECONDS while it runs: when it changed."""

    def __init__(self, monitoring_port: int):
        self.port = monitoring_port
        self.count = successes(monitoring_port)
        self.last_change = None
        self.first_change = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            try:
                count = successes(self.port)
            except OSError:  # the replica has exited
                return
            if count > self.count:
                self.last_change = time.monotonic()
                self.first_change = self.first_change or self.last_change
                self.count = count


def http_ready(url: str) -> bool:
    """Whether the gateway's HTTP server answers its health check (jina starts it after gRPC)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def wait_until(condition, limit_s: float, what: str) -> float:
    """Poll ``condition`` for at most ``limit_s``; the monotonic time it became true."""
    poll_until(condition, limit_s, f'{what} not yet', POLL_SECONDS)
    return time.monotonic()


def test_gateway_spreads_load_to_an_added_replica_and_drains_a_removed_one(
    private_hosts_supported, tmp_path
):
    manifests = built_manifests()
    replica_port, *monitoring_ports = free_ports(3)
    gateway_ports = free_ports(4)
    hosts = HostsFile(tmp_path / 'hosts')
    hosts.resolve_to(REPLICA_HOSTS[0])
    with ExitStack() as stack:

        def start_replica(index: int) -> subprocess.Popen:
            log = tmp_path / f'replica{index}.log'
            process = stack.enter_context(
                jina_process(
                    replica_args(
                        manifests, REPLICA_HOSTS[index], replica_port, monitoring_ports[index]
                    ),
                    tmp_path / f'home{index}',
                    log,
                )
            )
            wait_serving(replica_port, process, log, host=REPLICA_HOSTS[index])
            return process

        start_replica(0)
        gateway_log = tmp_path / 'gateway.log'
        gateway = stack.enter_context(
            jina_process(
                gateway_args(manifests, replica_port, gateway_ports),
                tmp_path / 'home-gateway',
                gateway_log,
                prefix=[*PRIVATE_HOSTS, str(hosts.path)],
            )
        )
        wait_serving(gateway_ports[0], gateway, gateway_log)
        http = f'http://127.0.0.1:{gateway_ports[1]}'
        wait_until(lambda: http_ready(http), DISCOVERY_LIMIT_S, "the gateway's HTTP server")
        first = Calls(monitoring_ports[0])

        load = stack.enter_context(Load(http).running())
        one_replica_start = time.monotonic()
        time.sleep(PHASE_SECONDS)
        one_replica_rate = load.rate(one_replica_start, time.monotonic())

        # Scale up: the new pod starts, turns ready, and its address joins the Service name.
        second_process = start_replica(1)
        second = Calls(monitoring_ports[1])
        ready = time.monotonic()
        hosts.resolve_to(*REPLICA_HOSTS)
        first_call = wait_until(
            lambda: second.first_change, DISCOVERY_LIMIT_S, 'a call to the new replica'
        )
        first_before = first.count
        two_replicas_start = time.monotonic()
        time.sleep(PHASE_SECONDS)
        two_replicas_rate = load.rate(two_replicas_start, time.monotonic())
        assert first.count > first_before and second.count > 0, (
            'both replicas serve while both are up'
        )

        # Scale down: the pod leaves the Service name and gets SIGTERM at the same moment.
        removed = time.monotonic()
        hosts.resolve_to(REPLICA_HOSTS[0])
        os.killpg(second_process.pid, signal.SIGTERM)
        second_process.wait(timeout=DRAIN_LIMIT_S)
        exited = time.monotonic()
        alone_before = first.count
        time.sleep(PHASE_SECONDS / 2)
        assert first.count > alone_before, 'the remaining replica carries on alone'
        assert load.failures == [], f'requests lost: {load.failures[:5]}'
    last_call_after_removal = (second.last_change or removed) - removed
    print(
        f'\nnew replica: first call {first_call - ready:.1f} s after it was added; '
        f'removed replica: last call {last_call_after_removal:.1f} s after SIGTERM, exited after '
        f'{exited - removed:.1f} s (exit code {second_process.returncode}); answers per second: '
        f'{one_replica_rate:.2f} with one replica, {two_replicas_rate:.2f} with two; '
        f'{len(load.answered)} requests, none lost'
    )
    assert first_call - ready < DISCOVERY_LIMIT_S
    assert last_call_after_removal < REMOVAL_LIMIT_S
    assert second_process.returncode == 0, (tmp_path / 'replica1.log').read_text()[-3000:]
