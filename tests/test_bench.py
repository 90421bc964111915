"""The cheap benchmarks run end to end and print docs/benchmarks.md's tables, so `make bench`
does not rot. Sizes are checked (they are facts of the encodings); timings are not."""

import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

from bench.original_example import CHECKOUT_VARIABLE, ensure_environment
from devtools.offline_flow import ROOT


def run_bench(module: str, *args: str, python: str = sys.executable) -> str:
    return subprocess.run(
        [python, '-m', module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout


def table_rows(output: str, first_header: str) -> List[Dict[str, str]]:
    """The rows of the markdown table whose first column is ``first_header``, as dicts."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {first_header} |'))
    header = [cell.strip() for cell in lines[start].strip('|').split('|')]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith('|'):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip('|').split('|')))))
    return rows


def number(text: str) -> float:
    return float(text.replace(',', '').rstrip('x'))


def test_payloads_compare_every_form():
    output = run_bench('bench.payloads', '--repeats', '1', '--side', '128')
    assert output.startswith('Machine: ')
    audio = {row['audio as']: row for row in table_rows(output, 'audio as')}
    wav, float32 = audio['WAV file (16-bit PCM)'], audio['float32 tensor']
    assert number(audio['Ogg/Opus file']['gRPC request bytes']) < number(wav['gRPC request bytes'])
    assert number(audio['int16 tensor']['gRPC request bytes']) < number(
        float32['gRPC request bytes']
    )
    # JSON writes each sample as a decimal number: several times the binary size.
    assert number(float32['HTTP request bytes']) > 2 * number(float32['gRPC request bytes'])
    images = table_rows(output, 'image')
    assert {row['format'] for row in images} == {'float32 tensor', 'PNG', 'JPEG', 'WEBP'}
    assert all(
        number(row['vs float32 tensor']) < 1 for row in images if row['format'] != 'float32 tensor'
    )


def test_steps_reports_each_step_count():
    output = run_bench(
        'bench.steps', '--steps', '1', '2', '--batch-sizes', '1', '2', '--repeats', '1'
    )
    rows = table_rows(output, 'model')
    assert [(row['steps'], row['batch']) for row in rows] == [
        ('1', '1'),
        ('1', '2'),
        ('2', '1'),
        ('2', '2'),
    ]
    assert all(
        row['model'] == 'tiny-stable-diffusion' and number(row['images/s']) > 0 for row in rows
    )


def test_streaming_times_each_milestone_in_order():
    output = run_bench(
        'bench.streaming', '--requests', '1', '--repeats', '1', '--steps', '4', '--protocol', 'http'
    )
    rows = table_rows(output, 'concurrency')
    assert [row['concurrency'] for row in rows] == ['1', '4']
    for row in rows:
        transcript, preview, images = (
            number(row[f'to the {name} (ms)'])
            for name in ('transcript', 'first preview', 'final images')
        )
        assert 0 < transcript < preview < images, row
    cost = table_rows(output, 'previews')
    assert [row['throughput against none'] for row in cost][0] == '1.00x'
    assert number(cost[1]['streams/s']) > 0


@pytest.mark.skipif(
    not os.environ.get(CHECKOUT_VARIABLE),
    reason=f'{CHECKOUT_VARIABLE} names no checkout of the original example (docs/benchmarks.md)',
)
def test_the_original_example_answers_in_its_docarray_v1_environment():
    """bench.original_workload's outside reference runs: the original example's own flow.py and
    Executors, from the checkout, under DocArray v1, load this machine's models and answer ``/``
    with two images per clip (the runner asserts the images; a broken patch, checkout or
    environment fails the run)."""
    python = str(ensure_environment())
    docarray_version = subprocess.run(
        [python, '-c', 'import docarray; print(docarray.__version__)'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert docarray_version.startswith('0.21.'), docarray_version
    output = run_bench('bench.original_example', '--requests', '1', python=python)
    figures = json.loads(output.strip().splitlines()[-1])
    assert figures['latency_s'] > 0 and figures['rps'] > 0 and figures['rss_mb'] > 0, figures


def test_whisper_batching_compares_both_paths_on_the_same_clips():
    output = run_bench('bench.whisper_batching', '--batch-sizes', '3', '--repeats', '1')
    [row] = table_rows(output, 'clips')
    assert row['clips'] == '3' and row['same transcripts'] == 'yes', row
    assert number(row['one at a time (s)']) > 0 and number(row['one batched decode (s)']) > 0
