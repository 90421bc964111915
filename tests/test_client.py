"""The speech2image command-line client end to end against the running Flow."""

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from devtools.offline_flow import ASSETS, ROOT, model_flags


def run_client(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'speech2image.client', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_audio_files_give_transcripts_and_pngs_named_after_the_prompt(running_flow, tmp_path):
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
        'an-oil-painting-and-the-light-seed10.png',
        'an-oil-painting-and-the-light-seed9.png',
        'painting-of-a-red-apple-on-seed10.png',
        'painting-of-a-red-apple-on-seed9.png',
    ]
    for path in tmp_path.iterdir():
        assert Image.open(io.BytesIO(path.read_bytes())).size == (64, 64)
        assert str(path) in result.stdout
    # Which model drew them, by name: the shared Flow's.
    flags = model_flags()
    served = Path(flags[flags.index('--diffusion-model') + 1]).name
    assert f'drawn by {served}' in result.stdout


def test_typed_prompt_over_http(running_flow, tmp_path):
    result = run_client('--host', running_flow.http, '--out', str(tmp_path), '--text', 'a red boat')
    assert result.returncode == 0, result.stderr
    assert '[text] a red boat' in result.stdout
    assert [path.name.rpartition('-seed')[0] for path in tmp_path.glob('*.png')] == ['a-red-boat']


def test_typed_prompts_are_read_for_settings_under_the_flags(running_flow, tmp_path):
    """A typed command goes through the rules spoken ones do: its prompt is drawn, its settings
    are used, and a flag still wins over what the words say."""
    command = 'Jarvis, paint me two pictures of a red boat, seed 7'
    parsed = run_client('--host', running_flow.grpc, '--out', str(tmp_path), '--text', command)
    assert parsed.returncode == 0, parsed.stderr
    assert '[text] a red boat' in parsed.stdout
    assert 'from the prompt: num_images 2, seed 7' in parsed.stdout
    flag_wins = run_client(
        '--host', running_flow.grpc, '--out', str(tmp_path), '--seed', '3', '--text', command
    )
    assert flag_wins.returncode == 0, flag_wins.stderr
    word_for_word = run_client(
        '--host',
        running_flow.grpc,
        '--out',
        str(tmp_path),
        '--seed',
        '1',
        '--no-spoken-settings',
        '--text',
        command,
    )
    assert word_for_word.returncode == 0, word_for_word.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        'a-red-boat-seed3.png',
        'a-red-boat-seed4.png',
        'a-red-boat-seed7.png',
        'a-red-boat-seed8.png',
        'jarvis-paint-me-two-pictures-of-seed1.png',
    ]


def test_files_are_never_overwritten_without_the_flag(running_flow, tmp_path):
    args = ('--host', running_flow.grpc, '--out', str(tmp_path), '--seed', '4', '--text', 'a cat')
    first, second = run_client(*args), run_client(*args)
    assert first.returncode == second.returncode == 0, second.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        'a-cat-seed4-2.png',
        'a-cat-seed4.png',
    ]
    assert str(tmp_path / 'a-cat-seed4-2.png') in second.stdout
    original = (tmp_path / 'a-cat-seed4.png').read_bytes()
    (tmp_path / 'a-cat-seed4.png').write_bytes(b'not an image')
    replaced = run_client(*args, '--overwrite')
    assert replaced.returncode == 0, replaced.stderr
    assert (tmp_path / 'a-cat-seed4.png').read_bytes() == original
    assert len(list(tmp_path.iterdir())) == 2


def test_the_client_reads_the_servers_port_variable_and_shows_its_default(running_flow, tmp_path):
    """A Flow moved with S2I_PORT_GRPC is found with the same variable, no --host needed."""
    port = {'S2I_PORT_GRPC': str(running_flow.port_grpc)}
    result = run_client('--out', str(tmp_path), '--steps', '1', '--text', 'a cat', env=port)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob('*.png'))) == 1
    shown = ' '.join(run_client('--help', env=port).stdout.split())
    assert f'gateway address (default: grpc://127.0.0.1:{running_flow.port_grpc}' in shown


def test_integers_are_shown_as_integers(running_flow, tmp_path):
    """gRPC carries -n 9 as the double 9.0; the person typed 9."""
    for extra in ((), ('--no-stream',)):
        result = run_client(
            '--host',
            running_flow.grpc,
            '--out',
            str(tmp_path),
            '-n',
            '9',
            '--text',
            'a cat',
            *extra,
        )
        assert result.returncode == 1
        assert "parameter 'num_images' must be between 1 and 4, got 9" in result.stderr
        assert '9.0' not in result.stderr


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


def test_a_translated_transcript_shows_the_words_as_heard_and_the_english():
    from speech2image.client import heard_lines
    from speech2image.schema import SpeechDoc

    doc = SpeechDoc(
        text='a boat on the sea',
        tags={
            'transcript': 'a boat on the sea',
            'source_transcript': 'un barco en el mar',
            'language': 'es',
            'language_probability': 0.9,
        },
    )
    lines = heard_lines(doc)
    assert lines[0] == '  heard (es, 90%): un barco en el mar'
    assert 'a boat on the sea' in lines[1]
