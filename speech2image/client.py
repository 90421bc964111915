"""Command-line client: send spoken (or typed) prompts to a speech2image Flow, save the images.

    speech2image assets/apple.wav                       # speech -> transcript + images in out/
    speech2image --text "a lighthouse at dusk" -n 2     # typed prompt
    speech2image --host grpcs://s2i.example.com:443 talk.webm
    speech2image --transcribe-only talk.ogg             # stop after Whisper
    speech2image --previews previews/ talk.wav          # also save the previews as they come
    speech2image --talk                                 # a conversation: "a red ball", "make it blue", ...

The address takes grpc://, grpcs://, http://, https://, ws:// or wss://. Without --host the
client reads the variables the server reads: S2I_HOST and S2I_PORT_GRPC (a Flow moved with
`S2I_PORT_GRPC=6000 python flow.py` is found with the same variable). A gateway that requires an
API key gets it from the S2I_API_KEY environment variable.

Typed prompts are read for settings as spoken ones are ("Jarvis, paint me two boats, seed 7":
the prompt "boats", 2 images, seed 7; flags win); --no-spoken-settings sends them word for word.
Images are saved as <the prompt's first words>-seed<seed>.png; an existing file is never
replaced (the new one gets a number) unless --overwrite is given.

Images are streamed (the gateway's /stream call, one document at a time): the transcript is
printed as soon as Whisper has it, a bar shows the denoising steps, and Ctrl-C cancels the
generation on the server. --no-stream sends every document in one ordinary request instead.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional, Tuple

from speech2image import defaults
from speech2image.auth import api_key_from_environment, authorization_header
from speech2image.gateway_errors import read_gateway_error
from speech2image.schema import SAFETY_NOTE_TAG, SpeechDoc, StreamEvent, StreamRequest
from speech2image.spoken_settings import (
    SOURCE_TRANSCRIPT_TAG,
    SPOKEN_SETTINGS_TAG,
    TRANSCRIPT_TAG,
    parse_command,
)
from speech2image.streaming import FINAL_EVENTS

# The server's variables for its address (flow.py's --host and --port-grpc), read here too.
HOST_ENV, PORT_GRPC_ENV = 'S2I_HOST', 'S2I_PORT_GRPC'
# Addresses a server binds to mean "every interface"; a client reaches them on this machine.
ANY_INTERFACE = ('', '0.0.0.0', '::')
DEFAULT_OUT_DIR = Path('out')
# A saved image's name: the prompt's first words, at most this many, and this many characters.
NAME_WORDS, NAME_CHARS = 6, 48
# How long the client waits for the gateway's port to take a connection before it says none is
# there (a remote gateway across the world answers well within it).
CONNECT_TIMEOUT_S = 10.0
HOW_TO_START = (
    'start one with `make serve` (the offline models; Ctrl-C stops it) or `python flow.py`, '
    f'or give its address with --host (or {HOST_ENV} and {PORT_GRPC_ENV})'
)
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


def default_host() -> str:
    """The gateway the server's own variables point at: ``grpc://S2I_HOST:S2I_PORT_GRPC``, each
    variable unset being flow.py's default; a server bound to every interface is reached on
    this machine."""
    host = os.environ.get(HOST_ENV, defaults.HOST)
    if host in ANY_INTERFACE:
        host = defaults.HOST
    return f'grpc://{host}:{os.environ.get(PORT_GRPC_ENV) or defaults.PORT_GRPC}'


def check_gateway_reachable(host: str) -> None:
    """Raise ``ServiceError`` saying that no gateway is at ``host``, and how to start one, when
    nothing there takes a TCP connection (before any request: the transports' own words for it
    are gRPC's "failed to connect to all addresses" and the like)."""
    _, address, _ = stream_address(host)
    hostname, _, port = address.rpartition(':')
    try:
        socket.create_connection((hostname.strip('[]'), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ServiceError(
            f'no speech2image gateway at {address} ({reason.lower()}): {HOW_TO_START}'
        ) from None


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


def make_docs(
    audio_files: List[Path], texts: List[str], parse_typed: bool = True
) -> List[SpeechDoc]:
    """One document per audio file (sent as encoded bytes) and per typed prompt (``typed_doc``)."""
    docs = [SpeechDoc(bytes_=path.read_bytes(), tags={'source': path.name}) for path in audio_files]
    docs += [typed_doc(text, parse_typed) for text in texts]
    return docs


def typed_doc(text: str, parse: bool) -> SpeechDoc:
    """A typed prompt's document. When ``parse``, the prompt is read for settings by the rules
    spoken prompts go through ("paint me two boats, seed 7" -> "boats", 2 images, seed 7): the
    settings travel in the same tag, and the diffusion Executor puts the request's explicit
    parameters (the flags) above them, as it does for speech."""
    tags = {'source': 'text'}
    if not parse:
        return SpeechDoc(text=text, tags=tags)
    command = parse_command(text)
    if command.settings:
        tags[SPOKEN_SETTINGS_TAG] = command.settings
    return SpeechDoc(text=command.prompt, tags=tags)


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


def name_from_prompt(prompt: str) -> str:
    """A file name's start from a prompt's first words: "A red boat, on the sea!" ->
    "a-red-boat-on-the-sea"; "image" for a prompt with no word in it."""
    words = re.findall(r'\w+', prompt.lower())[:NAME_WORDS]
    return '-'.join(words)[:NAME_CHARS].strip('-_') or 'image'


def unused_path(path: Path, overwrite: bool) -> Path:
    """``path``, unless a file is there and ``overwrite`` is false: then the first free
    ``<stem>-2<suffix>``, ``-3``, ... beside it."""
    if overwrite or not path.exists():
        return path
    number = 2
    while (candidate := path.with_name(f'{path.stem}-{number}{path.suffix}')).exists():
        number += 1
    return candidate


def write_file(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` at ``path``, or beside it (``unused_path``); the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path = unused_path(path, overwrite)
    path.write_bytes(data)
    return path


def save_images(doc: SpeechDoc, out_dir: Path, overwrite: bool = False) -> List[Path]:
    """Write a document's images as ``<the prompt's first words>-seed<seed>.<format>``; the
    paths written."""
    stem = name_from_prompt(doc.text or '')
    return [
        write_file(
            out_dir / f'{stem}-seed{image.tags.get("seed")}{image_suffix(image.mime_type)}',
            image.bytes_,
            overwrite,
        )
        for image in doc.matches
    ]


def image_suffix(mime_type: Optional[str]) -> str:
    """'.png' for image/png, '.jpeg' for image/jpeg, ...; '.png' when the type is unknown."""
    kind = (mime_type or '').partition('/')[2]
    return f'.{kind}' if kind else '.png'


def save_previews(event: StreamEvent, prompt: str, preview_dir: Path, overwrite: bool) -> None:
    """Write a preview event's JPEGs as ``<the prompt's first words>-<n>-step<step>.jpg``."""
    stem = name_from_prompt(prompt)
    for image in event.images:
        name = f'{stem}-{image.tags.get("image", 0)}-step{event.step}.jpg'
        write_file(preview_dir / name, image.bytes_, overwrite)


def heard_lines(doc: SpeechDoc) -> List[str]:
    """What Whisper wrote, when the prompt differs from it or came from another language, and
    the settings taken from the words (spoken or typed)."""
    tags = doc.tags
    lines = []
    if TRANSCRIPT_TAG in tags:
        probability = 100 * float(tags.get('language_probability', 0))
        language = f'{tags.get("language")}, {probability:.0f}%'
        if SOURCE_TRANSCRIPT_TAG in tags:  # translated: the words as heard, then the English
            lines.append(f'  heard ({language}): {tags[SOURCE_TRANSCRIPT_TAG]}')
        if tags[TRANSCRIPT_TAG] != doc.text or tags.get('language') != 'en':
            lines.append(f'  Whisper wrote ({language}): {tags[TRANSCRIPT_TAG]}')
    taken = tags.get(SPOKEN_SETTINGS_TAG) or {}
    if taken:
        said = ', '.join(f'{name} {setting_text(value)}' for name, value in taken.items())
        where = 'speech' if TRANSCRIPT_TAG in tags else 'the prompt'
        lines.append(f'  from {where}: {said}')
    return lines


def setting_text(value) -> str:
    """A setting as a person writes it: 9.0 is 9 (numbers cross JSON and protobuf as floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f'{value:g}' if isinstance(value, float) else str(value)


def model_line(doc: SpeechDoc) -> Optional[str]:
    """Which model drew a document's images, from their tags; None without images."""
    models = {image.tags.get('model') for image in doc.matches} - {None}
    if not models:
        return None
    return '  drawn by ' + ', '.join(sorted(model_name(model) for model in models))


def model_name(model: str) -> str:
    """A model's name as a person reads it: a local directory's last part, or the hub id."""
    path = Path(model)
    return path.name if path.is_absolute() else model


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
    parser.add_argument(
        '--host',
        default=default_host(),
        help=f'gateway address (default: %(default)s, from {HOST_ENV} and {PORT_GRPC_ENV} when '
        'set, as the server reads them)',
    )
    parser.add_argument(
        '--out', type=Path, default=DEFAULT_OUT_DIR, help='folder for the images (default: out)'
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace files of the same name (default: a new file gets a number: name-2.png)',
    )
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
        help='send the transcript (and typed prompts) as the prompt word for word, taking no '
        'settings from it ("four pictures of ..., seed 42")',
    )
    parser.add_argument('-n', '--num-images', type=int)
    parser.add_argument('--steps', type=int, dest='num_inference_steps')
    parser.add_argument('--guidance', type=float, dest='guidance_scale')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--width', type=int)
    parser.add_argument('--height', type=int)
    parser.add_argument('--negative-prompt')
    parser.add_argument(
        '--talk',
        action='store_true',
        help='a conversation about one picture: each clip or typed line (then each line of '
        'stdin: an audio file path or words) refines the last picture ("make it blue", '
        '"another one", "go back") or starts a new one',
    )
    args = parser.parse_args(argv)
    if not args.audio and not args.text and not args.talk:
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


def print_saved_images(doc: SpeechDoc, out_dir: Path, overwrite: bool) -> None:
    """Save a document's images and print where, and which model drew them."""
    for path in save_images(doc, out_dir, overwrite):
        print(f'  {path}', flush=True)
    line = model_line(doc)
    if line:
        print(line, flush=True)
    if SAFETY_NOTE_TAG in doc.tags:  # flagged images are black squares: say why
        print(f'  safety: {doc.tags[SAFETY_NOTE_TAG]}', flush=True)


def post_documents(args: argparse.Namespace, docs: List[SpeechDoc], console) -> List[SpeechDoc]:
    """Every document in one ordinary request: the answers once all are done, returned."""
    endpoint = endpoint_for(docs, args.transcribe_only)
    started = time.monotonic()
    with console.status(f'Waiting for {args.host}{endpoint} ({len(docs)} prompt(s))...'):
        answered = send(
            args.host, endpoint, docs, request_parameters(args), api_key_from_environment()
        )
    console.print(f'answered in {time.monotonic() - started:.1f} s')
    for doc in answered:
        print_transcript(doc)
        print_saved_images(doc, args.out, args.overwrite)
    return answered


def answered_doc(doc: SpeechDoc, event: StreamEvent) -> SpeechDoc:
    """What a transcript or done event says of ``doc``, as the one-request call answers it:
    the prompt, the tags (the CLI's own ``source`` kept) and the images."""
    return SpeechDoc(text=event.text, tags={**doc.tags, **event.tags}, matches=event.images)


async def stream_documents(args: argparse.Namespace, docs: List[SpeechDoc]) -> None:
    """One stream per document, in turn: the transcript as it comes, a bar of the denoising
    steps, the previews into ``--previews``, then the images."""
    for doc in docs:
        await stream_document(args, doc)


async def stream_document(args: argparse.Namespace, doc: SpeechDoc) -> Optional[SpeechDoc]:
    """Stream one document of the command line, printing and saving as it goes; returns the
    answered document; ``ServiceError`` if it fails or is cancelled by someone else."""
    from tqdm import tqdm

    source = doc.tags['source']
    prompt = doc.text or ''
    progress, answered = None, None
    try:
        events = stream(args.host, doc, request_parameters(args), api_key_from_environment())
        async for event in events:
            if event.event == 'transcript':
                prompt = event.text or prompt
                print_transcript(answered_doc(doc, event))
            elif event.event == 'progress':
                if progress is None:
                    progress = tqdm(total=event.steps, desc=source, unit='step', file=sys.stderr)
                progress.update(event.step - progress.n)
            elif event.event == 'preview' and args.previews:
                save_previews(event, prompt, args.previews, args.overwrite)
            elif event.event == 'done':
                if progress is not None:
                    progress.close()  # before the paths, so they print below a finished bar
                answered = answered_doc(doc, event)
                print_saved_images(answered, args.out, args.overwrite)
            elif event.event == 'cancelled':
                raise ServiceError(event.message)
    finally:
        if progress is not None:
            progress.close()
    return answered


def main(argv: Optional[List[str]] = None) -> int:
    from rich.console import Console
    from rich.markup import escape

    args = parse_args(argv)
    console = Console(stderr=True)
    docs = make_docs(args.audio, args.text, parse_typed=args.spoken_settings is not False)
    try:
        check_gateway_reachable(args.host)
        if args.talk:
            from speech2image.talk import talk

            return talk(args, docs, console)
        if args.stream and not args.transcribe_only:
            asyncio.run(stream_documents(args, docs))
        else:
            post_documents(args, docs, console)
    except ServiceError as error:
        # The server's words as they are: brackets in them are not rich markup.
        console.print(f'[red]error:[/red] {escape(str(error))}', soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        # A stream is cancelled by asyncio.run first: its connection closes, which the
        # gateway turns into a cancel of the generation.
        console.print('cancelled')
        return EXIT_INTERRUPTED
    return 0


if __name__ == '__main__':
    sys.exit(main())
