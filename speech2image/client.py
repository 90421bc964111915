"""Command-line client: send spoken (or typed) prompts to a speech2image Flow, save the images.

    speech2image assets/apple.wav                       # speech -> transcript + images in out/
    speech2image --text "a lighthouse at dusk" -n 2     # typed prompt
    speech2image --host grpcs://s2i.example.com:443 talk.webm
    speech2image --transcribe-only talk.ogg             # stop after Whisper
    speech2image --previews previews/ talk.wav          # also save the previews as they come

The address takes grpc://, grpcs://, http://, https://, ws:// or wss://. A gateway that requires
an API key gets it from the S2I_API_KEY environment variable.

Images are streamed (the gateway's /stream call, one document at a time): the transcript is
printed as soon as Whisper has it, a bar shows the denoising steps, and Ctrl-C cancels the
generation on the server. --no-stream sends every document in one ordinary request instead.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional, Tuple

from speech2image import defaults
from speech2image.auth import api_key_from_environment, authorization_header
from speech2image.gateway_errors import read_gateway_error
from speech2image.schema import SpeechDoc, StreamEvent, StreamRequest
from speech2image.streaming import FINAL_EVENTS

DEFAULT_HOST = f'grpc://{defaults.HOST}:{defaults.PORT_GRPC}'
DEFAULT_OUT_DIR = Path('out')
# Addresses whose client sends HTTP headers; the others (grpc, grpcs, none) send gRPC metadata.
HEADER_SCHEMES = ('http', 'https', 'ws', 'wss', 'websocket')
# Ports of an address that names none, as browsers and jina's Client take them.
DEFAULT_PORTS = {False: 80, True: 443}
# gRPC messages of any size: a done event carries every final image (jina's own channels
# lift the limit too).
GRPC_UNLIMITED_MESSAGES = (
    ('grpc.max_send_message_length', -1),
    ('grpc.max_receive_message_length', -1),
)
# Server-Sent Events: the separator between two events, and the field that carries the JSON.
SSE_EVENT_SEPARATOR = b'\n\n'
SSE_DATA_FIELD = b'data:'
# Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class ServiceError(RuntimeError):
    """The service refused or failed a request; the message is the server's explanation."""


def server_error_message(error: Exception) -> str:
    """The server's own words from a failed jina request, without the transport's wrapping.

    Errors in an answer carry its response header (gRPC, WebSocket) or the gateway's
    ``{'detail': message}`` (HTTP); a call the gateway refused carries its gRPC status, which jina
    wraps in an exception of its own.
    """
    import grpc

    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, grpc.RpcError) and callable(getattr(cause, 'details', None)):
            return cause.details()
    header = error.args[0] if error.args else None
    status = getattr(header, 'status', None)
    if status is not None:
        if status.exception.args:
            return status.exception.args[0]
        return status.description
    if isinstance(header, dict) and 'detail' in header:
        return read_gateway_error(header).message
    return str(error)


def make_docs(audio_files: List[Path], texts: List[str]) -> List[SpeechDoc]:
    """One document per audio file (sent as encoded bytes) and per typed prompt."""
    docs = [SpeechDoc(bytes_=path.read_bytes(), tags={'source': path.name}) for path in audio_files]
    docs += [SpeechDoc(text=text, tags={'source': 'text'}) for text in texts]
    return docs


def endpoint_for(docs: List[SpeechDoc], transcribe_only: bool) -> str:
    if transcribe_only:
        return '/transcribe'
    return '/' if any(doc.has_audio() for doc in docs) else '/generate'


def credentials(host: str, api_key: Optional[str]) -> Dict:
    """The ``post`` keyword that sends ``Authorization: Bearer <api_key>``: gRPC metadata, or an
    HTTP/WebSocket header. Empty without a key."""
    if not api_key:
        return {}
    authorization = authorization_header(api_key)
    if host.partition('://')[0] in HEADER_SCHEMES:
        return {'headers': {'Authorization': authorization}}
    return {'metadata': (('authorization', authorization),)}


def send(
    host: str, endpoint: str, docs: List[SpeechDoc], parameters: Dict, api_key: Optional[str] = None
) -> List[SpeechDoc]:
    """Post documents to the Flow at ``host`` and return the answered documents.

    Raises ``ServiceError`` with the server's message when the request fails.
    """
    from docarray import DocList
    from jina import Client

    client = Client(host=host)
    try:
        return client.post(
            endpoint,
            inputs=DocList[SpeechDoc](docs),
            parameters=parameters,
            return_type=DocList[SpeechDoc],
            # One request: jina's default splits more than 100 documents into several, and the
            # server would number a bad document by its place in its own request.
            request_size=max(len(docs), 1),
            **credentials(host, api_key),
        )
    except Exception as error:
        raise ServiceError(server_error_message(error)) from None


def stream_address(host: str) -> Tuple[str, str, bool]:
    """``host`` as (protocol, ``host:port``, TLS), read as jina's Client reads it: grpc, http or
    websocket; no scheme is gRPC, and no port is the scheme's usual one."""
    from jina.helper import parse_host_scheme

    hostname, port, scheme, tls = parse_host_scheme(host)
    return scheme or 'grpc', f'{hostname}:{port or DEFAULT_PORTS[bool(tls)]}', bool(tls)


async def stream(
    host: str, doc: SpeechDoc, parameters: Dict, api_key: Optional[str] = None
) -> AsyncIterator[StreamEvent]:
    """The gateway's ``/stream`` call for one document (audio or a typed prompt), over the
    protocol ``host``'s scheme names: its events as they come (accepted, transcript, progress,
    preview, then done or cancelled), the same ``StreamEvent``s on every protocol.

    A refusal (before any event) or an error event raises ``ServiceError`` with the server's
    message. Closing the generator early (``aclose``, a cancelled task, Ctrl-C under
    ``asyncio.run``) closes the connection, which the gateway turns into a cancel."""
    protocol, address, tls = stream_address(host)
    request = StreamRequest(**doc.model_dump(exclude={'id', 'matches'}), parameters=parameters)
    transports = {'grpc': grpc_events, 'http': http_events, 'websocket': websocket_events}
    authorization = credentials(host, api_key)
    async for event in transports[protocol](address, tls, request, authorization):
        if event.event == 'error':
            raise ServiceError(event.message)
        yield event
        if event.event in FINAL_EVENTS:
            return


def stream_body(request: StreamRequest) -> Dict:
    """``request`` as the JSON body of ``POST /stream`` and the WebSocket's one message."""
    document = json.loads(request.model_dump_json(exclude_none=True, exclude={'id', 'parameters'}))
    return {'data': [document], 'parameters': request.parameters}


async def grpc_events(
    address: str, tls: bool, request: StreamRequest, authorization: Dict
) -> AsyncIterator[StreamEvent]:
    """jina's ``stream_doc`` call with endpoint '/stream', ``authorization`` (``credentials``)
    as its metadata: jina's ``Client.stream_doc`` sends none."""
    import grpc
    from jina.proto import jina_pb2_grpc
    from jina.types.request.data import SingleDocumentRequest

    single = SingleDocumentRequest()
    single.header.exec_endpoint = defaults.STREAM_ENDPOINT
    single.document_cls = StreamRequest
    single.data.doc = request
    if tls:
        channel = grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(), options=GRPC_UNLIMITED_MESSAGES
        )
    else:
        channel = grpc.aio.insecure_channel(address, options=GRPC_UNLIMITED_MESSAGES)
    async with channel:
        call = jina_pb2_grpc.JinaSingleDocumentRequestRPCStub(channel).stream_doc(
            single, metadata=authorization.get('metadata')
        )
        try:
            async for response in call:
                response.document_cls = StreamEvent
                yield response.data.doc
        except grpc.aio.AioRpcError as error:
            raise ServiceError(error.details()) from None


async def http_events(
    address: str, tls: bool, request: StreamRequest, authorization: Dict
) -> AsyncIterator[StreamEvent]:
    """``POST /stream``, its answer read as Server-Sent Events. Each of the gateway's events is
    one ``data:`` line of JSON; a done event's line holds every image, so the body is split on
    the event separator rather than read line by line (aiohttp bounds a line at 64 KiB)."""
    import aiohttp

    url = f'{"https" if tls else "http"}://{address}{defaults.STREAM_ENDPOINT}'
    # No total timeout: a stream lasts as long as its generation; the gateway bounds it.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        try:
            async with session.post(
                url, json=stream_body(request), headers=authorization.get('headers')
            ) as response:
                if response.status != 200:
                    raise ServiceError(await http_error_message(response))
                pending = b''
                async for chunk in response.content.iter_any():
                    *events, pending = (pending + chunk).split(SSE_EVENT_SEPARATOR)
                    for event in events:
                        yield server_sent_event_data(event)
        except aiohttp.ClientError as error:
            raise ServiceError(f'cannot stream from {url}: {error}') from None


async def http_error_message(response) -> str:
    """The server's words from a refused ``POST /stream`` (``{"detail": ...}``), or its status
    when the body is not the gateway's (a proxy's error page)."""
    try:
        return read_gateway_error(await response.json(content_type=None)).message
    except ValueError:
        return f'HTTP {response.status} {response.reason}'


def server_sent_event_data(event: bytes) -> StreamEvent:
    """The ``StreamEvent`` in one Server-Sent Event's ``data`` field."""
    data = b'\n'.join(
        line[len(SSE_DATA_FIELD) :].strip()
        for line in event.splitlines()
        if line.startswith(SSE_DATA_FIELD)
    )
    return StreamEvent(**json.loads(data))


async def websocket_events(
    address: str, tls: bool, request: StreamRequest, authorization: Dict
) -> AsyncIterator[StreamEvent]:
    """The WebSocket at /stream: the request as one message, then one event per message."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    url = f'{"wss" if tls else "ws"}://{address}{defaults.STREAM_ENDPOINT}'
    try:
        # No message size bound: a done event carries every image.
        async with connect(
            url, additional_headers=authorization.get('headers'), max_size=None
        ) as websocket:
            await websocket.send(json.dumps(stream_body(request)))
            async for message in websocket:
                yield StreamEvent(**json.loads(message))
    except InvalidStatus as error:
        raise ServiceError(
            f'the gateway refused the WebSocket (HTTP {error.response.status_code}): '
            'a missing or wrong API key (S2I_API_KEY)'
        ) from None
    except (OSError, WebSocketException) as error:
        raise ServiceError(f'cannot stream from {url}: {error}') from None


def save_images(doc: SpeechDoc, index: int, out_dir: Path) -> List[Path]:
    """Write a document's images as ``<index>-<source>-<n>-seed<seed>.png``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(doc.tags.get('source', 'prompt')).stem
    paths = []
    for number, image in enumerate(doc.matches):
        path = out_dir / f'{index}-{stem}-{number}-seed{image.tags.get("seed")}.png'
        path.write_bytes(image.bytes_)
        paths.append(path)
    return paths


def save_previews(event: StreamEvent, index: int, source: str, preview_dir: Path) -> None:
    """Write a preview event's JPEGs as ``<index>-<source>-<n>-step<step>.jpg``."""
    preview_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(source).stem
    for image in event.images:
        name = f'{index}-{stem}-{image.tags.get("image", 0)}-step{event.step}.jpg'
        (preview_dir / name).write_bytes(image.bytes_)


def heard_lines(doc: SpeechDoc) -> List[str]:
    """What Whisper heard, when the prompt differs from it or came from another language, and
    the settings taken from speech; nothing for a typed prompt."""
    tags = doc.tags
    if 'transcript' not in tags:
        return []
    lines = []
    language = f'{tags.get("language")}, {100 * float(tags.get("language_probability", 0)):.0f}%'
    if tags['transcript'] != doc.text or tags.get('language') != 'en':
        lines.append(f'  heard ({language}): {tags["transcript"]}')
    spoken = tags.get('spoken_settings') or {}
    if spoken:
        said = ', '.join(
            f'{name} {value:g}' if isinstance(value, float) else f'{name} {value}'
            for name, value in spoken.items()
        )
        lines.append(f'  from speech: {said}')
    return lines


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='speech2image',
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument(
        'audio', nargs='*', type=Path, help='audio files (wav, flac, mp3, ogg, webm)'
    )
    parser.add_argument('--text', action='append', default=[], help='a typed prompt (repeatable)')
    parser.add_argument('--host', default=DEFAULT_HOST, help='gateway address')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT_DIR, help='folder for the PNGs')
    parser.add_argument('--transcribe-only', action='store_true', help='stop after Whisper')
    parser.add_argument(
        '--no-stream',
        dest='stream',
        action='store_false',
        help='one ordinary request for every document: no transcript, progress or previews '
        'before the images',
    )
    parser.add_argument(
        '--previews', type=Path, metavar='DIR', help='save the previews (JPEG) here as they come'
    )
    parser.add_argument(
        '--preview-every', type=int, help='steps between previews (server default: 4 per image)'
    )
    parser.add_argument(
        '--task',
        choices=['translate', 'transcribe'],
        help='translate speech to English (server default) or keep its language',
    )
    parser.add_argument('--language', help='language hint, e.g. de')
    parser.add_argument(
        '--no-spoken-settings',
        dest='spoken_settings',
        action='store_const',
        const=False,
        help='send the transcript as the prompt, taking no settings '
        'from it ("four pictures of ..., seed 42")',
    )
    parser.add_argument('-n', '--num-images', type=int)
    parser.add_argument('--steps', type=int, dest='num_inference_steps')
    parser.add_argument('--guidance', type=float, dest='guidance_scale')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--width', type=int)
    parser.add_argument('--height', type=int)
    parser.add_argument('--negative-prompt')
    args = parser.parse_args(argv)
    if not args.audio and not args.text:
        parser.error('give at least one audio file or --text')
    for path in args.audio:
        if not path.is_file():
            parser.error(f'no such audio file: {path}')
    return args


def request_parameters(args: argparse.Namespace) -> Dict:
    names = (
        'task',
        'language',
        'spoken_settings',
        'num_images',
        'num_inference_steps',
        'guidance_scale',
        'seed',
        'width',
        'height',
        'negative_prompt',
        'preview_every',
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def print_transcript(doc: SpeechDoc) -> None:
    """The prompt a document became, and what was heard, on stdout at once."""
    print(f'[{doc.tags.get("source")}] {doc.text}', flush=True)
    for line in heard_lines(doc):
        print(line, flush=True)


def print_saved_images(doc: SpeechDoc, index: int, out_dir: Path) -> None:
    for path in save_images(doc, index, out_dir):
        print(f'  {path}', flush=True)


def post_documents(args: argparse.Namespace, docs: List[SpeechDoc], console) -> None:
    """Every document in one ordinary request: the answers once all are done."""
    endpoint = endpoint_for(docs, args.transcribe_only)
    started = time.monotonic()
    with console.status(f'Waiting for {args.host}{endpoint} ({len(docs)} prompt(s))...'):
        answered = send(
            args.host, endpoint, docs, request_parameters(args), api_key_from_environment()
        )
    console.print(f'answered in {time.monotonic() - started:.1f} s')
    for index, doc in enumerate(answered):
        print_transcript(doc)
        print_saved_images(doc, index, args.out)


def answered_doc(doc: SpeechDoc, event: StreamEvent) -> SpeechDoc:
    """What a transcript or done event says of ``doc``, as the one-request call answers it:
    the prompt, the tags (the CLI's own ``source`` kept) and the images."""
    return SpeechDoc(text=event.text, tags={**doc.tags, **event.tags}, matches=event.images)


async def stream_documents(args: argparse.Namespace, docs: List[SpeechDoc]) -> None:
    """One stream per document, in turn: the transcript as it comes, a bar of the denoising
    steps, the previews into ``--previews``, then the images."""
    for index, doc in enumerate(docs):
        await stream_document(args, doc, index)


async def stream_document(args: argparse.Namespace, doc: SpeechDoc, index: int) -> None:
    """Stream document number ``index`` of the command line, printing and saving as it goes;
    ``ServiceError`` if it fails or is cancelled by someone else."""
    from tqdm import tqdm

    source = doc.tags['source']
    progress = None
    try:
        events = stream(args.host, doc, request_parameters(args), api_key_from_environment())
        async for event in events:
            if event.event == 'transcript':
                print_transcript(answered_doc(doc, event))
            elif event.event == 'progress':
                if progress is None:
                    progress = tqdm(total=event.steps, desc=source, unit='step', file=sys.stderr)
                progress.update(event.step - progress.n)
            elif event.event == 'preview' and args.previews:
                save_previews(event, index, source, args.previews)
            elif event.event == 'done':
                if progress is not None:
                    progress.close()  # before the paths, so they print below a finished bar
                print_saved_images(answered_doc(doc, event), index, args.out)
            elif event.event == 'cancelled':
                raise ServiceError(event.message)
    finally:
        if progress is not None:
            progress.close()


def main(argv: Optional[List[str]] = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console(stderr=True)
    docs = make_docs(args.audio, args.text)
    try:
        if args.stream and not args.transcribe_only:
            asyncio.run(stream_documents(args, docs))
        else:
            post_documents(args, docs, console)
    except ServiceError as error:
        console.print(f'[red]error:[/red] {error}')
        return 1
    except KeyboardInterrupt:
        # A stream is cancelled by asyncio.run first: its connection closes, which the
        # gateway turns into a cancel of the generation.
        console.print('cancelled')
        return EXIT_INTERRUPTED
    return 0


if __name__ == '__main__':
    sys.exit(main())
