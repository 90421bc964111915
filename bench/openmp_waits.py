"""OpenMP waits, spinning against sleeping: the tiny pipeline's seconds per step in one process
alone and in two processes side by side (as Whisper and diffusion run in one Flow, or two
replicas), with each process's threads at one per core or one.

    python -m bench.openmp_waits [--steps 20] [--repeats 3]

Every configuration runs in fresh processes, since OpenMP reads ``OMP_WAIT_POLICY`` when it
loads. ACTIVE is libgomp's default behaviour (spin, then sleep), PASSIVE sleeps at once. Two
processes of spinning threads on shared cores stall each other at every barrier; in a Flow,
though, Whisper's work is short next to diffusion's, and bench.original_workload measures whether
splitting the cores between them pays (its ``split-cores`` configuration).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import machine_summary, markdown_table

ROOT = Path(__file__).resolve().parent.parent
TINY_SD = ROOT / 'models' / 'tiny-stable-diffusion'
HEADER = ['processes side by side', 'threads each', 'OMP_WAIT_POLICY', 'ms per step (median)']


def step_milliseconds(steps: int, repeats: int) -> float:
    """In this process: the tiny pipeline's median ms per step over ``repeats`` calls (after a
    warm-up call)."""
    import torch
    from diffusers import AutoPipelineForText2Image

    pipeline = AutoPipelineForText2Image.from_pretrained(TINY_SD, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    times = []
    for _ in range(repeats + 1):
        begin = time.perf_counter()
        with torch.inference_mode():
            pipeline(prompt=['a red apple'], num_inference_steps=steps)
        times.append((time.perf_counter() - begin) * 1000 / steps)
    return statistics.median(times[1:])


def run_side_by_side(processes: int, threads: int, policy: str, steps: int, repeats: int) -> float:
    """Start ``processes`` fresh measuring processes at once; the median of their figures."""
    env = {
        **os.environ,
        'OMP_NUM_THREADS': str(threads),
        'OMP_WAIT_POLICY': policy,
        'HF_HUB_OFFLINE': '1',
    }
    command = [sys.executable, '-m', 'bench.openmp_waits', '--measure', str(steps), str(repeats)]
    started = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    figures = [json.loads(process.communicate(timeout=1800)[0]) for process in started]
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--measure', nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(step_milliseconds(*args.measure)))
        return
    cores = len(os.sched_getaffinity(0))
    rows = []
    for processes in (1, 2):
        for threads in (cores, 1):
            for policy in ('ACTIVE', 'PASSIVE'):
                milliseconds = run_side_by_side(
                    processes, threads, policy, args.steps, args.repeats
                )
                rows.append([str(processes), str(threads), policy, f'{milliseconds:.1f}'])
    print(machine_summary())
    print(f'Load average before the last run: {os.getloadavg()}')
    print(markdown_table(HEADER, rows))


if __name__ == '__main__':
    main()
