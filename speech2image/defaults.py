"""Every default and vocabulary shared by the Flow, the gateway, the clients and the web page,
written once. Light on purpose: importing it loads no jina, torch or PyAV.
"""

# What the Flow serves: its models, their sizes and costs (one document in, its tags filled
# in by each Executor under its own key), for clients that offer choices (the web page).
INFO_ENDPOINT = '/info'
WHISPER_INFO_TAG, DIFFUSION_INFO_TAG = 'whisper', 'diffusion'
# The Flow's endpoints. '/' runs the whole pipeline; jina's HTTP gateway serves it at /default.
ENDPOINTS = ('/', '/transcribe', '/generate', INFO_ENDPOINT)
HTTP_ROOT_ENDPOINT = '/default'
# The streaming call (speech2image/streaming.py): events of one request as they happen, over
# gRPC (jina's stream_doc), HTTP (Server-Sent Events) and WebSocket; HTTP cancels by request id.
STREAM_ENDPOINT = '/stream'
STREAM_CANCEL_PATH = '/stream/cancel'
# The diffusion Executor's streaming endpoint, which the gateway's /stream calls after Whisper.
DIFFUSION_STREAM_ENDPOINT = '/generate_stream'

# Addresses of a Flow served by `python flow.py`. 127.0.0.1 unless told otherwise: only a person
# who means to expose the service should. The metrics ports are not 9090, Prometheus' own.
HOST = '127.0.0.1'
PORT_GRPC = 54322
PORT_HTTP = 54323
PORT_WEBSOCKET = 54324
PORT_WEB = 54325
PORT_MONITORING = 54326  # the gateway's /metrics; the Executors' follow: Whisper +1, diffusion +2
EXECUTOR_MONITORING_OFFSETS = {'whisper': 1, 'stablediffusion': 2}

MEBIBYTE = 2**20
JSON_CONTENT_TYPE = 'application/json'
# The longest prompt, and the longest any other text a request carries may be (a negative
# prompt, any string parameter), in characters.
MAX_PROMPT_CHARS = 1000

# The gateway's guard (speech2image/request_policy.py).
MAX_PENDING_REQUESTS = 64
MAX_REQUEST_MB = 32
REQUEST_TIMEOUT_SECONDS = 300.0
# How long a client may do nothing before the gateway closes its call or connection: open one
# and send no request, or stop reading a stream's events.
CLIENT_IDLE_SECONDS = 20.0
# An HTTP request body that has not all arrived by then is refused (408).
BODY_TIMEOUT_SECONDS = 30.0
# On SIGTERM, how long the gateway and the Executors let requests in flight finish.
DRAIN_SECONDS = 30.0
# After the drain, how long a process may take to shut down before it is ended for good.
SHUTDOWN_GRACE_SECONDS = 5.0

# The WhisperExecutor's checks of what it heard (speech2image/transcript_checks.py), chosen from
# the measurements in docs/languages.md (bench/transcript_confidence.py). A transcript is
# refused when a segment's mean token log-probability is below MIN_AVG_LOGPROB, its no-speech
# probability above MAX_NO_SPEECH_PROB, or its gzip compression ratio above
# MAX_COMPRESSION_RATIO (repetitive text); when it has more than MAX_WORDS_PER_SECOND words per
# second of audio; or when one run of three words occurs more than MAX_NGRAM_REPEATS times. A
# detected language below MIN_LANGUAGE_PROBABILITY is refused (a given one is not detected).
MIN_AVG_LOGPROB = -1.0
MAX_NO_SPEECH_PROB = 0.6
MAX_COMPRESSION_RATIO = 2.4
MAX_WORDS_PER_SECOND = 6.0
MAX_NGRAM_REPEATS = 1
MIN_LANGUAGE_PROBABILITY = 0.4

# A conversation about a picture travels with each request (speech2image/conversation.py):
# its turns, the bytes of their images, and how long after its last turn it may go on.
MAX_CONVERSATION_TURNS = 8
MAX_CONVERSATION_MB = 8
CONVERSATION_MAX_AGE_SECONDS = 3600.0

# The diffusion Executor's runtime on CPU: 'auto' is OpenVINO for the Stable Diffusion pipelines
# it runs (speech2image/openvino_backend.py), torch for the rest and on CUDA; precision f32
# gives torch's images, bf16 trades them for speed (docs/performance.md#openvino).
DIFFUSION_BACKENDS = ('auto', 'torch', 'openvino')
DIFFUSION_BACKEND = 'auto'
DIFFUSION_PRECISIONS = ('f32', 'bf16')
DIFFUSION_PRECISION = 'f32'
