"""The DocArray v1 environment the original example runs in: a venv holding only docarray 0.21
(requirements.txt), which sees every other package of the running environment through a .pth
file, so both systems run the very same torch, diffusers, openai-whisper and jina builds.

    python -m bench.original_example.environment [PATH]     # made once; prints its python
"""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = ROOT / '.cache' / 'original-example-venv'
REQUIREMENTS = Path(__file__).with_name('requirements.txt')
PTH_NAME = 'speech2image-environment.pth'
READY_MARKER = '.ready'  # written last: a half-made environment is made again


def ensure_environment(path: Path = DEFAULT_PATH) -> Path:
    """The v1 environment at ``path`` (made if missing); returns its python."""
    python, ready = path / 'bin' / 'python', path / READY_MARKER
    if ready.exists():
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(
        [
            str(python),
            '-m',
            'pip',
            'install',
            '--quiet',
            '--no-deps',
            '--require-hashes',
            '-r',
            str(REQUIREMENTS),
        ],
        check=True,
    )
    site_packages = subprocess.run(
        [str(python), '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    # Added after the venv's own site-packages, so its docarray v1 shadows the project's v2.
    (Path(site_packages) / PTH_NAME).write_text(sysconfig.get_paths()['purelib'] + '\n')
    ready.touch()
    return python


if __name__ == '__main__':
    print(ensure_environment(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH))
