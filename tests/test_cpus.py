"""The thread plan: CPUs from the affinity mask and the cgroup quota, shared by local replicas."""

import os
from types import SimpleNamespace

import pytest

from speech2image import cpus


def executor(replicas=None):
    """An object with jina's ``runtime_args`` as an Executor in a Flow has them."""
    return SimpleNamespace(runtime_args=SimpleNamespace(replicas=replicas))


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """Point the cgroup v2 and v1 files at ``tmp_path``; returns a writer for cpu.max."""
    monkeypatch.setattr(cpus, 'CGROUP_V2_CPU_MAX', tmp_path / 'cpu.max')
    monkeypatch.setattr(cpus, 'CGROUP_V1_QUOTA', tmp_path / 'missing')
    monkeypatch.delenv(cpus.OMP_THREADS_VARIABLE, raising=False)
    return lambda text: (tmp_path / 'cpu.max').write_text(text)


def test_the_cgroup_quota_caps_the_affinity(cgroup, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(8)))
    cgroup('max 100000\n')
    assert cpus.cgroup_cpu_quota() is None and cpus.available_cpus() == 8
    cgroup('150000 100000\n')  # 1.5 CPUs: rounded up
    assert cpus.cgroup_cpu_quota() == 1.5 and cpus.available_cpus() == 2
    cgroup('1600000 100000\n')  # a quota above the cores the process may run on
    assert cpus.available_cpus() == 8


def test_local_replicas_share_the_cpus_and_explicit_settings_win(cgroup, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(4)))
    cgroup('max 100000\n')
    assert cpus.thread_count(None, executor()) == 4
    assert cpus.thread_count(None, executor(replicas=2)) == 2
    assert cpus.thread_count(None, executor(replicas=8)) == 1
    assert cpus.thread_count(3, executor(replicas=2)) == 3
    monkeypatch.setenv(cpus.OMP_THREADS_VARIABLE, '1')
    assert cpus.thread_count(None, executor()) == 1
    with pytest.raises(ValueError, match='threads must be at least 1, got 0'):
        cpus.thread_count(0, executor())


def test_omp_num_threads_is_the_operators_choice(monkeypatch):
    monkeypatch.setenv(cpus.OMP_THREADS_VARIABLE, '3')
    assert cpus.thread_count(None, executor()) == 3


def test_the_flow_passes_only_the_threads_it_was_given():
    """Unset, each Executor takes its CPUs over its replicas itself (thread_count), in a local
    Flow as in a pod: the Flow plans no split between Whisper and diffusion."""
    import flow as flow_module

    args = flow_module.parse_args(['--diffusion-replicas', '2', '--whisper-threads', '5'])
    threads = {
        e['name']: e['uses_with'].get('threads') for e in flow_module.flow_spec(args)['executors']
    }
    assert threads == {'whisper': 5, 'stablediffusion': None}
