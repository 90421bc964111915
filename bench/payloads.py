"""Bytes on the wire and encode/decode cost, per audio form in a request and per image format
in a response.

    python -m bench.payloads [--repeats 20] [--side 512]

Requests: assets/apple.wav sent as the WAV file, re-encoded as FLAC and Ogg/Opus, or as int16
and float32 sample tensors; sizes are the one-document request as gRPC carries it (protobuf)
and as the HTTP gateway takes it (JSON), and the cost is the server's decode to float32
samples. Responses: a ``--side`` px image as PNG, JPEG and WebP (quality 90) against the raw
float32 tensor it would otherwise be; two images, because size depends on content: uniform
noise (what the untrained offline model paints, the worst case for compression) and a smooth
synthetic scene (closer to a real model's output). Times are medians over ``--repeats``.
"""

import argparse
import io
import statistics
import time
import warnings
from typing import Callable, List

import numpy as np
from docarray import DocList

# bench.measure first: it sets the OpenMP threads torch reads.
from bench.measure import APPLE
from bench.report import machine_summary, markdown_table
from executors.stablediffusion.executor import IMAGE_FORMATS, encode_image
from speech2image.audio import decode_audio, load_audio
from speech2image.schema import ImageDoc, SpeechDoc

MAX_SECONDS = 30.0
AUDIO_HEADER = ['audio as', 'gRPC request bytes', 'HTTP request bytes', 'server decode ms']
IMAGE_HEADER = ['image', 'format', 'bytes', 'vs float32 tensor', 'encode ms']


def median_ms(action: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return 1000 * statistics.median(timings)


def reencode(samples: np.ndarray, container_format: str, codec: str, rate: int) -> bytes:
    """``samples`` (float32 mono 16 kHz) encoded with PyAV as ``codec`` in ``container_format``."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, 'w', format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout='mono')
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16)[None, :], format='s16', layout='mono'
        )
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def audio_rows(repeats: int) -> List[List[str]]:
    samples = decode_audio(APPLE, MAX_SECONDS)
    forms = {
        'WAV file (16-bit PCM)': SpeechDoc(bytes_=APPLE),
        'FLAC file': SpeechDoc(bytes_=reencode(samples, 'flac', 'flac', 16_000)),
        'Ogg/Opus file': SpeechDoc(bytes_=reencode(samples, 'ogg', 'libopus', 16_000)),
        'int16 tensor': SpeechDoc(tensor=(samples * 32767).astype(np.int16)),
        'float32 tensor': SpeechDoc(tensor=samples),
    }
    rows = []
    # pydantic warns that it serialises a tensor as a JSON list: that list is what is measured.
    warnings.filterwarnings('ignore', message='Pydantic serializer warnings')
    for name, doc in forms.items():
        grpc_bytes = len(DocList[SpeechDoc]([doc]).to_protobuf().SerializeToString())
        http_bytes = len(('{"data": [' + doc.model_dump_json() + ']}').encode())
        decode = median_ms(lambda: load_audio(doc, MAX_SECONDS, None), repeats)
        rows.append([name, f'{grpc_bytes:,}', f'{http_bytes:,}', f'{decode:.2f}'])
    return rows


def test_images(side: int):
    """Two ``side`` px RGB images: uniform noise, and a smooth scene of gradients and discs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    y, x = np.mgrid[0:side, 0:side] / side
    scene = np.stack([0.6 * y + 0.2, 0.3 + 0.4 * x * y, 0.9 - 0.5 * y], axis=-1)
    for cx, cy, radius, colour in (
        (0.3, 0.6, 0.15, (0.8, 0.1, 0.1)),
        (0.7, 0.3, 0.1, (0.9, 0.9, 0.2)),
    ):
        scene[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = colour
    scene = (255 * (scene + rng.normal(0, 0.01, scene.shape)).clip(0, 1)).astype(np.uint8)
    return {'noise': Image.fromarray(noise), 'smooth scene': Image.fromarray(scene)}


def image_rows(side: int, repeats: int) -> List[List[str]]:
    pixels = np.zeros((side, side, 3), dtype=np.float32)
    tensor_bytes = len(SpeechDoc(tensor=pixels).to_protobuf().SerializeToString())
    rows = []
    for name, image in test_images(side).items():
        rows.append([name, 'float32 tensor', f'{tensor_bytes:,}', '1.00x', ''])
        for image_format in IMAGE_FORMATS:
            encoded = ImageDoc(bytes_=encode_image(image, image_format), width=side, height=side)
            size = len(encoded.to_protobuf().SerializeToString())
            encode = median_ms(lambda: encode_image(image, image_format), repeats)
            rows.append(
                [
                    name,
                    image_format.upper(),
                    f'{size:,}',
                    f'{size / tensor_bytes:.3f}x',
                    f'{encode:.1f}',
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--side', type=int, default=512)
    args = parser.parse_args()
    print(machine_summary())
    print(f'Request: assets/apple.wav ({len(APPLE):,} bytes as WAV), one document.\n')
    print(markdown_table(AUDIO_HEADER, audio_rows(args.repeats)))
    print(f'\nResponse: one {args.side}x{args.side} image.\n')
    print(markdown_table(IMAGE_HEADER, image_rows(args.side, args.repeats)))


if __name__ == '__main__':
    main()
