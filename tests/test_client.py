"""The speech2image command-line client end to end against the running Flow."""

import io
import subprocess
import sys

from PIL import Image

from devtools.offline_flow import ASSETS, ROOT


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'speech2image.client', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audio_files_give_transcripts_and_pngs(running_flow, tmp_path):
    result = run_client(
        '--host',
        running_flow.grpc,
        '--out',
        str(tmp_path),
        '-n',
        '2',
        '--seed',
        '9',
        str(ASSETS / 'apple.wav'),
        str(ASSETS / 'lighthouse.wav'),
    )
    assert result.returncode == 0, result.stderr
    assert 'painting of a red apple on a wooden table' in result.stdout.lower()
    assert 'lighthouse' in result.stdout.lower()
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [
        '0-apple-0-seed9.png',
        '0-apple-1-seed10.png',
        '1-lighthouse-0-seed9.png',
        '1-lighthouse-1-seed10.png',
    ]
    for path in tmp_path.iterdir():
        assert Image.open(io.BytesIO(path.read_bytes())).size == (64, 64)
        assert str(path) in result.stdout


def test_typed_prompt_over_http(running_flow, tmp_path):
    result = run_client('--host', running_flow.http, '--out', str(tmp_path), '--text', 'a red boat')
    assert result.returncode == 0, result.stderr
    assert '[text] a red boat' in result.stdout
    assert len(list(tmp_path.glob('*.png'))) == 1


def test_transcribe_only_writes_no_images(running_flow, tmp_path):
    result = run_client(
        '--host',
        running_flow.grpc,
        '--out',
        str(tmp_path),
        '--transcribe-only',
        str(ASSETS / 'apple.wav'),
    )
    assert result.returncode == 0, result.stderr
    assert 'red apple' in result.stdout.lower()
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_server_error_is_shown_and_exit_code_is_nonzero(running_flow, tmp_path):
    result = run_client(
        '--host', running_flow.grpc, '--out', str(tmp_path), '--text', 'a cat', '--width', '100'
    )
    assert result.returncode == 1
    assert "parameter 'width' must be a multiple of 8, got 100" in result.stderr


def test_missing_file_is_a_usage_error(tmp_path):
    result = run_client(str(tmp_path / 'nope.wav'))
    assert result.returncode == 2
    assert 'no such audio file' in result.stderr
