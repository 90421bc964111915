"""Prometheus metrics of the Executors: every definition lives here.

They live on the registry jina gives each Executor (``runtime_args.metrics_registry``), so the
Executor's own ``/metrics`` endpoint serves them; metrics on the global default registry are not
exported by jina. jina's own metrics (request counts, pending requests) sit beside them; its
latencies are Summaries without quantiles, so the percentiles on the dashboard come from the
histograms here.

Label values are bounded: ``executor`` is the Executor's class name (as in jina's own metrics),
``endpoint`` its method name, ``kind`` one of the error kinds below, ``language`` a code the
Whisper model knows.
"""

import functools
import inspect
import threading
import time
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, List, Sequence, Tuple, Type

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from speech2image.validation import RequestError

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
UNET_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# From a text-only Whisper call (milliseconds) to a large image batch on CPU (minutes).
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
AUDIO_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120)
REAL_TIME_FACTOR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
# Error kinds: 'request' (RequestError: a request refused with a message), 'audio' (AudioError,
# Whisper only), 'internal' (anything else: a bug, out of memory).
AUDIO_ERROR, REQUEST_ERROR, INTERNAL_ERROR = 'audio', 'request', 'internal'
UNKNOWN_LANGUAGE = 'unknown'


def registry_of(executor) -> CollectorRegistry:
    """The registry jina exports for ``executor``; a private one when it runs outside a Flow
    or with monitoring off."""
    return getattr(executor.runtime_args, 'metrics_registry', None) or CollectorRegistry()


def instrumented(method: Callable) -> Callable:
    """Decorate an Executor endpoint, synchronous or async: time each call and count its errors
    by kind, on the Executor's ``self.metrics`` (an ``ExecutorMetrics``). Goes under
    ``@requests``; jina reads the endpoint's annotations, which ``wraps`` keeps."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_endpoint(executor, *args, **kwargs):
            with executor.metrics.call(method.__name__):
                return await method(executor, *args, **kwargs)

        async_endpoint.instrumented_as = method.__name__
        return async_endpoint

    @functools.wraps(method)
    def endpoint(executor, *args, **kwargs):
        with executor.metrics.call(method.__name__):
            return method(executor, *args, **kwargs)

    endpoint.instrumented_as = method.__name__
    return endpoint


def instrumented_endpoints(executor_class: type) -> List[str]:
    """The names ``instrumented`` times on ``executor_class``: each call-latency series is
    created at 0 when the Executor starts, so the first scrape already has it and ``rate()``
    counts the first requests too (a series born with its first calls shows no increase)."""
    return sorted(
        member.instrumented_as
        for _, member in inspect.getmembers(executor_class)
        if hasattr(member, 'instrumented_as')
    )


class ExecutorMetrics:
    """What every Executor reports: call latency, errors by kind, model load time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        executor: str,
        endpoints: Sequence[str],
        error_classes: Sequence[Tuple[Type[BaseException], str]] = (),
    ):
        """
        :param registry: where the metrics are registered (``registry_of(executor)``).
        :param executor: the Executor's class name, the ``executor`` label.
        :param endpoints: the ``endpoint`` labels ``call`` will see; each starts at 0.
        :param error_classes: (exception class, kind) pairs checked before ``RequestError``:
            an AudioError is re-raised as a RequestError naming the document, and still
            counts as 'audio'.
        """
        self.executor = executor
        self.error_classes = (*error_classes, (RequestError, REQUEST_ERROR))
        kinds = [kind for _, kind in self.error_classes] + [INTERNAL_ERROR]
        self.call_seconds = Histogram(
            'speech2image_executor_call_seconds',
            'Seconds in one endpoint call (one dynamic batch for StableDiffusionExecutor)',
            ['executor', 'endpoint'],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        for endpoint in endpoints:
            self.call_seconds.labels(executor, endpoint)
        errors = Counter(
            'speech2image_errors_total',
            'Failed endpoint calls, by kind of error',
            ['executor', 'kind'],
            registry=registry,
        )
        # Every kind starts at 0, so rates and alerts see a series before the first error.
        self.errors = {kind: errors.labels(executor, kind) for kind in kinds}
        self.model_load_seconds = Gauge(
            'speech2image_model_load_seconds',
            'Seconds the Executor took to load its model',
            ['executor'],
            registry=registry,
        ).labels(executor)

    @contextmanager
    def call(self, endpoint: str) -> Iterator[None]:
        """Time one endpoint call; count the error it raises, by kind, and re-raise it."""
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            self.count_error(error)
            raise
        finally:
            self.call_seconds.labels(self.executor, endpoint).observe(time.perf_counter() - started)

    def count_error(self, error: BaseException) -> None:
        self.errors[self.error_kind(error)].inc()

    def error_kind(self, error: BaseException) -> str:
        """The kind of ``error``: the first of ``error_classes`` found in it or the exceptions
        it was raised from or while handling (``raise ... from None`` still keeps those)."""
        chain = []
        while error is not None and error not in chain:
            chain.append(error)
            error = error.__cause__ or error.__context__
        for error_class, kind in self.error_classes:
            if any(isinstance(link, error_class) for link in chain):
                return kind
        return INTERNAL_ERROR


class WhisperMetrics(ExecutorMetrics):
    """What WhisperExecutor reports, per transcribed clip."""

    def __init__(
        self, registry: CollectorRegistry, endpoints: Sequence[str], languages: Collection[str]
    ):
        """
        :param languages: the codes the model can detect; any other value is 'unknown'.
        """
        from speech2image.audio import AudioError  # PyAV: only the Whisper image installs it

        super().__init__(registry, 'WhisperExecutor', endpoints, [(AudioError, AUDIO_ERROR)])
        self.languages = frozenset(languages)
        self.audio_seconds = Histogram(
            'speech2image_whisper_audio_duration_seconds',
            'Seconds of audio per transcribed clip (the sum: audio seconds received)',
            buckets=AUDIO_SECONDS_BUCKETS,
            registry=registry,
        )
        self.transcription_seconds = Histogram(
            'speech2image_whisper_transcription_seconds',
            'Seconds to transcribe one clip',
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.real_time_factor = Histogram(
            'speech2image_whisper_real_time_factor',
            'Transcription seconds per second of audio (below 1: faster than real time)',
            buckets=REAL_TIME_FACTOR_BUCKETS,
            registry=registry,
        )
        self.empty_transcripts = Counter(
            'speech2image_whisper_empty_transcripts_total',
            'Clips in which no speech was heard',
            registry=registry,
        )
        self.detected_language = Counter(
            'speech2image_whisper_detected_language_total',
            'Transcribed clips by language (detected, or as the request named it)',
            ['language'],
            registry=registry,
        )

    def observe_transcript(
        self, audio_seconds: float, seconds: float, text: str, language: str
    ) -> None:
        """Record one transcribed clip: its length, the time taken, and what was heard."""
        self.audio_seconds.observe(audio_seconds)
        self.transcription_seconds.observe(seconds)
        self.real_time_factor.observe(seconds / audio_seconds)
        if not text:
            self.empty_transcripts.inc()
            return
        self.detected_language.labels(
            language if language in self.languages else UNKNOWN_LANGUAGE
        ).inc()


class DiffusionMetrics(ExecutorMetrics):
    """What StableDiffusionExecutor reports, per pipeline call and per UNet call."""

    def __init__(self, registry: CollectorRegistry, endpoints: Sequence[str]):
        super().__init__(registry, 'StableDiffusionExecutor', endpoints)
        self.batch_documents = Histogram(
            'speech2image_diffusion_batch_documents',
            'Documents per pipeline call, after batching',
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            'speech2image_diffusion_images_total',
            'Images generated',
            registry=registry,
        )
        self.image_seconds = Histogram(
            'speech2image_diffusion_image_seconds',
            "Pipeline seconds per image: a call's seconds over its images, once per image",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.step_seconds = Histogram(
            'speech2image_diffusion_step_seconds',
            'Seconds per denoising step: one UNet forward pass over the whole batch',
            buckets=STEP_SECONDS_BUCKETS,
            registry=registry,
        )
        self.unet_batch_samples = Histogram(
            'speech2image_diffusion_unet_batch_samples',
            'Latents per UNet call (images, twice over with classifier-free guidance)',
            buckets=UNET_BATCH_BUCKETS,
            registry=registry,
        )
        self.cancelled_requests = Counter(
            'speech2image_diffusion_cancelled_requests_total',
            'Requests whose caller stopped waiting before their images were made (a cancelled '
            'stream, a client that hung up): dropped from the queue, or skipped mid-call',
            registry=registry,
        )
        self.gpu_memory_bytes = Gauge(
            'speech2image_gpu_memory_allocated_bytes',
            'Bytes torch holds on the GPU after the last pipeline call; 0 on CPU',
            ['executor'],
            registry=registry,
        ).labels(self.executor)
        # Per thread that runs the pipeline: when the running UNet call started (CPU), or the
        # CUDA event pairs of this pipeline call's UNet calls, read once the call is over.
        self.unet_timing = threading.local()

    def watch_unet(self, unet) -> None:
        """Time every forward pass of ``unet`` (a torch module) and record its batch size."""
        unet.register_forward_pre_hook(self.unet_call_starts, with_kwargs=True)
        unet.register_forward_hook(self.unet_call_ends)

    def cuda_steps(self) -> List[list]:
        """This thread's [start, end] CUDA event pairs not yet observed."""
        if not hasattr(self.unet_timing, 'cuda_steps'):
            self.unet_timing.cuda_steps = []
        return self.unet_timing.cuda_steps

    def unet_call_starts(self, unet, args, kwargs) -> None:
        sample = args[0] if args else kwargs['sample']
        self.unet_batch_samples.observe(sample.shape[0])
        if sample.device.type == 'cuda':
            # CUDA runs asynchronously: an event on the stream times the step without stalling
            # the queue (a synchronize per step would empty it before every UNet call).
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self.cuda_steps().append([start, None])
        else:
            self.unet_timing.started = time.perf_counter()

    def unet_call_ends(self, unet, args, output) -> None:
        if unet.device.type == 'cuda':
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.cuda_steps()[-1][1] = end
        else:
            self.step_seconds.observe(time.perf_counter() - self.unet_timing.started)

    def observe_pipeline_call(self, images: int, seconds: float, device) -> None:
        """Record one pipeline call that made ``images`` images in ``seconds`` on ``device``
        (a torch device); on CUDA, also its UNet steps, whose events have completed by now (the
        images are on the CPU)."""
        self.images.inc(images)
        for _ in range(images):
            self.image_seconds.observe(seconds / images)
        if device.type == 'cuda':
            import torch

            steps = self.cuda_steps()
            for start, end in steps:
                end.synchronize()  # already done: returns at once
                self.step_seconds.observe(start.elapsed_time(end) / 1000)  # ms to seconds
            steps.clear()
            self.gpu_memory_bytes.set(torch.cuda.memory_allocated(device))
