"""How many CPU threads a model may use: the cores this process may run on, within the cgroup's
CPU quota when a container sets one (Kubernetes ``limits.cpu``, ``docker run --cpus``)."""

import math
import os
from pathlib import Path
from typing import Optional

CGROUP_V2_CPU_MAX = Path('/sys/fs/cgroup/cpu.max')
CGROUP_V1_QUOTA = Path('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')
CGROUP_V1_PERIOD = Path('/sys/fs/cgroup/cpu/cpu.cfs_period_us')
OMP_THREADS_VARIABLE = 'OMP_NUM_THREADS'


def cgroup_cpu_quota() -> Optional[float]:
    """CPUs the cgroup's quota allows (e.g. 1.5), or None when it sets no quota."""
    try:
        if CGROUP_V2_CPU_MAX.exists():
            quota, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
            return None if quota == 'max' else int(quota) / int(period)
        if CGROUP_V1_QUOTA.exists():
            quota = int(CGROUP_V1_QUOTA.read_text())
            return None if quota <= 0 else quota / int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """Cores this process may use: its affinity mask, capped by the cgroup quota (rounded up)."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def use_torch_threads(threads: int) -> None:
    """Give torch ``threads`` CPU threads; call it on the thread that runs the model, first."""
    import torch

    torch.set_num_threads(threads)


def thread_count(threads: Optional[int], executor) -> int:
    """``threads`` when given (at least 1); else ``OMP_NUM_THREADS`` when the environment sets
    it; else an equal share of the available CPUs for each of the jina replicas of
    ``executor`` started beside it. A local Flow starts its replicas on one machine; on
    Kubernetes each replica is a pod of its own, started as one replica."""
    if threads is None and os.environ.get(OMP_THREADS_VARIABLE):
        threads = int(os.environ[OMP_THREADS_VARIABLE])
    if threads is None:
        replicas = getattr(executor.runtime_args, 'replicas', None) or 1
        return max(1, available_cpus() // replicas)
    if threads < 1:
        raise ValueError(f'threads must be at least 1, got {threads}')
    return threads
