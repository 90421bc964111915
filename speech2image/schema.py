"""The one document schema of the pipeline, shared by both Executors and the client.

A request carries a ``SpeechDoc`` per utterance. Audio comes in one of three forms:

- ``tensor``: float32 samples, mono, 16 kHz;
- ``bytes_``: an encoded file (wav, flac, mp3, ogg/opus, webm), decoded server-side;
- ``uri``: a path to such a file on the server (local files only).

WhisperExecutor fills ``text`` and ``tags`` (``language``, ``segments``); StableDiffusionExecutor
appends one ``ImageDoc`` per generated image to ``matches``.

A streaming call (``/stream``, speech2image/streaming.py) sends one ``StreamRequest`` and gets
``StreamEvent``s back: accepted, transcript, progress, preview, then done (or error).
"""

import base64
from typing import Any, Dict, Optional

from docarray import BaseDoc, DocList
from docarray.base_doc.base_node import BaseNode
from docarray.typing import NdArray
from pydantic_core import core_schema

SAMPLE_RATE = 16_000
IMAGE_MIME_TYPE = 'image/png'
# With a safety checker: each image's tag (whether it was flagged and blacked out), and its
# document's tag saying which were.
SAFETY_FLAGGED_TAG = 'safety_flagged'
SAFETY_NOTE_TAG = 'safety_note'


class Base64Bytes(bytes, BaseNode):
    """Binary payload (audio file, PNG) that travels as base64 text.

    jina's HTTP and WebSocket gateway rebuilds documents from their JSON schema, where ``bytes``
    becomes ``str``; raw binary then fails to validate. Carrying base64 text on the wire keeps
    every protocol working, while Python code reads and writes plain ``bytes``.
    A ``str`` given to the field is read as base64, ``bytes`` as raw data.
    """

    @classmethod
    def _validate(cls, value: Any) -> 'Base64Bytes':
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(value)
        if isinstance(value, str):
            try:
                return cls(base64.b64decode(value, validate=True))
            except ValueError as error:
                raise ValueError(f'binary field is not valid base64: {error}') from None
        raise ValueError(f'expected bytes or a base64 string, got {type(value).__name__}')

    def to_base64(self) -> str:
        return base64.b64encode(self).decode('ascii')

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.to_base64(), when_used='json'
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema, handler) -> Dict[str, Any]:
        return {'type': 'string', 'contentEncoding': 'base64'}

    def _docarray_to_json_compatible(self) -> str:
        return self.to_base64()

    def _to_node_protobuf(self):
        from docarray.proto import NodeProto

        return NodeProto(text=self.to_base64())


class ImageDoc(BaseDoc):
    """One generated image: encoded bytes plus what made it (prompt, seed, model, steps, ...)."""

    bytes_: Optional[Base64Bytes] = None
    mime_type: str = IMAGE_MIME_TYPE
    width: int = 0
    height: int = 0
    tags: Dict[str, Any] = {}


class SpeechDoc(BaseDoc):
    """One utterance in, its transcript and images out."""

    tensor: Optional[NdArray] = None
    bytes_: Optional[Base64Bytes] = None
    uri: Optional[str] = None
    text: Optional[str] = None
    tags: Dict[str, Any] = {}
    # Not Optional: Optional[DocList[...]] breaks jina's gateway schema handling.
    matches: DocList[ImageDoc] = DocList[ImageDoc]()

    def has_audio(self) -> bool:
        return self.tensor is not None or self.bytes_ is not None or self.uri is not None


class StreamRequest(SpeechDoc):
    """The one document of a streaming call, with the request's parameters: jina's
    single-document stream carries no parameters of its own."""

    parameters: Dict[str, Any] = {}

    def document(self) -> SpeechDoc:
        """The document itself, without the parameters."""
        return SpeechDoc(**self.model_dump(exclude={'parameters'}))


class StreamEvent(BaseDoc):
    """One event of a streaming call; which fields are set depends on ``event``:

    - ``accepted``: ``request_id``, ``queue_position`` (requests ahead of it at the gateway);
    - ``transcript``: ``text`` (the prompt) and ``tags`` (language, segments, transcript, ...);
    - ``progress``: ``step`` of ``steps``, for every image of the request (they advance together);
    - ``preview``: ``step``, ``steps`` and ``images``: one small JPEG per image, tagged ``image``;
    - ``done``: ``text``, ``tags`` and ``images``: the document's transcript, tags and images,
      exactly as ``/`` returns them in ``matches``;
    - ``error``: ``status`` (the HTTP status the same mistake gets from ``/``) and ``message``.
    """

    event: str
    request_id: str = ''
    queue_position: Optional[int] = None
    text: Optional[str] = None
    tags: Dict[str, Any] = {}
    step: Optional[int] = None
    steps: Optional[int] = None
    images: DocList[ImageDoc] = DocList[ImageDoc]()
    status: Optional[int] = None
    message: Optional[str] = None
