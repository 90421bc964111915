"""k8s/networkpolicy.yml and the hardening and API key patches of k8s/patches/, checked against the Kubernetes
schemas and applied with kustomize to Deployments labelled as `jina export kubernetes` labels them."""

import shutil
import subprocess

import pytest
import yaml
from kubernetes_validate import validate

from devtools.offline_flow import ROOT
from tests.support import KUBECTL

K8S = ROOT / 'k8s'
PATCHES = ('hardening.yml', 'gateway-api-key.yml')
K8S_VERSION = '1.30'
# The pod labels of jina's Kubernetes export.
POD_LABELS = {
    'gateway': {'app': 'gateway', 'pod_type': 'GATEWAY', 'jina_deployment_name': 'gateway'},
    'whisper': {'app': 'whisper', 'pod_type': 'WORKER', 'jina_deployment_name': 'whisper'},
    'stablediffusion': {
        'app': 'stablediffusion',
        'pod_type': 'WORKER',
        'jina_deployment_name': 'stablediffusion',
    },
}
EXECUTORS = ('whisper', 'stablediffusion')
GRPC_PORT, METRICS_PORT = 8080, 9090


def documents(name):
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def policies():
    return {doc['metadata']['name']: doc for doc in documents('networkpolicy.yml')}


def selects(selector, labels) -> bool:
    """Kubernetes label-selector semantics (matchLabels, matchExpressions In/NotIn/Exists)."""
    if any(labels.get(key) != value for key, value in selector.get('matchLabels', {}).items()):
        return False
    for expression in selector.get('matchExpressions', []):
        value, operator = labels.get(expression['key']), expression['operator']
        if operator == 'In' and value not in expression['values']:
            return False
        if operator == 'NotIn' and value in expression['values']:
            return False
        if operator == 'Exists' and value is None:
            return False
    return True


def allowed_sources(pod: str, port: int):
    """The ingress peers that the policies selecting ``pod`` allow on ``port``."""
    peers = []
    for policy in policies().values():
        if selects(policy['spec']['podSelector'], POD_LABELS[pod]):
            for rule in policy['spec'].get('ingress', []):
                if any(p['port'] == port for p in rule.get('ports', [])):
                    peers += rule.get('from', [{}])  # no `from`: anywhere
    return peers


@pytest.mark.parametrize('name', ['networkpolicy.yml'])
def test_policies_match_the_kubernetes_schema(name):
    for doc in documents(name):
        validate(doc, K8S_VERSION, strict=True)


def test_everything_is_denied_unless_allowed():
    deny = policies()['default-deny-ingress']['spec']
    assert deny['podSelector'] == {} and deny['policyTypes'] == ['Ingress']
    assert 'ingress' not in deny


@pytest.mark.parametrize('executor', EXECUTORS)
def test_only_the_gateway_reaches_the_executors(executor):
    [peer] = allowed_sources(executor, GRPC_PORT)
    assert set(peer) == {'podSelector'}  # pods of this namespace only, no IP blocks
    assert selects(peer['podSelector'], POD_LABELS['gateway'])
    assert not any(selects(peer['podSelector'], POD_LABELS[other]) for other in EXECUTORS)
    [metrics] = allowed_sources(executor, METRICS_PORT)
    assert metrics == {
        'namespaceSelector': {'matchLabels': {'kubernetes.io/metadata.name': 'monitoring'}}
    }


def test_the_gateway_is_open_to_clients_and_not_to_the_executor_policy():
    assert allowed_sources('gateway', GRPC_PORT) == [{}]
    executors_policy = policies()['executors-from-gateway-only']['spec']['podSelector']
    assert not selects(executors_policy, POD_LABELS['gateway'])


def jina_like_deployment(name: str) -> dict:
    container = 'gateway' if name == 'gateway' else 'executor'
    return {
        'apiVersion': 'apps/v1',
        'kind': 'Deployment',
        'metadata': {'name': name, 'namespace': 'speech2image'},
        'spec': {
            'selector': {'matchLabels': {'app': name}},
            'template': {
                'metadata': {'labels': POD_LABELS[name]},
                'spec': {
                    'containers': [
                        {
                            'name': container,
                            'image': f'speech2image/{name}:test',
                            'env': [{'name': 'JINA_LOG_LEVEL', 'value': 'INFO'}],
                        }
                    ]
                },
            },
        },
    }


@pytest.fixture
def kustomized(tmp_path):
    """The patches applied by `kubectl kustomize` to jina-shaped Deployments."""
    (tmp_path / 'deployments.yml').write_text(
        yaml.safe_dump_all([jina_like_deployment(name) for name in POD_LABELS])
    )
    for patch in PATCHES:
        shutil.copy(K8S / 'patches' / patch, tmp_path / patch)
    (tmp_path / 'kustomization.yaml').write_text(
        yaml.safe_dump(
            {
                'resources': ['deployments.yml'],
                'patches': [{'path': patch} for patch in PATCHES],
            }
        )
    )
    output = subprocess.run(
        [str(KUBECTL), 'kustomize', str(tmp_path)],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    return {doc['metadata']['name']: doc for doc in yaml.safe_load_all(output)}


def test_patches_give_read_only_root_and_keep_the_schema(kustomized):
    assert set(kustomized) == set(POD_LABELS)
    for _name, deployment in kustomized.items():
        validate(deployment, K8S_VERSION, strict=True)
        pod = deployment['spec']['template']['spec']
        [container] = pod['containers']
        assert container['securityContext']['readOnlyRootFilesystem'] is True
        assert container['securityContext']['allowPrivilegeEscalation'] is False
        assert {'name': 'tmp', 'mountPath': '/tmp'} in container['volumeMounts']
        assert {'name': 'HOME', 'value': '/tmp'} in container['env']
        assert {'name': 'JINA_LOG_LEVEL', 'value': 'INFO'} in container[
            'env'
        ]  # merged, not replaced
        assert pod['terminationGracePeriodSeconds'] > 30  # the drain takes up to 30 s


def test_the_gateway_reads_its_api_key_from_a_required_secret(kustomized):
    [container] = kustomized['gateway']['spec']['template']['spec']['containers']
    [key] = [env for env in container['env'] if env['name'] == 'S2I_API_KEY']
    assert key['valueFrom']['secretKeyRef'] == {
        'name': 'speech2image-api-key',
        'key': 'api-key',
        'optional': False,
    }
    for executor in EXECUTORS:
        [executor_container] = kustomized[executor]['spec']['template']['spec']['containers']
        assert all(env['name'] != 'S2I_API_KEY' for env in executor_container['env'])
