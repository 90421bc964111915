"""scripts/run_containers.py's translation of the manifests into ``podman run`` arguments, and the
model cache it mounts, checked without podman (the run itself is slow: docs/containers.md)."""

import sys
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from devtools.offline_flow import ROOT

sys.path.insert(0, str(ROOT / 'scripts'))
import run_containers  # noqa: E402

VALUES = {
    'api-key': 'key-value',
    'token': 'token-value',
    'metadata.uid': 'uid-value',
    'metadata.name': 'pod-name',
}


@pytest.fixture(scope='module')
def deployments():
    return run_containers.Deployments()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return run_containers.hub_cache(tmp_path_factory.mktemp('cache') / 'models')


def flag_value(args, flag):
    return args[args.index(flag) + 1]


@pytest.mark.parametrize('name', ['gateway', 'whisper', 'stablediffusion'])
def test_container_runs_hardened_as_the_manifest_says(deployments, cache, name):
    args = deployments.podman_run_args(name, ['--port', '1'], cache, VALUES)
    image = deployments.container(name)['image']
    assert flag_value(args, '--user') == '10001:10001'
    assert '--read-only' in args and '--read-only-tmpfs=false' in args
    assert '--cap-drop=ALL' in args and flag_value(args, '--security-opt') == 'no-new-privileges'
    assert flag_value(args, '--tmpfs').startswith('/tmp:rw,size=')
    # The image, then the manifest's command after the entrypoint, then the arguments given.
    assert args[args.index(image) - 2 :] == ['--entrypoint', 'jina', image, '--port', '1']
    assert 'HOME=/tmp' in args


@pytest.mark.parametrize('name', ['whisper', 'stablediffusion'])
def test_executors_get_the_model_cache_read_only_and_the_token(deployments, cache, name):
    args = deployments.podman_run_args(name, [], cache, VALUES)
    assert flag_value(args, '-v') == f'{cache}:/models:ro'
    assert 'HF_TOKEN=token-value' in args and 'K8S_POD_NAME=pod-name' in args


def test_gateway_gets_the_api_key_and_no_model_cache(deployments, cache):
    args = deployments.podman_run_args('gateway', [], cache, VALUES)
    assert 'S2I_API_KEY=key-value' in args and '-v' not in args


@pytest.mark.parametrize('name', ['whisper', 'stablediffusion'])
def test_cache_holds_each_default_model_where_the_hub_client_looks(cache, name):
    """What the Executors do in the containers: the default id, the cache only."""
    repo_id = run_containers.default_models()[name]
    folder = snapshot_download(repo_id, cache_dir=cache / 'hub', local_files_only=True)
    marker = {'whisper': 'model.bin', 'stablediffusion': 'model_index.json'}[name]
    assert (Path(folder) / marker).is_file()
    assert all(path.stat().st_mode & 0o004 for path in (cache / 'hub').rglob('*') if path.is_file())
