"""The set-up's choice of Python (scripts/find_python.sh, the Makefile's PYTHON) on machines whose
python3 is 3.12 or 3.13: it picks a Python 3.11 (beside it on PATH, or through uv), or it stops
with one line saying what is needed, before anything is installed.

Each case runs the script (or make) with a PATH built in tmp_path from real interpreters, and
nothing else on it but bash and, where the case says so, uv."""

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIND_PYTHON = ROOT / 'scripts' / 'find_python.sh'
MAKE = shutil.which('make')
UV = Path(sys.executable).parent / 'uv'  # requirements-dev.txt pins it
NEWER_PYTHONS = ['3.12', '3.13']
SCRIPT_TIMEOUT_S = 60
# The one line's parts: what is needed, why, and the command that gets it.
NEEDS = 'speech2image needs Python 3.11'
WHY = 'jina 3.34 does not run on Python 3.12 or newer'
UV_PIN = next(
    line.strip()
    for line in (ROOT / 'requirements-dev.txt').read_text().splitlines()
    if line.startswith('uv==')
)
GET_IT = f'pipx install {UV_PIN} && uv python install 3.11'


@lru_cache(maxsize=None)
def interpreter(version: str) -> Optional[Path]:
    """The real executable of an installed Python ``version`` ('3.12'), found the way uv finds
    one or among pyenv's versions; None where this machine has none."""
    found = subprocess.run(
        [str(UV), 'python', 'find', '--system', '--no-project', version],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    ).stdout.split()
    pyenv_root = os.environ.get('PYENV_ROOT', str(Path.home() / '.pyenv'))
    found += sorted(glob.glob(f'{pyenv_root}/versions/{version}.*/bin/python{version}'))
    for candidate in found:
        ran = subprocess.run(
            [
                candidate,
                '-c',
                'import sys, platform; print(sys.executable, platform.python_version())',
            ],
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )
        if ran.returncode == 0 and ran.stdout.split()[1].startswith(version + '.'):
            return Path(ran.stdout.split()[0])
    return None


def required_interpreter(version: str) -> Path:
    """interpreter(version), skipping the test where this machine has no such Python."""
    path = interpreter(version)
    if path is None:
        pytest.skip(f'no Python {version} on this machine to put on the test PATH')
    return path


def python_version_of(executable: str) -> str:
    """'3.11' for a Python 3.11 executable."""
    return subprocess.run(
        [executable, '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'],
        capture_output=True,
        text=True,
        check=True,
        timeout=SCRIPT_TIMEOUT_S,
    ).stdout.strip()


def make_path(tmp_path: Path, links: Dict[str, Path]) -> Path:
    """A bin directory holding bash and the given links (name -> target), the whole PATH."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, target in {'bash': Path(shutil.which('bash')), **links}.items():
        (bin_dir / name).symlink_to(target)
    return bin_dir


def isolated_env(tmp_path: Path, bin_dir: Path, downloads_json: Optional[Path] = None) -> dict:
    """Only PATH, a fresh HOME and, for uv, its own install, cache and download list in tmp_path:
    nothing from this machine's Pythons, pyenv or uv reaches the script."""
    env = {
        'PATH': str(bin_dir),
        'HOME': str(tmp_path / 'home'),
        'UV_NO_CONFIG': '1',
        'UV_CACHE_DIR': str(tmp_path / 'uv-cache'),
        'UV_PYTHON_INSTALL_DIR': str(tmp_path / 'uv-python'),
        'UV_PYTHON_BIN_DIR': str(tmp_path / 'uv-bin'),
    }
    if downloads_json is not None:
        env['UV_PYTHON_DOWNLOADS_JSON_URL'] = downloads_json.as_uri()
    return env


def run(command: List[str], env: dict) -> subprocess.CompletedProcess:
    """Runs ``command`` from the repository root (its .venv is a 3.11 the script must not take)."""
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
    )


def assert_the_line_first(stderr: str, newer: str) -> None:
    """The first line says what is needed, why, which python3 is here and how to get a 3.11."""
    first = stderr.splitlines()[0]
    assert first.startswith(NEEDS), stderr
    assert WHY in first and GET_IT in first and f'python3 here: Python {newer}.' in first, first


def standalone_python_download(tmp_path: Path, real_311: Path) -> Path:
    """A uv download list (the JSON `uv python install` reads) offering one CPython 3.11 as a local
    tarball: a stand-in for python-build-standalone's, whose python3.11 runs ``real_311``."""
    root = tmp_path / 'download' / 'python'
    (root / 'bin').mkdir(parents=True)
    (root / 'bin' / 'python3.11').write_text(f'#!/bin/sh\nexec {real_311} "$@"\n')
    (root / 'bin' / 'python3.11').chmod(0o755)
    (root / 'bin' / 'python3').symlink_to('python3.11')
    (root / 'lib' / 'python3.11').mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()['stdlib'])  # uv patches the build's sysconfig data
    for sysconfig_data in stdlib.glob('_sysconfigdata_*.py'):
        shutil.copy(sysconfig_data, root / 'lib' / 'python3.11')
    tarball = tmp_path / 'download' / 'cpython-3.11.7.tar.gz'
    with tarfile.open(tarball, 'w:gz') as archive:
        archive.add(root, arcname='python')
    key = f'cpython-3.11.7-linux-{platform.machine()}-gnu'
    downloads = {
        key: {
            'name': 'cpython',
            'arch': {'family': platform.machine(), 'variant': None},
            'os': 'linux',
            'libc': 'gnu',
            'major': 3,
            'minor': 11,
            'patch': 7,
            'prerelease': '',
            'url': tarball.as_uri(),
            'sha256': hashlib.sha256(tarball.read_bytes()).hexdigest(),
            'variant': None,
            'build': '20240107',
        }
    }
    listing = tmp_path / 'download' / 'downloads.json'
    listing.write_text(json.dumps(downloads))
    return listing


@pytest.mark.parametrize('newer', NEWER_PYTHONS)
def test_newer_python3_alone_stops_with_the_line(tmp_path, newer):
    """python3 is 3.12/3.13 and no 3.11 exists: exit 1, nothing on stdout, the one line."""
    bin_dir = make_path(tmp_path, {'python3': required_interpreter(newer)})
    result = run([str(FIND_PYTHON)], isolated_env(tmp_path, bin_dir))
    assert result.returncode == 1 and result.stdout == '', result
    assert_the_line_first(result.stderr, newer)
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize('newer', NEWER_PYTHONS)
def test_picks_python311_beside_newer_python3(tmp_path, newer):
    """python3 is 3.12/3.13 and python3.11 is on PATH: the script prints the 3.11."""
    links = {'python3': required_interpreter(newer), 'python3.11': required_interpreter('3.11')}
    result = run([str(FIND_PYTHON)], isolated_env(tmp_path, make_path(tmp_path, links)))
    assert result.returncode == 0, result
    assert python_version_of(result.stdout.strip()) == '3.11'


def test_picks_python3_when_it_is_311(tmp_path):
    """python3 is a 3.11 (these machines, CI): the script prints it, as make always took it."""
    bin_dir = make_path(tmp_path, {'python3': required_interpreter('3.11')})
    result = run([str(FIND_PYTHON)], isolated_env(tmp_path, bin_dir))
    assert result.returncode == 0, result
    assert Path(result.stdout.strip()) == bin_dir / 'python3'
    assert python_version_of(result.stdout.strip()) == '3.11'


def test_uv_installs_a_python311(tmp_path):
    """python3 is 3.12, no 3.11 anywhere, uv on PATH: uv installs one and the script prints it."""
    downloads = standalone_python_download(tmp_path, required_interpreter('3.11'))
    bin_dir = make_path(tmp_path, {'python3': required_interpreter('3.12'), 'uv': UV})
    result = run([str(FIND_PYTHON)], isolated_env(tmp_path, bin_dir, downloads))
    assert result.returncode == 0, result
    assert python_version_of(result.stdout.strip()) == '3.11'
    assert list((tmp_path / 'uv-python').glob('cpython-3.11.7-*')), 'uv did not install it'
    assert 'Installed Python 3.11.7' in result.stderr


def test_uv_without_a_download_stops_with_the_line(tmp_path):
    """uv on PATH but it can get no 3.11 (no download for it): the line first, then uv's reason;
    the repository's own .venv (a 3.11) is not taken."""
    no_downloads = tmp_path / 'no-downloads.json'
    no_downloads.write_text('{}')
    bin_dir = make_path(tmp_path, {'python3': required_interpreter('3.12'), 'uv': UV})
    result = run([str(FIND_PYTHON)], isolated_env(tmp_path, bin_dir, no_downloads))
    assert result.returncode == 1 and result.stdout == '', result
    assert_the_line_first(result.stderr, '3.12')
    assert 'uv python install 3.11 failed: ' in result.stderr.splitlines()[1]


@pytest.mark.parametrize('target', ['install', 'demo', 'test'])
def test_make_stops_before_installing(tmp_path, target):
    """`make install/demo/test` with only a 3.12: the line is the first output, make fails, no
    venv exists and no recipe line ran (make echoes each one on stdout before running it): not
    pip, nor the apt-get of `make test`'s system-deps."""
    venv = tmp_path / 'venv'
    bin_dir = make_path(tmp_path, {'python3': required_interpreter('3.12')})
    result = run([MAKE, target, f'VENV={venv}'], isolated_env(tmp_path, bin_dir))
    assert result.returncode != 0 and result.stdout == '', result
    assert_the_line_first(result.stderr, '3.12')
    assert 'Stop.' in result.stderr.splitlines()[1] and not venv.exists()


def test_make_install_makes_the_venv_from_the_picked_python(tmp_path):
    """`make install` (dry run) makes the venv from the 3.11 the script picks; PYTHON= overrides."""
    venv = tmp_path / 'venv'
    links = {'python3': required_interpreter('3.12'), 'python3.11': required_interpreter('3.11')}
    env = isolated_env(tmp_path, make_path(tmp_path, links))
    picked = run([str(FIND_PYTHON)], env).stdout.strip()
    dry_run = run([MAKE, '--dry-run', 'install', f'VENV={venv}'], env)
    assert dry_run.stdout.splitlines()[0] == f'{picked} -m venv {venv}', dry_run
    given = Path(env['PATH']) / 'python3.11'
    chosen = run([MAKE, '--dry-run', 'install', f'VENV={venv}', f'PYTHON={given}'], env)
    assert chosen.stdout.splitlines()[0] == f'{given} -m venv {venv}', chosen


@pytest.mark.parametrize('how', ['command line', 'environment'])
def test_make_checks_a_given_python_at_once(tmp_path, how):
    """`make PYTHON=python3.12 demo` (or PYTHON in the environment): the same line at once,
    naming the Python given; make fails before any recipe line, and no venv exists."""
    venv = tmp_path / 'venv'
    bin_dir = make_path(tmp_path, {'python3.12': required_interpreter('3.12')})
    env = isolated_env(tmp_path, bin_dir)
    if how == 'environment':
        result = run([MAKE, 'demo', f'VENV={venv}'], {**env, 'PYTHON': 'python3.12'})
    else:
        result = run([MAKE, 'PYTHON=python3.12', 'demo', f'VENV={venv}'], env)
    assert result.returncode != 0 and result.stdout == '', result
    first = result.stderr.splitlines()[0]
    assert first.startswith(NEEDS) and WHY in first and GET_IT in first, first
    assert 'python3.12 here: Python 3.12.' in first, first
    assert 'Stop.' in result.stderr.splitlines()[1] and not venv.exists()
