"""Kubernetes manifests: k8s/ is current with flow.yml, builds with kustomize, passes the
Kubernetes schemas, and holds what schemas do not check (labels, names, ports, secrets, GPUs,
probes, images, the gateway's Executor addresses). Also flow.yml's JCloud sections."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import yaml

from scripts import export_k8s
from tests.support import KUBECTL, VENV_BIN

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / 'k8s'
FLOW_YAML = ROOT / 'flow.yml'
# Two Kubernetes minors: the first with gRPC probes GA, and a recent one.
KUBERNETES_VERSIONS = ('1.27.0', '1.33.0')
CUSTOM_KINDS = {
    'ServiceMonitor',
    'PrometheusRule',
}  # prometheus-operator CRDs: no schema ships offline
DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')
DNS_1035_LABEL = re.compile(r'^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')
PORT_NAME = re.compile(r'^(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
SECRET_LIKE_ENV = re.compile(r'TOKEN|SECRET|PASSWORD|KEY', re.IGNORECASE)
HF_TOKEN_TEXT = re.compile(r'hf_[A-Za-z0-9]{20,}')
EXECUTOR_DOCKERFILES = {'whisper': 'Dockerfile.whisper', 'stablediffusion': 'Dockerfile.diffusion'}
# jina's own pods; the web page's Deployment (k8s/web.yml) is checked on its own below.
JINA_DEPLOYMENTS = ('gateway', 'whisper', 'stablediffusion')
MIN_STARTUP_SECONDS = 20 * 60  # a first start downloads the model before the port opens


def built_manifests() -> List[Dict]:
    """``kubectl kustomize k8s/``: every object the deploy command applies."""
    result = subprocess.run(
        [str(KUBECTL), 'kustomize', str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: List[Dict], kind: str) -> Dict[str, Dict]:
    return {doc['metadata']['name']: doc for doc in docs if doc['kind'] == kind}


def flag_values(args: List[str], flag: str) -> List[str]:
    """The values after ``flag`` in a container's args, up to the next flag."""
    start = args.index(flag) + 1
    values = []
    for arg in args[start:]:
        if arg.startswith('--'):
            break
        values.append(arg)
    return values


def containers(docs: List[Dict]) -> Iterator[tuple]:
    """(Deployment name, container) of jina's pods."""
    for name, deployment in of_kind(docs, 'Deployment').items():
        if name not in JINA_DEPLOYMENTS:
            continue
        for container in deployment['spec']['template']['spec']['containers']:
            yield name, container


def served_ports(container: Dict) -> set:
    """Ports the jina process in ``container`` listens on, read from its arguments."""
    args = container['args']
    return {
        int(port) for port in flag_values(args, '--port') + flag_values(args, '--port-monitoring')
    }


@pytest.fixture(scope='module')
def docs() -> List[Dict]:
    return built_manifests()


@pytest.fixture(scope='module')
def flow() -> Dict:
    return yaml.safe_load(FLOW_YAML.read_text())


def test_base_is_current_with_flow_yml(tmp_path):
    """Fails when flow.yml (or the export script) changed and `make k8s` was not run."""
    out = tmp_path / 'base'
    subprocess.run(
        [sys.executable, str(ROOT / 'scripts' / 'export_k8s.py'), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = {
        p.relative_to(K8S / 'base'): p.read_text() for p in (K8S / 'base').rglob('*') if p.is_file()
    }
    fresh = {p.relative_to(out): p.read_text() for p in out.rglob('*') if p.is_file()}
    assert sorted(fresh) == sorted(committed), (
        'k8s/base files differ from a fresh export: run `make k8s`'
    )
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f'k8s/base is stale against flow.yml: {stale}; run `make k8s`'


def test_export_refuses_an_executor_without_an_image(flow):
    upscaler = {'name': 'upscaler', 'uses': 'executors/upscaler/config.yml'}
    with pytest.raises(SystemExit, match='upscaler'):
        export_k8s.cluster_spec({**flow, 'executors': [*flow['executors'], upscaler]})


@pytest.mark.parametrize('version', KUBERNETES_VERSIONS)
def test_every_manifest_passes_kubernetes_schemas_strictly(docs, tmp_path, version):
    built = tmp_path / 'built.yml'
    built.write_text(yaml.safe_dump_all(docs))
    # Partial objects, checked once applied (in the built manifests).
    patches = set((K8S / 'patches').glob('*.yml'))
    files = [built] + [
        path
        for path in sorted(K8S.rglob('*.yml'))
        if path not in patches
        and all(
            isinstance(doc, dict) and {'apiVersion', 'kind'} <= doc.keys()
            for doc in yaml.safe_load_all(path.read_text())
            if doc is not None
        )
    ]
    result = subprocess.run(
        [str(VENV_BIN / 'kubernetes-validate'), '--strict', '-k', version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(' passed for resource ')
    checkable = sum(doc['kind'] not in CUSTOM_KINDS for doc in docs)
    assert passed >= checkable, result.stdout


def test_selectors_match_template_labels(docs):
    deployments = of_kind(docs, 'Deployment')
    for name, deployment in deployments.items():
        labels = deployment['spec']['template']['metadata']['labels']
        assert deployment['spec']['selector']['matchLabels'].items() <= labels.items(), name
    pod_labels = [d['spec']['template']['metadata']['labels'] for d in deployments.values()]
    for name, service in of_kind(docs, 'Service').items():
        selector = service['spec']['selector']
        assert any(selector.items() <= labels.items() for labels in pod_labels), (
            f'Service {name} selects no pods'
        )
    for name, budget in of_kind(docs, 'PodDisruptionBudget').items():
        selector = budget['spec']['selector']['matchLabels']
        assert any(selector.items() <= labels.items() for labels in pod_labels), (
            f'PDB {name} selects no pods'
        )
    services = of_kind(docs, 'Service')
    for name, monitor in of_kind(docs, 'ServiceMonitor').items():
        selector = monitor['spec']['selector']['matchLabels']
        matched = [
            s
            for s in services.values()
            if selector.items() <= s['metadata'].get('labels', {}).items()
        ]
        assert matched, f'ServiceMonitor {name} selects no Service'
        for endpoint in monitor['spec']['endpoints']:
            assert any(
                endpoint['port'] in {p['name'] for p in s['spec']['ports']} for s in matched
            ), name


def test_names_are_valid_dns_labels(docs):
    for doc in docs:
        name = doc['metadata']['name']
        pattern = DNS_1035_LABEL if doc['kind'] in ('Service', 'Namespace') else DNS_LABEL
        assert pattern.match(name), f'{doc["kind"]} name {name!r} is not a valid DNS label'
        assert DNS_LABEL.match(doc['metadata'].get('namespace', 'default')), name
    for _, container in containers(docs):
        assert DNS_LABEL.match(container['name'])
    for service in of_kind(docs, 'Service').values():
        for port in service['spec']['ports']:
            assert PORT_NAME.match(port['name']), port


def test_ports_are_in_range_and_served(docs):
    for name, container in containers(docs):
        served = served_ports(container)
        assert served and all(1 <= port <= 65535 for port in served), name
        assert {p['containerPort'] for p in container['ports']} <= served, name
    pods = {
        d['spec']['template']['metadata']['labels']['app']: c
        for d in of_kind(docs, 'Deployment').values()
        for c in d['spec']['template']['spec']['containers']
    }
    for name, service in of_kind(docs, 'Service').items():
        if (
            name == 'web'
        ):  # named targetPort; test_web_page_deployment_reaches_the_gateway_http_service
            continue
        container = pods[service['spec']['selector']['app']]
        for port in service['spec']['ports']:
            assert 1 <= port['port'] <= 65535
            assert port['targetPort'] in served_ports(container), (
                f'Service {name} targets a port nobody serves'
            )


def test_no_plaintext_secrets():
    docs = built_manifests()
    assert not of_kind(docs, 'Secret'), (
        'Secrets are created at deploy time (README), never committed'
    )
    for name, container in containers(docs):
        for env in container.get('env', []):
            if SECRET_LIKE_ENV.search(env['name']):
                assert 'value' not in env and 'secretKeyRef' in env['valueFrom'], (
                    f'{name}: {env["name"]}'
                )
    committed = [*K8S.rglob('*'), *ROOT.glob('Dockerfile.*'), FLOW_YAML]
    for path in committed:
        if path.is_file():
            assert not HF_TOKEN_TEXT.search(path.read_text()), (
                f'{path} holds what looks like a token'
            )


def test_executors_read_the_hugging_face_token_from_a_secret(docs):
    for name, container in containers(docs):
        if name in EXECUTOR_DOCKERFILES:
            [token] = [env for env in container['env'] if env['name'] == 'HF_TOKEN']
            assert token['valueFrom']['secretKeyRef']['name'] == 'huggingface'


def test_gpu_limits_follow_the_jcloud_gpus_of_flow_yml(docs, flow):
    deployments = of_kind(docs, 'Deployment')
    for executor in flow['executors']:
        gpus = executor['jcloud']['resources'].get('gpu', 0)
        pod = deployments[executor['name']]['spec']['template']['spec']
        [container] = pod['containers']
        assert int(container['resources'].get('limits', {}).get('nvidia.com/gpu', 0)) == gpus, (
            executor['name']
        )
        if gpus:
            assert pod['nodeSelector'] == {'nvidia.com/gpu.present': 'true'}
            assert {'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'} in pod[
                'tolerations'
            ]
    assert any(executor['jcloud']['resources'].get('gpu') for executor in flow['executors'])


def test_every_container_has_resources_requests_and_limits(docs):
    for name, container in containers(docs):
        assert {'cpu', 'memory'} <= set(container['resources']['requests']), name
        assert 'memory' in container['resources']['limits'], name


def test_probes_are_grpc_health_checks_that_wait_for_a_model_download(docs):
    for name, container in containers(docs):
        port = int(flag_values(container['args'], '--port')[0])
        for probe in ('startupProbe', 'readinessProbe', 'livenessProbe'):
            assert container[probe] == {**container[probe], 'grpc': {'port': port}}, (name, probe)
            assert 'exec' not in container[probe]
        if name in EXECUTOR_DOCKERFILES:
            startup = container['startupProbe']
            budget = (
                startup.get('initialDelaySeconds', 0)
                + startup['periodSeconds'] * startup['failureThreshold']
            )
            assert budget >= MIN_STARTUP_SECONDS, name


def test_images_are_pinned_by_tag(docs):
    images = [container['image'] for _, container in containers(docs)]
    assert len(images) == 3
    for image in images:
        name, _, tag = image.rpartition(':')
        assert name and '/' not in tag and tag not in ('', 'latest'), f'{image} is not pinned'


def test_gateway_reaches_every_executor_through_its_headless_service(docs, flow):
    [gateway] = of_kind(docs, 'Deployment')['gateway']['spec']['template']['spec']['containers']
    addresses = json.loads(flag_values(gateway['args'], '--deployments-addresses')[0])
    assert sorted(addresses) == sorted(executor['name'] for executor in flow['executors'])
    services = of_kind(docs, 'Service')
    deployments = of_kind(docs, 'Deployment')
    for executor, [address] in addresses.items():
        match = re.fullmatch(r'grpc://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)', address)
        assert match, address
        service_name, namespace, port = match.group(1), match.group(2), int(match.group(3))
        service = services[service_name]
        assert service['metadata']['namespace'] == namespace
        assert port in {p['port'] for p in service['spec']['ports']}
        assert service['spec']['clusterIP'] == 'None', (
            'a ClusterIP Service pins all calls to one pod'
        )
        pod_labels = deployments[executor]['spec']['template']['metadata']['labels']
        assert service['spec']['selector'].items() <= pod_labels.items()
    channel_options = json.loads(flag_values(gateway['args'], '--grpc-channel-options')[0])
    assert channel_options['grpc.lb_policy_name'] == 'round_robin'


def test_executors_close_connections_so_new_replicas_are_found(docs):
    for name, container in containers(docs):
        if name in EXECUTOR_DOCKERFILES:
            options = json.loads(flag_values(container['args'], '--grpc-server-options')[0])
            assert 0 < options['grpc.max_connection_age_ms'] <= 5 * 60 * 1000, name


def test_model_cache_volume_is_the_images_hf_home(docs):
    deployments = of_kind(docs, 'Deployment')
    for name, dockerfile in EXECUTOR_DOCKERFILES.items():
        hf_home = re.search(r'HF_HOME=(\S+)', (ROOT / dockerfile).read_text()).group(1)
        pod = deployments[name]['spec']['template']['spec']
        [container] = pod['containers']
        [mount] = [m for m in container['volumeMounts'] if m['mountPath'] == hf_home]
        assert mount['name'] in {volume['name'] for volume in pod['volumes']}


def test_diffusion_scales_with_an_autoscaler_and_a_disruption_budget(docs):
    deployment = of_kind(docs, 'Deployment')['stablediffusion']
    autoscaler = of_kind(docs, 'HorizontalPodAutoscaler')['stablediffusion']
    assert autoscaler['spec']['scaleTargetRef'] == {
        'apiVersion': 'apps/v1',
        'kind': 'Deployment',
        'name': 'stablediffusion',
    }
    assert 1 <= autoscaler['spec']['minReplicas'] < autoscaler['spec']['maxReplicas']
    assert 'replicas' not in deployment['spec'], (
        'the autoscaler owns replicas; apply must not reset them'
    )
    budget = of_kind(docs, 'PodDisruptionBudget')['stablediffusion']
    labels = deployment['spec']['template']['metadata']['labels']
    assert budget['spec']['selector']['matchLabels'].items() <= labels.items()


def test_prometheus_scrapes_every_pod(docs):
    monitored = {
        m['spec']['selector']['matchLabels']['app']
        for m in of_kind(docs, 'ServiceMonitor').values()
    }
    for name, deployment in of_kind(docs, 'Deployment').items():
        if name not in JINA_DEPLOYMENTS:
            continue
        annotations = deployment['spec']['template']['metadata']['annotations']
        [container] = deployment['spec']['template']['spec']['containers']
        assert annotations['prometheus.io/scrape'] == 'true'
        assert (
            annotations['prometheus.io/port']
            == flag_values(container['args'], '--port-monitoring')[0]
        )
        assert name in monitored


def test_pods_run_as_the_images_non_root_user(docs):
    assert (
        of_kind(docs, 'Namespace')['speech2image']['metadata']['labels'][
            'pod-security.kubernetes.io/enforce'
        ]
        == 'restricted'
    )
    users = {
        re.search(r'^USER (\d+)$', path.read_text(), re.M).group(1)
        for path in ROOT.glob('Dockerfile.*')
    }
    for _name, deployment in of_kind(docs, 'Deployment').items():
        pod = deployment['spec']['template']['spec']
        assert pod['securityContext']['runAsNonRoot'] is True
        assert {str(pod['securityContext']['runAsUser'])} == users
        for container in pod['containers']:
            assert container['securityContext']['allowPrivilegeEscalation'] is False
            assert container['securityContext']['capabilities']['drop'] == ['ALL']


def test_flow_yml_holds_for_jcloud():
    """What jcloud 0.3 checks before `jc deploy flow.yml` talks to JCloud: the YAML loads as a
    Flow, each Executor's source folder holds what Hubble builds, and the jcloud sections name
    instance types and quantities JCloud knows."""
    from jcloud.helper import load_flow_data, normalized
    from jcloud.normalize import inspect_executors

    flow_dict = load_flow_data(FLOW_YAML)
    assert not normalized(FLOW_YAML), 'local Executors: jc pushes them to Hubble first'
    for data in inspect_executors(flow_dict, workspace=ROOT):
        assert {'config.yml', 'executor.py', 'requirements.txt'} <= {
            p.name for p in data.src_dir.iterdir()
        }
    sections = [flow_dict['jcloud'], *(executor['jcloud'] for executor in flow_dict['executors'])]
    for section in sections:
        resources = section['resources']
        assert re.fullmatch(r'[CG][1-8]', resources['instance'])
        assert re.fullmatch(r'\d+(\.\d+)?[MG]', resources.get('memory', '1G'))
        if 'gpu' in resources:
            assert resources['instance'].startswith('G') and resources['gpu'] >= 1


def test_web_page_deployment_reaches_the_gateway_http_service(docs):
    """The page's service runs from the pinned gateway image, is probed on /healthz, and forwards
    to a Service port that exists."""
    deployment = of_kind(docs, 'Deployment')['web']
    [container] = deployment['spec']['template']['spec']['containers']
    assert (
        container['image']
        == of_kind(docs, 'Deployment')['gateway']['spec']['template']['spec']['containers'][0][
            'image'
        ]
    )
    assert container['readinessProbe']['httpGet']['path'] == '/healthz'
    assert container['livenessProbe']['httpGet']['path'] == '/healthz'
    gateway_url = flag_values(container['args'], '--gateway')[0]
    host, port = gateway_url.removeprefix('http://').split(':')
    service = of_kind(docs, 'Service')[host]
    assert int(port) in {p['port'] for p in service['spec']['ports']}
    assert (
        int(flag_values(container['args'], '--port')[0]) == container['ports'][0]['containerPort']
    )
    web_service = of_kind(docs, 'Service')['web']
    assert (
        web_service['spec']['selector'].items()
        <= deployment['spec']['template']['metadata']['labels'].items()
    )
    # No key of its own to lend: each person enters it on the page (docs/web-page.md).
    assert 'S2I_API_KEY' not in {env['name'] for env in container.get('env', [])}
