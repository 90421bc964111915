"""Autoscaling manifests: k8s/ builds with its CPU HorizontalPodAutoscaler by default, and with
the KEDA components (k8s/autoscaling/) turned on it builds a ScaledObject instead, valid against
KEDA's own CRD schema (k8s/crds/, kept with its version), aimed at the diffusion Deployment and
scaling on the gateway's requests in flight; scale to zero only when asked for."""

import copy
import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import jsonschema
import pytest
import yaml

from speech2image.cold_start import COLD_START_ENV
from speech2image.gateway import GuardedGateway
from tests.test_k8s import K8S, of_kind

VENV_BIN = Path(sys.executable).parent
KEDA_CRD = K8S / 'crds' / 'keda-v2.20.2-scaledobjects.yaml'
KEDA = 'autoscaling/keda'
SCALE_TO_ZERO = 'autoscaling/scale-to-zero'
DIFFUSION = 'stablediffusion'
DEMAND_TRIGGER = 'requests-in-flight'  # the one that scales on load
STARTING_GATEWAY_TRIGGER = 'gateway-starting'  # scale to zero only


def build(tmp_path: Path, *components: str) -> List[Dict]:
    """``kubectl kustomize`` of a copy of k8s/ with ``components`` turned on in its
    kustomization.yaml, as docs/autoscaling.md tells an operator to."""
    tree = tmp_path / 'k8s'
    shutil.copytree(K8S, tree)
    kustomization = yaml.safe_load((tree / 'kustomization.yaml').read_text())
    if components:
        kustomization['components'] = list(components)
    (tree / 'kustomization.yaml').write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [str(VENV_BIN / 'kubectl'), 'kustomize', str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def scaled_object_schema() -> Dict:
    """The openAPIV3Schema of KEDA's ScaledObject (its served version), with unknown fields made
    errors: the API server would silently drop a misspelt field."""
    [crd] = [doc for doc in yaml.safe_load_all(KEDA_CRD.read_text()) if doc]
    [version] = [v for v in crd['spec']['versions'] if v['served'] and v['storage']]
    return closed(copy.deepcopy(version['schema']['openAPIV3Schema']))


def closed(schema: Dict) -> Dict:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties
    and does not keep unknown fields (what the API server prunes, refused instead)."""
    if isinstance(schema, dict):
        if (
            'properties' in schema
            and 'additionalProperties' not in schema
            and not schema.get('x-kubernetes-preserve-unknown-fields')
        ):
            schema['additionalProperties'] = False
        for value in schema.values():
            closed(value)
    elif isinstance(schema, list):
        for value in schema:
            closed(value)
    return schema


def trigger(scaled_object: Dict, name: str = DEMAND_TRIGGER) -> Dict:
    """The ScaledObject's trigger called ``name``."""
    [named] = [rule for rule in scaled_object['spec']['triggers'] if rule['name'] == name]
    return named


@pytest.fixture(scope='module')
def schema() -> Dict:
    return scaled_object_schema()


@pytest.fixture(scope='module')
def keda_docs(tmp_path_factory) -> List[Dict]:
    return build(tmp_path_factory.mktemp('keda'), KEDA)


@pytest.fixture(scope='module')
def scale_to_zero_docs(tmp_path_factory) -> List[Dict]:
    return build(tmp_path_factory.mktemp('zero'), KEDA, SCALE_TO_ZERO)


def test_default_build_keeps_the_cpu_autoscaler_and_no_keda_object(tmp_path):
    docs = build(tmp_path)
    assert DIFFUSION in of_kind(docs, 'HorizontalPodAutoscaler')
    assert not of_kind(docs, 'ScaledObject'), 'k8s/ must apply on clusters without KEDA'


def test_keda_replaces_the_cpu_autoscaler(keda_docs):
    assert not of_kind(keda_docs, 'HorizontalPodAutoscaler'), 'KEDA makes its own; two fight'
    scaled = of_kind(keda_docs, 'ScaledObject')[DIFFUSION]
    target = scaled['spec']['scaleTargetRef']
    deployment = of_kind(keda_docs, 'Deployment')[target['name']]
    assert (target['apiVersion'], target['kind']) == ('apps/v1', 'Deployment')
    assert scaled['metadata']['namespace'] == deployment['metadata']['namespace']
    assert 'replicas' not in deployment['spec'], (
        'the autoscaler owns replicas; apply must not reset them'
    )
    assert of_kind(keda_docs, 'PodDisruptionBudget')[DIFFUSION]


@pytest.mark.parametrize('docs_fixture', ['keda_docs', 'scale_to_zero_docs'])
def test_scaled_object_passes_the_keda_crd_schema(docs_fixture, schema, request):
    scaled = of_kind(request.getfixturevalue(docs_fixture), 'ScaledObject')[DIFFUSION]
    jsonschema.validate(scaled, schema)


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type(keda_docs, schema):
    """The control: the check above is not vacuous."""
    scaled = of_kind(keda_docs, 'ScaledObject')[DIFFUSION]
    misspelt = copy.deepcopy(scaled)
    misspelt['spec']['minReplicasCount'] = misspelt['spec'].pop('minReplicaCount')
    with pytest.raises(jsonschema.ValidationError, match='minReplicasCount'):
        jsonschema.validate(misspelt, schema)
    wrong_type = copy.deepcopy(scaled)
    wrong_type['spec']['maxReplicaCount'] = 'four'
    with pytest.raises(jsonschema.ValidationError, match='four'):
        jsonschema.validate(wrong_type, schema)


def test_trigger_scales_on_requests_in_flight_per_replica(keda_docs):
    """A Prometheus trigger on the gateway's pending requests, one value (KEDA refuses a query
    that returns several series), averaged per replica, and an empty answer is not zero."""
    scaled = of_kind(keda_docs, 'ScaledObject')[DIFFUSION]
    rule = trigger(scaled)
    assert rule['type'] == 'prometheus' and rule['metricType'] == 'AverageValue'
    metadata = rule['metadata']
    assert all(isinstance(value, str) for value in metadata.values()), (
        'trigger metadata are strings'
    )
    assert metadata['query'].startswith('sum(jina_number_of_pending_requests{')
    assert 'job="gateway"' in metadata['query']
    assert float(metadata['threshold']) > 0
    assert metadata['ignoreNullValues'] == 'false'
    assert metadata['serverAddress'].startswith('http')
    assert scaled['spec']['fallback']['replicas'] >= 1
    assert 1 <= scaled['spec']['minReplicaCount'] < scaled['spec']['maxReplicaCount']


def test_scale_to_zero_is_opt_in_with_an_idle_time_and_a_bounded_hold(
    keda_docs, scale_to_zero_docs
):
    default = of_kind(keda_docs, 'ScaledObject')[DIFFUSION]['spec']
    zero = of_kind(scale_to_zero_docs, 'ScaledObject')[DIFFUSION]['spec']
    assert default['minReplicaCount'] >= 1 and [rule['name'] for rule in default['triggers']] == [
        DEMAND_TRIGGER
    ]
    assert zero['minReplicaCount'] == 0
    assert zero['cooldownPeriod'] > 0
    scaled = of_kind(scale_to_zero_docs, 'ScaledObject')[DIFFUSION]
    # One waiting request wakes it; so does a gateway pod that is starting.
    assert float(trigger(scaled)['metadata']['activationThreshold']) == 0
    starting = trigger(scaled, STARTING_GATEWAY_TRIGGER)['metadata']
    assert (
        'deployment="gateway"' in starting['query'] and float(starting['activationThreshold']) == 0
    )
    unchanged = ('minReplicaCount', 'cooldownPeriod', 'triggers')
    assert {key: value for key, value in zero.items() if key not in unchanged} == {
        key: value for key, value in default.items() if key not in unchanged
    }
    # The gateway holds the first request while a pod starts, less long than its own timeout.
    assert COLD_START_ENV not in gateway_env(keda_docs)
    request_timeout = (
        inspect.signature(GuardedGateway).parameters['request_timeout_seconds'].default
    )
    assert 0 < float(gateway_env(scale_to_zero_docs)[COLD_START_ENV]) < request_timeout


def gateway_env(docs: List[Dict]) -> Dict[str, str]:
    """The gateway container's environment variables with a plain value."""
    [container] = of_kind(docs, 'Deployment')['gateway']['spec']['template']['spec']['containers']
    return {
        variable['name']: variable['value']
        for variable in container.get('env', [])
        if 'value' in variable
    }


def test_keda_build_passes_kubernetes_schemas_strictly(keda_docs, tmp_path):
    built = tmp_path / 'built.yml'
    built.write_text(yaml.safe_dump_all(keda_docs))
    result = subprocess.run(
        [str(VENV_BIN / 'kubernetes-validate'), '--strict', '-k', '1.33.0', str(built)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
