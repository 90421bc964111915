"""Run every benchmark and print one markdown report (what the README's tables come from).

    make bench            # or: python bench/run.py
"""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = [
    ('Flow against in-process', ['flow_vs_inprocess.py']),
    ('Whisper backends', ['whisper_backends.py']),
]


def main() -> None:
    for title, command in BENCHMARKS:
        print(f'\n## {title}\n', flush=True)
        result = subprocess.run([sys.executable, str(BENCH / command[0]), *command[1:]],
                                stdout=subprocess.PIPE, text=True, check=True)
        print(result.stdout.strip(), flush=True)


if __name__ == '__main__':
    main()
