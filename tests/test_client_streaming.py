"""The streaming client (``speech2image.client.stream``) and the CLI's live results, over gRPC,
HTTP and WebSocket, against ``python flow.py`` on the offline models with an API key set: the
events in order, the transcript before the images, previews on disk, the same PNGs as the
one-request call, Ctrl-C cancelling on the server, and the key sent on every protocol."""

import asyncio
import io
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest
from PIL import Image

from devtools.offline_flow import ASSETS, ROOT, TINY_SD, free_ports, serve_flow_process
from speech2image import defaults
from speech2image.auth import API_KEY_ENV
from speech2image.client import EXIT_INTERRUPTED, ServiceError, stream
from speech2image.schema import SpeechDoc, StreamEvent
from tests.support import diffusion_metric, poll_until

PROTOCOLS = ('grpc', 'http', 'websocket')
API_KEY = secrets.token_hex(16)
START_SECONDS = 180
CLI_SECONDS = 120
# Enough steps that the images come seconds after the transcript, even on a busy machine.
STEPS = 30
# Long enough to be cancelled part way (the Executors' max_inference_steps).
LONG_STEPS = 100
SEED = 5
# A side whose four random-model PNGs make a done event over a mebibyte (above the default cap).
BIG_SIDE = 288
# The CLI names files after the prompt's first words: apple.wav's transcript is "painting of a
# red apple on a wooden table."
APPLE_NAME = 'painting-of-a-red-apple-on'
CANCELLED_METRIC = 'speech2image_diffusion_cancelled_requests_total'


@pytest.fixture(scope='module')
def keyed_flow(tmp_path_factory):
    """`python flow.py` on the offline models with S2I_API_KEY set. The random tiny model draws:
    its noise does not compress, so four 288 px PNGs make a done event over a mebibyte (the
    trained model's smooth pictures compress far below it); its default cap is 128 px."""
    log = tmp_path_factory.mktemp('streaming') / 'flow.log'
    with serve_flow_process(
        '--diffusion-model',
        str(TINY_SD),
        '--max-side',
        str(BIG_SIDE),
        env={API_KEY_ENV: API_KEY},
        log=log,
        wait_ready=wait_until_streaming,
    ) as running:
        yield running


def wait_until_streaming(running, process) -> None:
    """Until a keyed stream is answered: the readiness dry run carries no key."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, 'flow.py exited'
        try:
            collect(running.grpc, SpeechDoc(text='ready?'), {'num_inference_steps': 1}, API_KEY)
            return
        except (ServiceError, OSError):
            time.sleep(1)
    pytest.fail(f'flow.py did not stream within {START_SECONDS} s')


def collect(host: str, doc: SpeechDoc, parameters, api_key=API_KEY) -> List[StreamEvent]:
    """Every event of one stream."""

    async def events() -> List[StreamEvent]:
        return [event async for event in stream(host, doc, parameters, api_key)]

    return asyncio.run(asyncio.wait_for(events(), CLI_SECONDS))


class Cli:
    """The CLI in a process of its own; its stdout lines arrive on a queue as it prints them,
    its stderr (the progress bar) goes to a file."""

    def __init__(self, args: List[str], stderr_path: Path, api_key=API_KEY):
        env = {**os.environ, API_KEY_ENV: api_key}
        self.stderr_path = stderr_path
        with open(stderr_path, 'wb') as stderr:
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'speech2image.client', *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip('\n'))

    def next_line(self) -> str:
        return self.lines.get(timeout=CLI_SECONDS)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors='replace')

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=CLI_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f'the CLI did not exit within {CLI_SECONDS} s: {self.stderr()[-2000:]}')


def cli_args(flow, protocol: str, out: Path, *extra: str) -> List[str]:
    return [
        '--host',
        getattr(flow, protocol),
        '--out',
        str(out),
        '--steps',
        str(STEPS),
        '--seed',
        str(SEED),
        *extra,
        str(ASSETS / 'apple.wav'),
    ]


@pytest.fixture(scope='module')
def one_request_png(keyed_flow, tmp_path_factory) -> bytes:
    """The image the ordinary one-request call (--no-stream) makes for apple.wav."""
    out = tmp_path_factory.mktemp('no-stream')
    cli = Cli(cli_args(keyed_flow, 'grpc', out, '--no-stream'), out / 'stderr.txt')
    assert cli.wait() == 0, cli.stderr()
    return (out / f'{APPLE_NAME}-seed{SEED}.png').read_bytes()


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_stream_yields_every_event_in_order(keyed_flow, protocol):
    events = collect(
        getattr(keyed_flow, protocol),
        SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes()),
        {'num_inference_steps': 10, 'num_images': 2, 'seed': 1},
    )
    kinds = [event.event for event in events]
    assert kinds[:2] == ['accepted', 'transcript'] and kinds[-1] == 'done', kinds
    assert 'red apple' in events[1].text.lower()
    assert [e.step for e in events if e.event == 'progress'] == list(range(1, 11))
    previews = [e for e in events if e.event == 'preview']
    assert [e.step for e in previews] == [2, 4, 6, 8]
    for preview in previews:
        assert [image.tags['image'] for image in preview.images] == [0, 1]
        assert Image.open(io.BytesIO(preview.images[0].bytes_)).format == 'JPEG'
    done = events[-1]
    assert [image.tags['seed'] for image in done.images] == [1, 2]
    assert done.text == events[1].text


@pytest.mark.parametrize('protocol', ['http', 'websocket'])
def test_a_done_event_over_a_mebibyte_arrives_whole(keyed_flow, protocol):
    # Over the WebSocket library's default message bound (1 MiB) and aiohttp's line bound (64 KiB).
    side = BIG_SIDE
    parameters = {'num_images': 4, 'width': side, 'height': side, 'num_inference_steps': 1}
    done = collect(getattr(keyed_flow, protocol), SpeechDoc(text='a red apple'), parameters)[-1]
    assert sum(len(image.bytes_.to_base64()) for image in done.images) > defaults.MEBIBYTE
    for image in done.images:
        assert Image.open(io.BytesIO(image.bytes_)).size == (side, side)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_stream_raises_the_servers_message(keyed_flow, protocol):
    with pytest.raises(ServiceError, match="parameter 'width' must be a multiple of 8, got 100"):
        collect(getattr(keyed_flow, protocol), SpeechDoc(text='a cat'), {'width': 100})


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_the_api_key_is_sent_on_every_protocol(keyed_flow, protocol, tmp_path):
    host = getattr(keyed_flow, protocol)
    with pytest.raises(ServiceError, match='API key'):
        collect(host, SpeechDoc(text='a cat'), {'num_inference_steps': 1}, api_key='wrong-key')
    with pytest.raises(ServiceError, match='API key'):
        collect(host, SpeechDoc(text='a cat'), {'num_inference_steps': 1}, api_key=None)
    # The CLI takes the key from S2I_API_KEY: a wrong one is refused, the right one streams.
    args = ['--host', host, '--out', str(tmp_path), '--steps', '1', '--text', 'a cat']
    wrong = Cli(args, tmp_path / 'wrong.txt', api_key='wrong-key')
    assert wrong.wait() == 1
    assert 'API key' in ' '.join(wrong.stderr().split())
    right = Cli(args, tmp_path / 'right.txt')
    assert right.wait() == 0, right.stderr()
    assert len(list(tmp_path.glob('*.png'))) == 1


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_cli_prints_the_transcript_first_saves_previews_and_the_same_png(
    keyed_flow, one_request_png, protocol, tmp_path
):
    out, previews = tmp_path / 'out', tmp_path / 'previews'
    cli = Cli(cli_args(keyed_flow, protocol, out, '--previews', str(previews)), tmp_path / 'e.txt')
    first = cli.next_line()
    assert first == '[apple.wav] painting of a red apple on a wooden table.', cli.stderr()
    assert not out.exists(), 'the images were saved before the transcript was printed'
    assert cli.wait() == 0, cli.stderr()
    assert f'{STEPS}/{STEPS}' in cli.stderr()  # the bar counted the real steps
    expected = [f'{APPLE_NAME}-0-step{step}.jpg' for step in range(8, STEPS, 8)]
    assert sorted(path.name for path in previews.iterdir()) == sorted(expected)
    for path in previews.iterdir():
        assert Image.open(path).format == 'JPEG'
    assert (out / f'{APPLE_NAME}-seed{SEED}.png').read_bytes() == one_request_png


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_ctrl_c_cancels_the_generation_on_the_server(keyed_flow, protocol, tmp_path):
    before = diffusion_metric(keyed_flow, CANCELLED_METRIC)
    args = ['--host', getattr(keyed_flow, protocol), '--out', str(tmp_path / 'out')]
    cli = Cli([*args, '--steps', str(LONG_STEPS), '--text', 'a slow cat'], tmp_path / 'e.txt')
    poll_until(lambda: f'/{LONG_STEPS}' in cli.stderr(), CLI_SECONDS, 'no progress bar')
    cli.process.send_signal(signal.SIGINT)
    assert cli.wait() == EXIT_INTERRUPTED, cli.stderr()
    poll_until(
        lambda: diffusion_metric(keyed_flow, CANCELLED_METRIC) == before + 1,
        30,
        'the generation was not cancelled',
    )
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    'scheme, stream', [('grpc', True), ('http', True), ('ws', True), ('grpc', False)]
)
def test_an_unreachable_gateway_is_named_with_how_to_start_one(scheme, stream, tmp_path):
    [port] = free_ports(1)  # nothing listens there
    host = f'{scheme}://127.0.0.1:{port}'
    args = ['--host', host, '--out', str(tmp_path), '--text', 'a cat']
    cli = Cli(args if stream else [*args, '--no-stream'], tmp_path / 'e.txt')
    assert cli.wait() == 1
    stderr = cli.stderr()
    assert f'error: no speech2image gateway at 127.0.0.1:{port} (connection refused): ' in stderr
    assert 'start one with `make serve`' in stderr and 'Traceback' not in stderr, stderr
    assert 'pkg_resources' not in stderr and 'failed to connect' not in stderr, stderr
