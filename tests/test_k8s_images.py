"""The container images' Dockerfiles: hadolint-clean, and built the way the manifests run them
(pinned base, non-root user, model cache volume, config.yml started by `jina executor`, no
secrets, dependencies before code). scripts/build_image_offline.sh builds one for real (slow,
so not here; docs/deployment.md)."""

import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.test_k8s import EXECUTOR_DOCKERFILES, built_manifests, containers

ROOT = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).parent / 'hadolint'
DOCKERFILES = sorted(ROOT.glob('Dockerfile.*'))
PINNED_PYTHON_BASE = re.compile(r'^ARG BASE_IMAGE=python:\d+\.\d+\.\d+-slim-[a-z]+$', re.M)
EXECUTOR_COMMAND = ['executor', '--uses', 'config.yml', '--port', '8080']


def instructions(dockerfile: Path) -> List[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r'\\\n\s*', ' ', dockerfile.read_text())
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith('#')
    ]


def final_stage(dockerfile: Path) -> List[str]:
    lines = instructions(dockerfile)
    last_from = max(i for i, line in enumerate(lines) if line.startswith('FROM '))
    return lines[last_from:]


def test_there_is_a_dockerfile_per_deployment():
    images = {
        c['image'].rpartition(':')[0].split('/')[-1] for _, c in containers(built_manifests())
    }
    assert images == {'gateway', 'whisper', 'stablediffusion'}
    assert {path.name for path in DOCKERFILES} == {
        'Dockerfile.gateway',
        *EXECUTOR_DOCKERFILES.values(),
    }


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run(
        [str(HADOLINT), '--failure-threshold', 'info', str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda path: path.name)
def test_base_is_pinned_and_user_is_not_root(dockerfile):
    text = dockerfile.read_text()
    assert PINNED_PYTHON_BASE.search(text), (
        'BASE_IMAGE must default to a fully versioned python image'
    )
    assert all(
        line == 'FROM ${BASE_IMAGE}' or line == 'FROM ${BASE_IMAGE} AS build'
        for line in instructions(dockerfile)
        if line.startswith('FROM ')
    )
    [user] = [line for line in final_stage(dockerfile) if line.startswith('USER ')]
    assert user != 'USER 0' and re.fullmatch(r'USER \d+', user)


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda path: path.name)
def test_no_secret_is_baked_in(dockerfile):
    for line in instructions(dockerfile):
        if line.startswith(('ENV ', 'ARG ')):
            assert not re.search(r'TOKEN|SECRET|PASSWORD', line, re.I), line


@pytest.mark.parametrize('name, dockerfile', EXECUTOR_DOCKERFILES.items())
def test_executor_image_runs_its_config_as_the_export_expects(name, dockerfile):
    lines = final_stage(ROOT / dockerfile)
    assert 'WORKDIR /app' in lines
    assert f'COPY executors/{name}/config.yml executors/{name}/executor.py ./' in lines
    assert 'ENTRYPOINT ["jina"]' in lines
    assert 'CMD [' + ', '.join(f'"{arg}"' for arg in EXECUTOR_COMMAND) + ']' in lines
    [container] = [c for n, c in containers(built_manifests()) if n == name]
    assert container['command'] == ['jina']
    args = container['args']
    assert args[0] == 'executor' and args[args.index('--uses') + 1] == 'config.yml'
    assert args[args.index('--port') + 1] == '8080'


@pytest.mark.parametrize('dockerfile', EXECUTOR_DOCKERFILES.values())
def test_model_cache_is_a_volume_the_user_owns(dockerfile):
    lines = final_stage(ROOT / dockerfile)
    hf_home = re.search(r'HF_HOME=(\S+)', ' '.join(lines)).group(1)
    assert f'VOLUME {hf_home}' in lines
    assert any(f'mkdir {hf_home}' in line and 'chown 10001' in line for line in lines)


@pytest.mark.parametrize('name, dockerfile', EXECUTOR_DOCKERFILES.items())
def test_dependencies_install_before_the_code_is_copied(name, dockerfile):
    """Layer order: editing code must not re-run the dependency install."""
    lines = instructions(ROOT / dockerfile)
    requirements = lines.index(
        f'RUN pip install -r /src/executors/{name}/requirements.txt'
        + (' ${CUDA_LIBS}' if name == 'whisper' else '')
    )
    assert requirements < lines.index('COPY speech2image /src/speech2image')
    copied = {line.split()[1] for line in lines[:requirements] if line.startswith('COPY ')}
    for included in re.findall(
        r'^-r (\S+)', (ROOT / f'executors/{name}/requirements.txt').read_text(), re.M
    ):
        assert (Path('executors', name) / included).resolve().relative_to(
            ROOT.resolve()
        ).as_posix() in copied


def test_build_context_leaves_out_models_and_local_files():
    ignored = [
        line
        for line in (ROOT / '.dockerignore').read_text().splitlines()
        if line and not line.startswith('#')
    ]
    assert ignored[0] == '*', 'an allow-list: ignore everything, then name what the images copy'
    allowed = {line[1:].rstrip('/') for line in ignored if line.startswith('!')}
    copied = set()
    for dockerfile in DOCKERFILES:
        for line in instructions(dockerfile):
            if line.startswith('COPY ') and '--from=' not in line:
                copied.update(path.split('/')[0] for path in line.split()[1:-1])
    assert copied <= allowed and 'models' not in allowed
