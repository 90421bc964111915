"""Shared fixtures: the offline models, and the real Flow from flow.py served on 127.0.0.1."""

import os
from pathlib import Path
from typing import Iterator

from devtools import OFFLINE_ENVIRONMENT

# Before jina, huggingface_hub or numpy are imported: no telemetry, and no model hub at all.
os.environ.update(OFFLINE_ENVIRONMENT)
# One OpenMP thread: jina forks the Executor processes from this one, and forking a process
# whose OpenMP thread pool already ran (the in-process Executor tests) deadlocks the child.
os.environ['OMP_NUM_THREADS'] = '1'

import pytest

from devtools import offline_models
from devtools.offline_flow import MODELS, RunningFlow, serve_flow

OPENAI_WHISPER_TINY_EN = MODELS / offline_models.OPENAI_WHISPER_FILE


# Markers by test file (pyproject.toml lists them); every test of the shared Flow is slow too.
MODULE_MARKERS = {
    'test_semantics': ('slow',),
    'test_autoscaling_cold_start': ('slow',),
    'test_autoscaling_manifests': ('k8s',),
    'test_autoscaling_metric': ('slow',),
    'test_autoscaling_simulation': ('slow', 'k8s'),
    'test_batching': ('slow',),
    'test_bench': ('slow',),
    'test_client_streaming': ('slow',),
    'test_conversation_pixels': ('slow',),
    'test_k8s': ('k8s',),
    'test_k8s_images': ('k8s',),
    'test_k8s_load_sharing': ('slow', 'k8s'),
    'test_meaning_kept': ('slow',),
    'test_monitoring': ('slow',),
    'test_multilingual': ('slow', 'browser'),
    'test_reliability': ('slow',),
    'test_request_endings': ('slow',),
    'test_run_containers': ('k8s',),
    'test_security': ('slow',),
    'test_security_deploy': ('k8s',),
    'test_setup_python': ('slow',),
    'test_stopping': ('slow',),
    'test_tracing': ('slow',),
    'test_web': ('slow', 'browser'),
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        names = MODULE_MARKERS.get(item.module.__name__.rpartition('.')[2], ())
        if 'running_flow' in getattr(item, 'fixturenames', ()):
            names = (*names, 'slow')
        for name in names:
            item.add_marker(name)


@pytest.fixture(scope='session', autouse=True)
def offline_model_files() -> Path:
    """Build the offline models once (``make models`` has usually done it already)."""
    offline_models.build_all(MODELS)
    return MODELS


@pytest.fixture(scope='session')
def running_flow(offline_model_files) -> Iterator[RunningFlow]:
    """One Flow shared by the tests that only send requests to it."""
    with serve_flow() as running:
        yield running
