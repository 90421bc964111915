"""The whole Flow from its three images, as the Kubernetes manifests start them, on this machine.

    sudo PYTHONPATH=$PWD .venv/bin/python scripts/run_containers.py [--diffusion-replicas 2] \
        [--logs DIR] [--report FILE]

Each container's command, arguments, environment and security settings come from the Deployments
of ``kubectl kustomize k8s/``; only what a shared host network forces is changed: the ports
(each Service's 8080/9090 become free 127.0.0.1 ports), the bind address, and the gateway's
Executor addresses (the headless Services' DNS names become those ports). The model cache
volume (``/models``, HF_HOME in the images) is a read-only Hugging Face cache holding the
offline models under the ids the Executors load by default, with HF_HUB_OFFLINE=1 since no hub
is reachable. Secrets the manifests read from Secrets (the gateway's API key, HF_TOKEN) are
random values here, and no container log may contain them.

Then, through the gateway container: a spoken clip over gRPC and over HTTP gives its transcript
and images; a call without the key is refused; every container runs as uid 10001 and cannot
write its root filesystem; ``podman stop`` of a diffusion container under a bounded load gives
clear errors (or, with two diffusion containers, the other one answers) and the gateway serves
again once it is started again. Prints one JSON report (times, sizes, load results); exits 1 on
the first failed check. Needs the images of scripts/build_image_offline.sh and ``make models``.
Slow (minutes): not part of ``make test``.
"""

import argparse
import asyncio
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.load import run_load  # noqa: E402
from devtools.offline_flow import free_ports  # noqa: E402
from speech2image.client import ServiceError, make_docs, send  # noqa: E402
from tests.test_k8s import built_manifests, of_kind  # noqa: E402
from tests.test_k8s_load_sharing import replace_flag  # noqa: E402
from tests.test_reliability import CLEAR_ERRORS  # noqa: E402

PODMAN = str(ROOT / 'scripts/podman.sh')
# As in scripts/build_image_offline.sh: this machine's limits cap what runc may set.
LIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024']
EXECUTORS = ('whisper', 'stablediffusion')
MODEL_CACHE = 'model-cache'  # the manifests' volume name for HF_HOME
CLIP = ROOT / 'assets/apple.wav'
CLIP_WORD = 'apple'
MODELS = ROOT / 'models'
WHISPER_MODEL = MODELS / 'whisper-tiny.en-ct2'
DIFFUSION_MODEL = MODELS / 'tiny-stable-diffusion'
IMAGE_PARAMETERS = {'num_images': 1, 'num_inference_steps': 2}
LOAD_CLIENTS = 4
LOAD_REQUESTS = 120
# Longer than the Executors' drain (30 s, speech2image.draining): a stopped Executor serves
# on until it has been idle or 30 s have passed, and only then is it gone.
LOAD_SECONDS = 50
LOAD_PARAMETERS = {'num_inference_steps': 10}  # about a second a request: still running at the stop
STOP_AFTER_S = 3.0
START_TIMEOUT_S = 300
SERVE_AGAIN_TIMEOUT_S = 120
USER = '10001'
UNAVAILABLE = 'StatusCode.UNAVAILABLE'
# Added to every container: no hub is reachable here, so the Executors read the cache only.
OFFLINE = ['-e', 'HF_HUB_OFFLINE=1']


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``podman ARGS`` with this project's storage; its output as text."""
    return subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def default_models() -> Dict[str, str]:
    """The hub repository each Executor loads when the manifests give no model: their defaults."""
    import inspect

    from faster_whisper.utils import _MODELS

    from executors.stablediffusion.executor import StableDiffusionExecutor
    from executors.whisper.executor import WhisperExecutor

    def default(cls) -> str:
        return inspect.signature(cls.__init__).parameters['model'].default

    return {
        'whisper': _MODELS[default(WhisperExecutor)],
        'stablediffusion': default(StableDiffusionExecutor),
    }


def hub_cache(directory: Path) -> Path:
    """A Hugging Face cache (``HF_HOME`` layout) in ``directory`` holding the offline models
    under the default ids: tiny.en stands in for Whisper, the tiny random pipeline for Stable
    Diffusion."""
    sources = {'whisper': WHISPER_MODEL, 'stablediffusion': DIFFUSION_MODEL}
    for name, repo_id in default_models().items():
        repo = directory / 'hub' / ('models--' + repo_id.replace('/', '--'))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40 hex digits: refs/main names it
        # copyfile, not copy: the offline builder's safetensors files are 0600, which uid 10001
        # cannot read; fresh copies get the umask's modes.
        shutil.copytree(
            sources[name].resolve(), repo / 'snapshots' / commit, copy_function=shutil.copyfile
        )
        (repo / 'refs').mkdir()
        (repo / 'refs/main').write_text(commit)
    return directory


def env_flags(container: Dict, config_maps: Dict[str, Dict], values: Dict[str, str]) -> List[str]:
    """``-e`` flags for the container's env and envFrom; Secret and field references take
    ``values`` (a Secret key or field path), as the kubelet would fill them in."""
    flags = []
    for source in container.get('envFrom', []):
        for key, value in config_maps[source['configMapRef']['name']]['data'].items():
            flags += ['-e', f'{key}={value}']
    for variable in container.get('env', []):
        reference = variable.get('valueFrom', {})
        if 'value' in variable:
            value = variable['value']
        elif 'secretKeyRef' in reference:
            value = values.get(reference['secretKeyRef']['key'])
        else:
            value = values[reference['fieldRef']['fieldPath']]
        if value is not None:
            flags += ['-e', f'{variable["name"]}={value}']
    return flags


def security_flags(pod: Dict, container: Dict) -> List[str]:
    """podman's equivalents of the pod's and the container's securityContext."""
    pod_context, context = pod['securityContext'], container['securityContext']
    flags = ['--user', f'{pod_context["runAsUser"]}:{pod_context["runAsGroup"]}']
    if context.get('readOnlyRootFilesystem'):
        # No tmpfs of podman's own: only the volumes the manifest mounts are writable.
        flags += ['--read-only', '--read-only-tmpfs=false']
    if context.get('allowPrivilegeEscalation') is False:
        flags += ['--security-opt', 'no-new-privileges']
    flags += [f'--cap-drop={capability}' for capability in context['capabilities']['drop']]
    return flags


def volume_flags(pod: Dict, container: Dict, models: Path) -> List[str]:
    """Each emptyDir a tmpfs of its size limit that any uid may write; the model cache the
    prepared read-only cache."""
    volumes = {volume['name']: volume for volume in pod.get('volumes', [])}
    flags = []
    for mount in container.get('volumeMounts', []):
        if mount['name'] == MODEL_CACHE:
            flags += ['-v', f'{models}:{mount["mountPath"]}:ro']
        else:
            size = volumes[mount['name']]['emptyDir']['sizeLimit']
            size = size.replace('Mi', 'm').replace('Gi', 'g')
            flags += ['--tmpfs', f'{mount["mountPath"]}:rw,size={size},mode=1777']
    return flags


class Deployments:
    """The Deployments of ``kubectl kustomize k8s/`` and the ConfigMaps they read."""

    def __init__(self):
        docs = built_manifests()
        self.deployments = of_kind(docs, 'Deployment')
        self.config_maps = of_kind(docs, 'ConfigMap')

    def pod(self, name: str) -> Dict:
        return self.deployments[name]['spec']['template']['spec']

    def container(self, name: str) -> Dict:
        """Deployment ``name``'s one container."""
        [container] = self.pod(name)['containers']
        return container

    def podman_run_args(
        self, name: str, args: List[str], models: Path, values: Dict[str, str]
    ) -> List[str]:
        """``podman run`` arguments for Deployment ``name``'s container, ``args`` for its own."""
        pod, container = self.pod(name), self.container(name)
        command = container['command']
        return [
            *LIMITS,
            '--network',
            'host',
            *security_flags(pod, container),
            *volume_flags(pod, container, models),
            *env_flags(container, self.config_maps, values),
            '--entrypoint',
            command[0],
            container['image'],
            *command[1:],
            *args,
        ]


def health_serving(port: int) -> bool:
    """Whether the gRPC health service on ``port`` answers SERVING (the manifests' probes)."""
    try:
        with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def wait_serving(
    container: str, port: int, started: float, timeout: float = START_TIMEOUT_S
) -> float:
    """Seconds from ``started`` (monotonic) until ``container`` serves on ``port``; fails if it
    exits or takes too long."""
    while time.monotonic() - started < timeout:
        if health_serving(port):
            return round(time.monotonic() - started, 1)
        state = run('inspect', '--format', '{{.State.Status}}', container).stdout.strip()
        if state in ('exited', 'stopped'):
            raise CheckFailed(f'{container} exited:\n{logs(container)[-3000:]}')
        time.sleep(1)
    raise CheckFailed(
        f'{container} not serving on {port} after {timeout} s:\n{logs(container)[-3000:]}'
    )


def logs(container: str) -> str:
    result = run('logs', container, check=False)
    return result.stdout + result.stderr


class CheckFailed(AssertionError):
    """A check of the running containers failed; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@contextmanager
def containers_running(names: List[str]) -> Iterator[None]:
    """Removes the named containers on exit, whatever happened (they are this run's own)."""
    try:
        yield
    finally:
        for name in reversed(names):
            # Twice: podman 4.3's rm --force fails when the container stops by itself between
            # its SIGTERM and its SIGKILL ("container state improper: stopped").
            for _ in range(2):
                try:
                    removed = run('rm', '--force', '--time', '5', name, check=False, timeout=120)
                except subprocess.TimeoutExpired:
                    removed = None
                if removed is not None and removed.returncode == 0:
                    break
            else:
                print(
                    f'could not remove container {name}: '
                    f'{removed.stderr.strip() if removed else "timed out"}; '
                    f'scripts/podman.sh rm --force {name}',
                    file=sys.stderr,
                )


class ContainerFlow:
    """The three Deployments' containers on 127.0.0.1 ports: whisper, N diffusion, the gateway."""

    def __init__(self, deployments: Deployments, models: Path, diffusion_replicas: int):
        self.deployments, self.models = deployments, models
        self.values = {
            'api-key': secrets.token_hex(16),
            'token': 'hf_' + secrets.token_hex(16),
            'metadata.uid': str(uuid.uuid4()),
        }
        self.executors = {
            'whisper': ['s2i-whisper'],
            'stablediffusion': [f's2i-stablediffusion-{n}' for n in range(diffusion_replicas)],
        }
        ports = iter(free_ports(2 * (1 + diffusion_replicas) + 4))
        # Each Executor container's (port, monitoring port).
        self.ports = {
            container: (next(ports), next(ports))
            for containers in self.executors.values()
            for container in containers
        }
        self.gateway = 's2i-gateway'
        self.grpc, self.http, self.websocket, self.gateway_monitoring = (
            next(ports) for _ in range(4)
        )
        self.names = [*self.ports, self.gateway]

    def start(self, name: str, container: str, args: List[str]) -> float:
        """Starts Deployment ``name``'s container as ``container`` with ``args``; returns when
        (monotonic)."""
        values = {**self.values, 'metadata.name': container}
        run('rm', '--force', container, check=False)
        started = time.monotonic()
        run(
            'run',
            '--detach',
            '--name',
            container,
            *OFFLINE,
            *self.deployments.podman_run_args(name, args, self.models, values),
            timeout=600,
        )
        return started

    def start_executors(self) -> Dict[str, float]:
        """Starts every Executor container (all at once, as a rollout would); seconds to SERVING."""
        started = {}
        for name, containers in self.executors.items():
            for container in containers:
                port, monitoring = self.ports[container]
                args = self.deployments.container(name)['args']
                for flag, value in (
                    ('--port', port),
                    ('--port-monitoring', monitoring),
                    ('--host', '127.0.0.1'),
                ):
                    args = replace_flag(args, flag, str(value))
                started[container] = self.start(name, container, args)
        return {
            container: wait_serving(container, port, started[container])
            for container, (port, _) in self.ports.items()
        }

    def start_gateway(self) -> float:
        addresses = {
            name: [f'grpc://127.0.0.1:{self.ports[c][0]}' for c in containers]
            for name, containers in self.executors.items()
        }
        args = self.deployments.container('gateway')['args']
        for flag, *values in (
            ('--port', self.grpc, self.http, self.websocket),
            ('--port-monitoring', self.gateway_monitoring),
            ('--deployments-addresses', json.dumps(addresses)),
            ('--host', '127.0.0.1'),
        ):
            args = replace_flag(args, flag, *map(str, values))
        return wait_serving(self.gateway, self.grpc, self.start('gateway', self.gateway, args))

    @property
    def api_key(self) -> str:
        return self.values['api-key']


def spoken_clip(host: str, api_key: Optional[str]) -> Dict:
    """Sends the clip to ``host``; its transcript, image count and seconds. Fails on a wrong
    answer."""
    started = time.monotonic()
    [doc] = send(host, '/', make_docs([CLIP], []), IMAGE_PARAMETERS, api_key)
    seconds = round(time.monotonic() - started, 2)
    check(CLIP_WORD in doc.text.lower(), f'{host}: transcript {doc.text!r} lacks {CLIP_WORD!r}')
    check(
        len(doc.matches) == 1 and doc.matches[0].bytes_.startswith(b'\x89PNG'),
        f'{host}: no PNG came back',
    )
    return {'transcript': doc.text, 'images': len(doc.matches), 'seconds': seconds}


def refused_without_key(host: str) -> str:
    """The gateway's answer to a call with no API key; fails if it was served."""
    try:
        send(host, '/', make_docs([CLIP], []), IMAGE_PARAMETERS, None)
    except ServiceError as error:
        return str(error)
    raise CheckFailed(f'{host} served a call without the API key')


def hardening(container: str) -> Dict:
    """uid and root-filesystem write test inside a running container."""
    uid = run('exec', container, 'id', '-u').stdout.strip()
    check(uid == USER, f'{container} runs as uid {uid}, not {USER}')
    write = run('exec', container, 'touch', '/opt/venv/written', check=False)
    check(
        write.returncode != 0 and 'Read-only file system' in write.stderr,
        f'{container} could write its root filesystem: {write.stderr!r}',
    )
    return {'uid': uid, 'root_write': write.stderr.strip().rpartition(': ')[2]}


def load_with_stop(flow: ContainerFlow, container: str) -> Dict:
    """A bounded load on gRPC while ``container`` is stopped after STOP_AFTER_S, given the
    manifest's termination grace as kubectl would; the load's report. Every request must be
    answered: with images or with a clear error, none lost."""
    grace = flow.deployments.pod('stablediffusion')['terminationGracePeriodSeconds']
    stopper = threading.Timer(
        STOP_AFTER_S,
        run,
        args=('stop', '--time', str(grace), container),
        kwargs={'timeout': grace + 60},
    )
    stopper.start()
    try:
        report = asyncio.run(
            run_load(
                f'grpc://127.0.0.1:{flow.grpc}',
                LOAD_CLIENTS,
                LOAD_SECONDS,
                LOAD_REQUESTS,
                parameters=LOAD_PARAMETERS,
                api_key=flow.api_key,
            )
        )
    finally:
        stopper.join()
    summary = report.summary()
    check(report.lost == 0, f'requests lost while {container} stopped: {summary}')
    for message in report.errors:  # their first 200 characters
        check(
            any(clear in message for clear in (*CLEAR_ERRORS, UNAVAILABLE)),
            f'unclear error while {container} stopped: {message}',
        )
    return summary


def generate_one(flow: ContainerFlow) -> None:
    """One text-to-image request through the gateway; raises ServiceError when it fails."""
    send(
        f'grpc://127.0.0.1:{flow.grpc}',
        '/generate',
        make_docs([], ['a red apple']),
        IMAGE_PARAMETERS,
        flow.api_key,
    )


def error_while_down(flow: ContainerFlow) -> str:
    """The whole message a client gets while no diffusion container serves; fails unless it
    names the Deployment and says it may be down."""
    try:
        generate_one(flow)
    except ServiceError as error:
        message = str(error)
        check(
            'stablediffusion' in message and 'may be down' in message,
            f'unclear error with no diffusion container: {message}',
        )
        return message
    raise CheckFailed('served with no diffusion container running')


def serves_again(flow: ContainerFlow) -> float:
    """Seconds until a /generate call through the gateway succeeds."""
    started = time.monotonic()
    while time.monotonic() - started < SERVE_AGAIN_TIMEOUT_S:
        try:
            generate_one(flow)
            return round(time.monotonic() - started, 1)
        except ServiceError:
            time.sleep(1)
    raise CheckFailed(f'the gateway did not serve again within {SERVE_AGAIN_TIMEOUT_S} s')


def image_sizes(flow: ContainerFlow) -> Dict[str, str]:
    images = {}
    for name in (*EXECUTORS, 'gateway'):
        image = flow.deployments.container(name)['image']
        images[image] = run('image', 'ls', '--format', '{{.Size}}', image).stdout.strip()
    return images


def exercise(flow: ContainerFlow) -> Dict:
    """Starts the containers and runs every check; the report."""
    report = {'images': image_sizes(flow), 'seconds_to_serving': flow.start_executors()}
    report['seconds_to_serving'][flow.gateway] = flow.start_gateway()
    report['grpc'] = spoken_clip(f'grpc://127.0.0.1:{flow.grpc}', flow.api_key)
    report['http'] = spoken_clip(f'http://127.0.0.1:{flow.http}', flow.api_key)
    report['without_key'] = refused_without_key(f'grpc://127.0.0.1:{flow.grpc}')
    report['hardening'] = {container: hardening(container) for container in flow.names}
    stopped = flow.executors['stablediffusion'][0]
    report['load_with_stop'] = load_with_stop(flow, stopped)
    if len(flow.executors['stablediffusion']) > 1:
        check(
            report['load_with_stop']['failed'] == 0,
            'a second diffusion container was serving, yet requests failed',
        )
    else:
        report['error_while_down'] = error_while_down(flow)
    restarted = time.monotonic()
    run('start', stopped)
    report['seconds_to_serving'][f'{stopped} (restarted)'] = wait_serving(
        stopped, flow.ports[stopped][0], restarted
    )
    report['seconds_until_gateway_serves_again'] = serves_again(flow)
    report['http_after_restart'] = spoken_clip(f'http://127.0.0.1:{flow.http}', flow.api_key)
    for container in flow.names:
        text = logs(container)
        for secret in ('api-key', 'token'):
            check(
                flow.values[secret] not in text,
                f'the {secret} value appears in the log of {container}',
            )
    report['secrets_in_logs'] = 'none'
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--diffusion-replicas', type=int, default=1, choices=(1, 2))
    parser.add_argument('--logs', type=Path, help='copy every container log into this folder')
    parser.add_argument(
        '--report',
        type=Path,
        help="write the JSON report here too (jina's client logs its errors to stdout)",
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        work = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix='s2i-containers-', dir='/var/tmp')
            )
        )
        flow = ContainerFlow(Deployments(), hub_cache(work / 'models'), args.diffusion_replicas)
        stack.enter_context(containers_running(flow.names))
        try:
            report = exercise(flow)
        except (CheckFailed, ServiceError, subprocess.CalledProcessError) as error:
            detail = getattr(error, 'stderr', '') or ''
            print(f'FAILED: {error}\n{detail}', file=sys.stderr)
            return 1
        finally:
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for container in flow.names:
                    (args.logs / f'{container}.log').write_text(logs(container))
        print(json.dumps(report, indent=2))
        if args.report:
            args.report.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
