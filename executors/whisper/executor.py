"""WhisperExecutor: a spoken prompt in, its text out (``doc.text``, ``doc.tags``).

Two backends behind one interface, chosen by the ``backend`` argument:

- ``faster-whisper`` (default): CTranslate2, int8 on CPU and float16 on GPU; faster than PyTorch
  Whisper on CPU (1.3x on tiny.en, 2 cores, bench/whisper_backends.py). Takes a model name
  (tiny ... large-v3, turbo) or a local CTranslate2 model directory.
- ``openai-whisper``: the reference PyTorch implementation. Takes a model name or a local ``.pt``
  checkpoint.

Decoding is bounded (temperature fallback over a short ladder, at most ``max_new_tokens`` tokens
per window), so noise or a bad model cannot run for minutes. One model thread runs every
transcription (speech2image/batching.py); clips that queue while it is busy go in its next batch.
"""

import asyncio
import bisect
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, FrozenSet, List, Optional, Protocol, runtime_checkable

import numpy as np
from docarray import DocList
from jina import requests

from speech2image import defaults
from speech2image.audio import AudioError, load_audio
from speech2image.batching import ModelWorker
from speech2image.cpus import thread_count, use_torch_threads
from speech2image.defaults import (
    DRAIN_SECONDS,
    INFO_ENDPOINT,
    MAX_REQUEST_MB,
    MEBIBYTE,
    WHISPER_INFO_TAG,
)
from speech2image.devices import ctranslate2_cuda_usable, resolve_device, torch_cuda_usable
from speech2image.draining import DrainingExecutor
from speech2image.hub import ModelLoadError, hub_offline
from speech2image.metrics import (
    WhisperMetrics,
    instrumented,
    instrumented_endpoints,
    registry_of,
)
from speech2image.schema import SAMPLE_RATE, SpeechDoc
from speech2image.spoken_settings import (
    SOURCE_TRANSCRIPT_TAG,
    SPOKEN_SETTINGS_TAG,
    TRANSCRIPT_TAG,
    parse_command,
)
from speech2image.transcript_checks import TranscriptLimits, language_doubt, transcript_doubt
from speech2image.validation import (
    RequestError,
    bool_parameter,
    check_prompt,
    choice_parameter,
    document_error,
)

BACKENDS = ('faster-whisper', 'openai-whisper')
TASKS = ('translate', 'transcribe')
# Retried temperatures when a decode looks degenerate; short, to bound the worst case.
TEMPERATURES = (0.0, 0.2, 0.4)
# Whisper's window: a batched decode takes each clip's speech in pieces of at most this length.
WINDOW_SECONDS = 30
# A batched segment starts where its piece of speech starts, to faster-whisper's rounding.
SEGMENT_START_TOLERANCE_S = 0.01
# Whisper's confidence in each segment, kept in its tag (speech2image/transcript_checks.py).
SEGMENT_SCORES = ('avg_logprob', 'no_speech_prob', 'compression_ratio')


@dataclass
class Transcript:
    """What a backend heard: text, the language (detected, or as given) and its probability,
    and timed segments."""

    text: str
    language: str
    language_probability: float
    segments: List[Dict] = field(default_factory=list)


@dataclass
class ClipJob:
    """One clip for the model thread: its samples and how to decode them (the batch key)."""

    samples: np.ndarray
    task: str
    language: Optional[str]


@runtime_checkable
class WhisperBackend(Protocol):
    """What the Executor asks of a Whisper implementation."""

    # The language codes the model takes as a hint and can detect ({'en'}: English-only).
    languages: FrozenSet[str]
    # Whether the model hears other languages than English (and translates them).
    multilingual: bool

    def transcribe(self, samples: np.ndarray, task: str, language: Optional[str]) -> Transcript:
        """One clip (float32 samples at SAMPLE_RATE) decoded with ``task``; ``language``
        None is detected."""

    def transcribe_batch(
        self, clips: List[np.ndarray], task: str, language: Optional[str]
    ) -> List[Transcript]:
        """Several clips sharing ``task`` and ``language``: their transcripts, in order."""


def timed_segment(start: float, end: float, text: str, scores) -> Dict:
    """A segment as the tags carry it: its times (s) and text, and Whisper's confidence in it
    (``scores``' avg_logprob, no_speech_prob and compression_ratio, from either backend)."""
    return {
        'start': round(start, 2),
        'end': round(end, 2),
        'text': text.strip(),
        **{name: round(float(getattr(scores, name)), 3) for name in SEGMENT_SCORES},
    }


def merged_into_windows(spans: List[Dict[str, int]], window: int) -> List[Dict[str, int]]:
    """VAD speech spans (start and end in samples, in order) merged into pieces of at most
    ``window`` samples, as faster-whisper's own batched pipeline merges them: each piece is
    decoded on its own, and a phrase cut at every short pause loses the words around it."""
    merged: List[Dict[str, int]] = []
    for span in spans:
        if merged and span['end'] - merged[-1]['start'] <= window:
            merged[-1]['end'] = span['end']
        else:
            merged.append(dict(span))
    return merged


class FasterWhisperBackend:
    """Whisper on CTranslate2 (faster-whisper)."""

    def __init__(
        self,
        model: str,
        device: str,
        compute_type: str,
        beam_size: int,
        max_new_tokens: int,
        vad_filter: bool,
        threads: int,
    ):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        device = resolve_device(device, ctranslate2_cuda_usable)
        if compute_type == 'auto':
            compute_type = 'float16' if device == 'cuda' else 'int8'
        try:
            self.model = WhisperModel(
                model,
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                local_files_only=hub_offline(),
            )
            self.batched = BatchedInferencePipeline(self.model)
        except Exception as error:
            raise ModelLoadError(
                f'cannot load faster-whisper model {model!r}: {error}. Give a local CTranslate2 '
                'model directory, or a model name on a machine that can reach the Hugging Face hub.'
            ) from None
        self.languages = frozenset(self.model.supported_languages)
        self.multilingual = self.model.model.is_multilingual
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        self.vad_filter = vad_filter

    def transcribe(self, samples: np.ndarray, task: str, language: Optional[str]) -> Transcript:
        segments, info = self.model.transcribe(
            samples,
            task=task,
            language=language,
            beam_size=self.beam_size,
            temperature=TEMPERATURES,
            max_new_tokens=self.max_new_tokens,
            condition_on_previous_text=False,
            vad_filter=self.vad_filter,
        )
        timed = [timed_segment(s.start, s.end, s.text, s) for s in segments]
        return Transcript(
            ' '.join(s['text'] for s in timed).strip(),
            info.language,
            round(info.language_probability, 3),
            timed,
        )

    def transcribe_batch(
        self, clips: List[np.ndarray], task: str, language: Optional[str]
    ) -> List[Transcript]:
        """Several clips in one batched decode (faster-whisper's BatchedInferencePipeline): their
        speech, found by VAD in each clip, laid end to end and decoded as one batch of windows.
        One clip, or a multilingual model left to detect the language (the pipeline detects
        one for the whole batch), takes ``transcribe`` per clip instead. A batched decode is
        greedy at the first temperature: no fallback ladder."""
        if len(clips) == 1 or (self.multilingual and language is None):
            return [self.transcribe(samples, task, language) for samples in clips]
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        vad = VadOptions(max_speech_duration_s=WINDOW_SECONDS, min_silence_duration_ms=160)
        window = WINDOW_SECONDS * SAMPLE_RATE
        pieces, owners, offset = [], [], 0  # pieces in seconds on the joined audio
        for number, samples in enumerate(clips):
            speech = (
                merged_into_windows(get_speech_timestamps(samples, vad), window)
                if self.vad_filter
                else [
                    {'start': start, 'end': min(start + window, samples.size)}
                    for start in range(0, samples.size, window)
                ]
            )
            for span in speech:
                pieces.append(
                    {
                        'start': (offset + span['start']) / SAMPLE_RATE,
                        'end': (offset + span['end']) / SAMPLE_RATE,
                    }
                )
                owners.append((number, offset / SAMPLE_RATE))
            offset += samples.size
        found = [[] for _ in clips]
        if pieces:
            segments, _ = self.batched.transcribe(
                np.concatenate(clips),
                language=language or 'en',
                task=task,
                clip_timestamps=pieces,
                batch_size=len(pieces),
                beam_size=self.beam_size,
                temperature=TEMPERATURES[0],
                max_new_tokens=self.max_new_tokens,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            starts = [piece['start'] for piece in pieces]
            for segment in segments:  # a piece gives one segment, or none when nothing was heard
                piece = bisect.bisect_right(starts, segment.start + SEGMENT_START_TOLERANCE_S) - 1
                number, start = owners[piece]
                found[number].append(
                    timed_segment(
                        max(0.0, segment.start - start), segment.end - start, segment.text, segment
                    )
                )
        # The language was given (or the model is English-only): certain, as faster-whisper
        # reports a given language.
        return [
            Transcript(
                ' '.join(s['text'] for s in timed if s['text']).strip(),
                language or 'en',
                1.0,
                [s for s in timed if s['text']],
            )
            for timed in found
        ]


class OpenAIWhisperBackend:
    """The reference PyTorch Whisper (openai-whisper)."""

    def __init__(self, model: str, device: str, beam_size: int, max_new_tokens: int):
        import whisper
        from whisper.tokenizer import LANGUAGES

        self.device = resolve_device(device, torch_cuda_usable)
        if not Path(model).is_file() and hub_offline():
            raise ModelLoadError(
                f'openai-whisper model {model!r} is not a local checkpoint and HF_HUB_OFFLINE is set'
            )
        try:
            self.model = whisper.load_model(model, device=self.device)
        except Exception as error:
            raise ModelLoadError(
                f'cannot load openai-whisper model {model!r}: {error}. Give a local .pt '
                'checkpoint, or a model name on a machine that can download it.'
            ) from None
        self.multilingual = self.model.is_multilingual
        # As faster-whisper's supported_languages: an English-only model takes only English.
        self.languages = frozenset(LANGUAGES) if self.multilingual else frozenset({'en'})
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens

    def detect_language(self, samples: np.ndarray) -> tuple:
        """(language, probability) from the first 30 s, as faster-whisper reports it; the
        reference transcribe() detects too but does not return the probability."""
        import whisper

        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(samples), self.model.dims.n_mels)
        _, probabilities = self.model.detect_language(mel.to(self.device))
        language = max(probabilities, key=probabilities.get)
        return language, probabilities[language]

    def transcribe(self, samples: np.ndarray, task: str, language: Optional[str]) -> Transcript:
        probability = 1.0
        if language is None and self.multilingual:
            language, probability = self.detect_language(samples)
        result = self.model.transcribe(
            samples,
            task=task,
            language=language,
            temperature=TEMPERATURES,
            condition_on_previous_text=False,
            fp16=self.device == 'cuda',
            sample_len=self.max_new_tokens,
            beam_size=self.beam_size if self.beam_size > 1 else None,
            verbose=None,
        )
        timed = [
            timed_segment(s['start'], s['end'], s['text'], SimpleNamespace(**s))
            for s in result['segments']
        ]
        return Transcript(result['text'].strip(), result['language'], round(probability, 3), timed)

    def transcribe_batch(
        self, clips: List[np.ndarray], task: str, language: Optional[str]
    ) -> List[Transcript]:
        """One clip after another: openai-whisper's ``transcribe`` takes one clip."""
        return [self.transcribe(samples, task, language) for samples in clips]


class WhisperExecutor(DrainingExecutor):
    """Transcribes (or translates to English) each document's audio into ``doc.text``.

    A document with text and no audio passes through, so text-to-image requests share the Flow.
    Per-request parameters: ``task`` ('translate' to English, the default on a multilingual
    model, or 'transcribe' in the language spoken), ``language`` (a hint such as 'de'; detected
    when absent) and ``spoken_settings`` (false: send the transcript to Stable Diffusion as is).

    Spoken settings: an English transcript (spoken English, or translated) goes through
    ``spoken_settings.parse_command``; ``doc.text`` becomes the prompt, the tags keep the
    ``transcript`` and the ``spoken_settings`` (number of images, seed, ...) that the
    StableDiffusionExecutor applies under the request's own parameters.
    """

    def __init__(
        self,
        backend: str = 'faster-whisper',
        model: str = 'base',
        device: str = 'auto',
        compute_type: str = 'auto',
        beam_size: int = 1,
        max_new_tokens: int = 128,
        vad_filter: bool = True,
        spoken_settings: bool = True,
        max_audio_seconds: float = 60.0,
        audio_dir: Optional[str] = None,
        max_audio_file_mb: float = MAX_REQUEST_MB,
        max_batch_size: int = 8,
        threads: Optional[int] = None,
        drain_seconds: float = DRAIN_SECONDS,
        min_avg_logprob: float = defaults.MIN_AVG_LOGPROB,
        max_no_speech_prob: float = defaults.MAX_NO_SPEECH_PROB,
        max_compression_ratio: float = defaults.MAX_COMPRESSION_RATIO,
        max_words_per_second: float = defaults.MAX_WORDS_PER_SECOND,
        max_ngram_repeats: int = defaults.MAX_NGRAM_REPEATS,
        min_language_probability: float = defaults.MIN_LANGUAGE_PROBABILITY,
        **kwargs,
    ):
        """
        :param backend: 'faster-whisper' or 'openai-whisper'.
        :param model: model name or local path (CTranslate2 directory or .pt checkpoint).
        :param device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
        :param compute_type: faster-whisper precision; 'auto' is float16 on GPU, int8 on CPU.
        :param beam_size: 1 is greedy decoding, the fastest.
        :param max_new_tokens: cap on tokens decoded per 30 s window.
        :param vad_filter: drop non-speech with Silero VAD first (faster-whisper only), so
            noise gives "no speech" instead of hallucinated text.
        :param spoken_settings: take settings said in the prompt ("four pictures of ...,
            seed 42"); a request's ``spoken_settings`` parameter overrides it.
        :param max_audio_seconds: longer audio is refused.
        :param audio_dir: directory that ``uri`` paths may read from; None refuses ``uri``.
        :param max_audio_file_mb: largest file a ``uri`` may name, in MiB (checked before it is
            read); the gateway's request-size cap by default.
        :param max_batch_size: the most clips the model thread takes from the queue at once.
        :param threads: CPU threads for the model (CTranslate2, or torch for openai-whisper);
            None is the CPUs this process may use shared equally by the local replicas.
        :param drain_seconds: on SIGTERM, how long requests in flight may take to finish.
        :param min_avg_logprob: a transcript with a segment whose mean token log-probability
            is lower is refused (speech2image/transcript_checks.py).
        :param max_no_speech_prob: ... whose probability of no speech is higher is refused.
        :param max_compression_ratio: ... whose text's gzip compression ratio is higher
            (repetitive text) is refused.
        :param max_words_per_second: a transcript with more words per second of audio is refused.
        :param max_ngram_repeats: a transcript where one run of three words comes more often is
            refused.
        :param min_language_probability: a detected language less probable than this is
            refused; a request's ``language`` is not detected, and passes.
        """
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
        self.threads = thread_count(threads, self)
        self.model_name = model
        load_started = time.perf_counter()
        self.backend: WhisperBackend
        if backend == 'faster-whisper':
            self.backend = FasterWhisperBackend(
                model, device, compute_type, beam_size, max_new_tokens, vad_filter, self.threads
            )
        else:
            self.backend = OpenAIWhisperBackend(model, device, beam_size, max_new_tokens)
        self.metrics = WhisperMetrics(
            registry_of(self), instrumented_endpoints(type(self)), self.backend.languages
        )
        self.metrics.model_load_seconds.set(time.perf_counter() - load_started)
        self.max_audio_seconds = max_audio_seconds
        self.audio_dir = Path(audio_dir) if audio_dir else None
        self.max_audio_file_bytes = int(max_audio_file_mb * MEBIBYTE)
        self.spoken_settings = spoken_settings
        self.limits = TranscriptLimits(
            min_avg_logprob,
            max_no_speech_prob,
            max_compression_ratio,
            max_words_per_second,
            max_ngram_repeats,
            min_language_probability,
        )
        # CTranslate2 took its thread count at load; torch takes it on the thread that runs it.
        torch_threads = functools.partial(use_torch_threads, self.threads)
        self.worker = ModelWorker(
            self.transcribe_batch,
            max_batch_size,
            'whisper-model',
            on_start=None if backend == 'faster-whisper' else torch_threads,
        )
        self.start_draining_on_sigterm(drain_seconds)

    @requests(on=['/default', '/transcribe'])  # /default: jina's catch-all, so also '/'
    @instrumented
    async def transcribe(
        self, docs: DocList[SpeechDoc], parameters: Dict, **kwargs
    ) -> DocList[SpeechDoc]:
        task = self.task_parameter(parameters)
        language = self.language_parameter(parameters)
        spoken_settings = bool_parameter(parameters, 'spoken_settings', self.spoken_settings)
        # Every clip of the request is queued at once, so they can share a batch.
        outcomes = await asyncio.gather(
            *(
                self.transcribe_doc(index, doc, task, language, spoken_settings)
                for index, doc in enumerate(docs)
                if doc.has_audio()
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:  # the first document's error, as a loop over them would raise
            if isinstance(outcome, BaseException):
                raise outcome
        for index, doc in enumerate(docs):
            check_prompt(index, doc)
        return docs

    def language_parameter(self, parameters: Dict) -> Optional[str]:
        """The request's language hint, one the model takes, or None (detect). An English-only
        model takes only 'en', and its refusal says why."""
        try:
            return choice_parameter(parameters, 'language', None, self.backend.languages)
        except RequestError as error:
            if self.backend.multilingual:
                raise
            raise RequestError(f'{error}: the model is English-only') from None

    def task_parameter(self, parameters: Dict) -> str:
        """The request's task: 'translate' by default on a multilingual model; an English-only
        model only transcribes, and refuses a request that asks it to translate (it would
        write made-up English for speech it cannot understand)."""
        if not self.backend.multilingual:
            if choice_parameter(parameters, 'task', None, TASKS) == 'translate':
                raise RequestError(
                    "parameter 'task' is 'translate', but the model is English-only: it cannot "
                    'translate other languages; serve a multilingual Whisper (e.g. base), or ask '
                    "for task 'transcribe' of English speech"
                )
            return 'transcribe'
        return choice_parameter(parameters, 'task', 'translate', TASKS)

    @requests(on='/generate')
    @instrumented
    async def check_prompts(self, docs: DocList[SpeechDoc], **kwargs) -> DocList[SpeechDoc]:
        """Text-to-image requests: refuse bad prompts here, before they reach the batched
        diffusion Executor, where one bad document would fail every request in its batch."""
        for index, doc in enumerate(docs):
            check_prompt(index, doc)
        return docs

    @requests(on=INFO_ENDPOINT)
    async def info(self, docs: DocList[SpeechDoc], **kwargs) -> DocList[SpeechDoc]:
        """What this Executor serves, in each document's ``whisper`` tag: the model and
        whether it understands other languages than English."""
        for doc in docs:
            doc.tags[WHISPER_INFO_TAG] = {
                'model': self.model_name,
                'multilingual': self.backend.multilingual,
            }
        return docs

    def transcribe_batch(self, jobs: List[ClipJob]) -> List[Transcript]:
        """On the model thread: every queued clip (they share a task and language) in one
        batched call; each clip's seconds are its share of the call."""
        started = time.perf_counter()
        transcripts = self.backend.transcribe_batch(
            [job.samples for job in jobs], jobs[0].task, jobs[0].language
        )
        share = (time.perf_counter() - started) / len(jobs)
        for job, transcript in zip(jobs, transcripts):
            self.metrics.observe_transcript(
                job.samples.size / SAMPLE_RATE, share, transcript.text, transcript.language
            )
        return transcripts

    def check_transcript(
        self,
        index: int,
        doc: SpeechDoc,
        transcript: Transcript,
        language: Optional[str],
        audio_seconds: float,
    ) -> None:
        """Refuse a transcript that may not be what was said (speech2image/transcript_checks.py):
        a detected language Whisper was unsure of, or a transcript it was unsure of or that
        looks like one of its hallucinations. The message says what to do instead."""
        if language is None:
            doubt = language_doubt(
                transcript.language, transcript.language_probability, self.limits
            )
            if doubt:
                raise document_error(
                    index,
                    doc,
                    f'could not tell which language was spoken: {doubt}; speak again, or give '
                    f"the language (parameter 'language', e.g. '{transcript.language}')",
                )
        doubt = transcript_doubt(transcript.text, transcript.segments, audio_seconds, self.limits)
        if doubt:
            raise document_error(
                index,
                doc,
                f'could not understand the speech clearly (heard "{transcript.text[:80]}": '
                f"{doubt}); speak again, or give the language (parameter 'language')",
            )

    async def transcribe_doc(
        self, index: int, doc: SpeechDoc, task: str, language: Optional[str], spoken_settings: bool
    ) -> None:
        try:
            # Decoding is CPU work of its own: off the event loop, beside the model thread.
            samples = await asyncio.to_thread(
                load_audio, doc, self.max_audio_seconds, self.audio_dir, self.max_audio_file_bytes
            )
        except AudioError as error:
            raise document_error(index, doc, str(error)) from None
        transcript = await self.worker.run(ClipJob(samples, task, language), (task, language))
        if not transcript.text:
            raise document_error(index, doc, 'no speech detected in the audio')
        audio_seconds = round(samples.size / SAMPLE_RATE, 3)
        self.check_transcript(index, doc, transcript, language, audio_seconds)
        doc.text = transcript.text
        doc.tags.update(
            language=transcript.language,
            language_probability=transcript.language_probability,
            segments=transcript.segments,
            task=task,
            audio_seconds=audio_seconds,
        )
        doc.tags[TRANSCRIPT_TAG] = transcript.text
        if task == 'translate' and transcript.language != 'en':
            # What was heard, in the language spoken, beside its English: a person can see
            # what was understood (one more decode, with the language now known).
            heard = await self.worker.run(
                ClipJob(samples, 'transcribe', transcript.language),
                ('transcribe', transcript.language),
            )
            doc.tags[SOURCE_TRANSCRIPT_TAG] = heard.text
        # The rules are English: the transcript is English when translated or spoken so.
        if spoken_settings and (task == 'translate' or transcript.language == 'en'):
            command = parse_command(transcript.text)
            doc.text = command.prompt
            doc.tags[SPOKEN_SETTINGS_TAG] = command.settings
