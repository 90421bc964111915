"""Printing helpers shared by the benchmarks: the machine and versions, and markdown tables."""

import os
import platform
from importlib.metadata import version
from typing import List

PACKAGES = ('jina', 'docarray', 'torch', 'faster-whisper', 'diffusers', 'ctranslate2')


def machine_summary() -> str:
    """One line naming the machine and the versions a figure depends on."""
    versions = ', '.join(f'{name} {version(name)}' for name in PACKAGES)
    return (
        f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python '
        f'{platform.python_version()}; {versions}'
    )


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)
