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


@pytest.mark.parametrize(
    'cores, whisper_replicas, diffusion_replicas, plan',
    [
        (2, 1, 1, (1, 1)),  # both busy at once use each core once
        (4, 1, 1, (1, 3)),
        (8, 1, 1, (2, 6)),
        (8, 1, 2, (2, 3)),
        (16, 2, 3, (2, 4)),
        (1, 1, 1, (1, 1)),  # one core: one thread each, however it is shared
    ],
)
def test_the_local_plan_splits_the_cores_between_the_model_processes(
    monkeypatch, cores, whisper_replicas, diffusion_replicas, plan
):
    monkeypatch.delenv(cpus.OMP_THREADS_VARIABLE, raising=False)
    assert cpus.local_thread_plan(cores, whisper_replicas, diffusion_replicas) == plan


def test_omp_num_threads_is_the_operators_choice(monkeypatch):
    monkeypatch.setenv(cpus.OMP_THREADS_VARIABLE, '3')
    assert cpus.local_thread_plan(8, 1, 1) == (None, None)
    assert cpus.thread_count(None, executor()) == 3


def test_the_flow_passes_the_plan_to_its_executors_but_not_to_the_yaml(monkeypatch):
    import flow as flow_module

    monkeypatch.delenv(cpus.OMP_THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(flow_module, 'available_cpus', lambda: 8)
    args = flow_module.parse_args(['--diffusion-replicas', '2', '--whisper-threads', '5'])
    planned = flow_module.flow_spec(flow_module.with_local_thread_plan(args))
    exported = flow_module.flow_spec(args)
    threads = {e['name']: e['uses_with'].get('threads') for e in planned['executors']}
    assert threads == {'whisper': 5, 'stablediffusion': 3}  # an explicit flag wins
    # The export keeps what was given, and plans nothing: pods take their own CPU limits.
    assert {e['name']: e['uses_with'].get('threads') for e in exported['executors']} == {
        'whisper': 5,
        'stablediffusion': None,
    }
