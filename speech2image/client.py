"""Command-line client: send spoken (or typed) prompts to a speech2image Flow, save the images.

    speech2image assets/apple.wav                       # speech -> transcript + images in out/
    speech2image --text "a lighthouse at dusk" -n 2     # typed prompt
    speech2image --host grpcs://s2i.example.com:443 talk.webm
    speech2image --transcribe-only talk.ogg             # stop after Whisper

The address takes grpc://, grpcs://, http://, https://, ws:// or wss://. A gateway that requires
an API key gets it from the S2I_API_KEY environment variable.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from speech2image import defaults
from speech2image.auth import api_key_from_environment, authorization_header
from speech2image.gateway_errors import read_gateway_error
from speech2image.schema import SpeechDoc

DEFAULT_HOST = f'grpc://{defaults.HOST}:{defaults.PORT_GRPC}'
DEFAULT_OUT_DIR = Path('out')
# Addresses whose client sends HTTP headers; the others (grpc, grpcs, none) send gRPC metadata.
HEADER_SCHEMES = ('http', 'https', 'ws', 'wss', 'websocket')


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
            **credentials(host, api_key),
        )
    except Exception as error:
        raise ServiceError(server_error_message(error)) from None


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
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: Optional[List[str]] = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console(stderr=True)
    docs = make_docs(args.audio, args.text)
    endpoint = endpoint_for(docs, args.transcribe_only)
    started = time.monotonic()
    try:
        with console.status(f'Waiting for {args.host}{endpoint} ({len(docs)} prompt(s))...'):
            answered = send(
                args.host, endpoint, docs, request_parameters(args), api_key_from_environment()
            )
    except ServiceError as error:
        console.print(f'[red]error:[/red] {error}')
        return 1
    console.print(f'answered in {time.monotonic() - started:.1f} s')
    for index, doc in enumerate(answered):
        print(f'[{doc.tags.get("source")}] {doc.text}')
        for line in heard_lines(doc):
            print(line)
        for path in save_images(doc, index, args.out):
            print(f'  {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
