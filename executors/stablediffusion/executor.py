"""StableDiffusionExecutor: a prompt (``doc.text``) in, PNG images (``doc.matches``) out.

Loads any diffusers text-to-image checkpoint, by hub id or local directory, through
``AutoPipelineForText2Image``. One model thread makes every pipeline call (speech2image/batching.py):
requests that queue while it is busy, with the same parameters, share its next call and so their
UNet forward passes; a lone request starts at once.

``/generate_stream`` (the gateway's ``/stream``) runs one document the same way and yields its
progress every step, a preview every few steps (speech2image/previews.py) and its images. A job
whose caller is gone (a cancelled stream, a client that hung up) is dropped from the queue, or,
when every job of the running call is gone, stops the call at the end of the current step.
"""

import asyncio
import dataclasses
import functools
import io
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Dict, List, Optional

from docarray import DocList
from jina import requests

from speech2image.batching import ModelWorker
from speech2image.conversation import (
    CONVERSATION_TAG,
    PlannedTurn,
    answered_turns,
    plan_turn,
)
from speech2image.cpus import thread_count, use_torch_threads
from speech2image.defaults import (
    DIFFUSION_BACKEND,
    DIFFUSION_BACKENDS,
    DIFFUSION_INFO_TAG,
    DIFFUSION_PRECISION,
    DIFFUSION_PRECISIONS,
    DIFFUSION_STREAM_ENDPOINT,
    DRAIN_SECONDS,
    INFO_ENDPOINT,
)
from speech2image.devices import resolve_device, torch_cuda_usable
from speech2image.draining import DrainingExecutor
from speech2image.edits import BACK
from speech2image.hub import ModelLoadError, hub_offline
from speech2image.metrics import (
    DiffusionMetrics,
    instrumented,
    instrumented_endpoints,
    registry_of,
)
from speech2image.previews import PREVIEW_MIME_TYPE, preview_jpeg, projection_for
from speech2image.schema import (
    SAFETY_FLAGGED_TAG,
    SAFETY_NOTE_TAG,
    ImageDoc,
    SpeechDoc,
    StreamEvent,
    StreamRequest,
)
from speech2image.spoken_settings import SPOKEN_SETTINGS_TAG, generation_parameters
from speech2image.validation import (
    RequestError,
    check_prompt,
    choice_parameter,
    document_error,
    float_parameter,
    int_parameter,
    text_parameter,
)

# Seeds fit a signed 32-bit int: docarray's protobuf stores tag integers as int32, and a value
# that fails to serialise inside jina's batch queue hangs the request instead of failing it.
SEED_LIMIT = 2**31
SIDE_MULTIPLE = 8  # the VAE downsamples by 8
MIN_SIDE = 64
# The default cap on a side, in native sides: a step of the offline model (4 images, guidance)
# took 0.14 s at twice its side, 0.57 s at 4x and 60 s at 16x (docs/reliability.md).
NATIVE_SIDES_PER_MAX_SIDE = 2
MAX_GUIDANCE_SCALE = 30.0
SCHEDULERS = ('auto', 'checkpoint', 'dpm++')
# Full-step models: 25 DPM-Solver++ steps match ~50 of the original PNDM/DDIM schedulers.
FULL_STEP_DEFAULTS = (25, 7.5)
# Distilled few-step models, recognised by name: (steps, guidance). Turbo models are trained
# without classifier-free guidance; LCM folds guidance into the model.
FEW_STEP_DEFAULTS = {'turbo': (1, 0.0), 'lcm': (4, 1.0)}
# Pipelines whose checkpoints ship slower schedulers that DPM-Solver++ replaces at equal quality.
DPM_SOLVER_PIPELINES = ('StableDiffusionPipeline', 'StableDiffusionXLPipeline')
IMAGE_FORMATS = {'png': 'image/png', 'jpeg': 'image/jpeg', 'webp': 'image/webp'}
LOSSY_QUALITY = 90
# Previews per streamed generation when a request does not say (``preview_every`` steps apart).
DEFAULT_PREVIEWS = 4
# A local model's card (a Hugging Face model repository's README.md): its first paragraph tells
# people what the model draws (at most this many characters of it), and its metadata's
# ``inference: parameters:`` (the Hub's convention) may set the model's own default steps and
# guidance, which win over the defaults above.
MODEL_CARD = 'README.md'
MODEL_CARD_CHARS = 400
CARD_STEP_PARAMETERS = {'num_inference_steps': int, 'guidance_scale': float}
# Steps of the warm-up: two, so that the time between their ends is one step's cost.
WARMUP_STEPS = 2
# torch.compile modes: CUDA graphs on GPU; on CPU, Inductor's C++ kernels (needs a C++ compiler).
COMPILE_MODES = {'cuda': 'reduce-overhead', 'cpu': 'default'}
# Where run_pipeline leaves the safety checker's verdict on each PIL image, for image_doc.
SAFETY_FLAG_INFO = 'speech2image_safety_flagged'
# The streaming endpoint's call-latency label (an async generator, so not ``instrumented``).
STREAM_METRICS_LABEL = DIFFUSION_STREAM_ENDPOINT.lstrip('/')


@dataclass(frozen=True)
class GenerationSettings:
    """The validated parameters of one request; a batch shares one set."""

    num_images: int
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: Optional[int]
    negative_prompt: Optional[str]
    image_format: str
    # Image-to-image from each prompt's source image (a spoken edit), at this strength.
    strength: Optional[float] = None

    def seeds(self) -> List[int]:
        """One seed per image: ``seed``, ``seed + 1``, ... when given, else random ones.
        Each is recorded on its image, so any image can be made again."""
        if self.seed is None:
            return [secrets.randbelow(SEED_LIMIT) for _ in range(self.num_images)]
        return [(self.seed + offset) % SEED_LIMIT for offset in range(self.num_images)]

    def batch_key(self) -> 'GenerationSettings':
        """What requests must share to share a pipeline call: everything but the seed, which
        each request has already turned into its images' seeds."""
        return dataclasses.replace(self, seed=None)


@dataclass(frozen=True)
class GenerationJob:
    """Work for the model thread: the prompts of a request's documents that share settings,
    each prompt's seeds, those settings, and the documents' places in the request."""

    prompts: List[str]
    seeds: List[List[int]]
    settings: GenerationSettings
    indices: List[int]
    # Set by whoever waits for the job when it stops waiting; the model thread then skips it.
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Streaming jobs: called on the model thread after each step with (step, steps, the job's
    # latents when a preview is due, else None).
    on_step: Optional[Callable] = None
    preview_every: int = 0
    # Image-to-image jobs (``settings.strength``): the PIL image each prompt starts from.
    source_images: Optional[List] = None

    @property
    def images(self) -> int:
        return sum(len(doc_seeds) for doc_seeds in self.seeds)


class GenerationCancelled(Exception):
    """Every job of a running pipeline call was cancelled: the call stops at this step."""


def encode_image(image, image_format: str) -> bytes:
    """PNG (lossless, the default), or JPEG/WebP at quality 90 for smaller payloads."""
    buffer = io.BytesIO()
    options = {} if image_format == 'png' else {'quality': LOSSY_QUALITY}
    image.save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def local_model_card(model: str):
    """A local model directory's card (its README.md, read by huggingface_hub), or None: a hub
    id, or no card."""
    path = Path(model) / MODEL_CARD
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(path)


def model_card_summary(card) -> str:
    """The first paragraph of a model card's text (headings skipped), or '' (no card)."""
    if card is None:
        return ''
    for paragraph in re.split(r'\n\s*\n', card.text):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if lines and not lines[0].startswith('#'):
            return ' '.join(lines)[:MODEL_CARD_CHARS]
    return ''


def model_card_step_defaults(card) -> Dict:
    """The steps and guidance a model card's ``inference: parameters:`` set, by parameter name;
    {} when it sets neither (or there is no card). A value of the wrong type is a ValueError."""
    inference = {} if card is None else card.data.to_dict().get('inference')
    # ``inference: false`` (the Hub's way to turn its widget off) sets nothing.
    parameters = inference.get('parameters') if isinstance(inference, dict) else None
    parameters = parameters if isinstance(parameters, dict) else {}
    defaults = {}
    for name, kind in CARD_STEP_PARAMETERS.items():
        if name in parameters:
            value = parameters[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"the model card's inference parameter {name} must be a number, got {value!r}"
                )
            defaults[name] = kind(value)
    return defaults


def safety_marked(result) -> List:
    """A pipeline result's PIL images, each carrying the safety checker's verdict in its
    ``info`` (False for all when the pipeline checks nothing)."""
    flags = getattr(result, 'nsfw_content_detected', None) or [False] * len(result.images)
    for image, flagged in zip(result.images, flags):
        image.info[SAFETY_FLAG_INFO] = bool(flagged)
    return list(result.images)


def note_flagged_images(doc: SpeechDoc) -> None:
    """Say in the document's ``safety_note`` tag which of its images the safety checker
    flagged: they are black squares, not the picture."""
    flagged = [n for n, image in enumerate(doc.matches) if image.tags.get(SAFETY_FLAGGED_TAG)]
    if flagged:
        doc.tags[SAFETY_NOTE_TAG] = (
            f'{len(flagged)} of {len(doc.matches)} images (number '
            f"{', '.join(str(n + 1) for n in flagged)}) were flagged by the model's safety "
            'checker as possibly unsafe and are blacked out; try another prompt or seed'
        )


def few_step_defaults(model: str, pipeline) -> Optional[tuple]:
    """(steps, guidance) of a distilled few-step model, recognised by its scheduler or its
    name; None for a full-step model."""
    if type(pipeline.scheduler).__name__ == 'LCMScheduler':
        return FEW_STEP_DEFAULTS['lcm']
    name = model.lower()
    for marker, defaults in FEW_STEP_DEFAULTS.items():
        if marker in name:
            return defaults
    return None


def step_defaults(model: str, pipeline, card) -> Dict:
    """Default ``num_inference_steps`` and ``guidance_scale`` for ``model``: what its card sets,
    else few for a distilled model, else the full set."""
    steps, guidance = few_step_defaults(model, pipeline) or FULL_STEP_DEFAULTS
    return {
        'num_inference_steps': steps,
        'guidance_scale': guidance,
        **model_card_step_defaults(card),
    }


class StableDiffusionExecutor(DrainingExecutor):
    """Generates images for each document's prompt.

    Per-request parameters, each checked against this Executor's caps: ``num_images``,
    ``num_inference_steps``, ``guidance_scale``, ``width``, ``height``, ``seed``,
    ``negative_prompt``; on the stream, ``preview_every`` (steps between previews; 0: none;
    default about a quarter of the steps).
    """

    def __init__(
        self,
        model: str = 'stable-diffusion-v1-5/stable-diffusion-v1-5',
        device: str = 'auto',
        num_images: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        max_images: int = 4,
        max_inference_steps: int = 100,
        max_side: Optional[int] = None,
        scheduler: str = 'auto',
        vae_tiling: bool = False,
        compile_unet: bool = False,
        backend: str = DIFFUSION_BACKEND,
        precision: str = DIFFUSION_PRECISION,
        openvino_cache: Optional[str] = None,
        warmup: bool = True,
        max_batch_size: int = 4,
        threads: Optional[int] = None,
        drain_seconds: float = DRAIN_SECONDS,
        safety_checker: Optional[bool] = None,
        **kwargs,
    ):
        """
        :param model: diffusers checkpoint: a hub id or a local directory. A gated or private
            hub model reads its token from the ``HF_TOKEN`` environment variable.
        :param device: 'auto' (CUDA in float16 when present, else CPU in float32), 'cpu', 'cuda'.
        :param num_images: images per prompt when a request does not say.
        :param num_inference_steps: denoising steps when a request does not say; None is what
            the model's card sets (``inference: parameters:``), else 25, or 1 for Turbo and 4
            for LCM models.
        :param guidance_scale: classifier-free guidance when a request does not say; None is
            what the model's card sets, else 7.5, or 0 for Turbo and 1 for LCM models.
        :param width: image width when a request does not say; None is the model's native size.
        :param height: image height when a request does not say; None is the model's native size.
        :param max_images: cap on ``num_images`` per prompt.
        :param max_inference_steps: cap on ``num_inference_steps``.
        :param max_side: cap on ``width`` and ``height``; None is twice the model's native side.
            A step's cost grows with about the fourth power of the side (attention), and a job
            stops only between steps: the cap bounds how long a cancelled job runs on.
        :param scheduler: 'auto' (DPM-Solver++ for Stable Diffusion 1.x/2.x/XL, the checkpoint's
            own for few-step models), 'checkpoint', or 'dpm++'.
        :param vae_tiling: decode in tiles, for large images on small GPUs.
        :param compile_unet: ``torch.compile`` the UNet (slow first call, faster after; on CPU
            it needs a C++ compiler).
        :param backend: 'torch', 'openvino' (UNet, text encoder and VAE decoder compiled by
            OpenVINO inside the diffusers pipeline, on CPU, for Stable Diffusion 1.x/2.x
            checkpoints), or 'auto': OpenVINO where it runs such a checkpoint on CPU, else torch.
        :param precision: 'f32', or 'bf16' (OpenVINO on a CPU with bf16 instructions: faster,
            images differ slightly from f32's).
        :param openvino_cache: directory of converted OpenVINO models; None is
            ``$XDG_CACHE_HOME/speech2image/openvino`` (``~/.cache`` when unset).
        :param warmup: run one tiny generation at load, so the first request is not the slow one.
        :param max_batch_size: the most documents one pipeline call takes from the queue.
        :param threads: torch CPU threads for the pipeline; None is the CPUs this process may use
            (its affinity, within a cgroup CPU quota) shared equally by the local replicas.
        :param drain_seconds: on SIGTERM, how long requests in flight may take to finish.
        :param safety_checker: run the checkpoint's safety checker (True), or not (False); None
            runs it when the checkpoint has one. A flagged image is black (diffusers blanks it),
            tagged ``safety_flagged`` and explained in its document's ``safety_note`` tag.
        """
        super().__init__(**kwargs)
        self.threads = thread_count(threads, self)
        if scheduler not in SCHEDULERS:
            raise ValueError(f'scheduler must be one of {", ".join(SCHEDULERS)}, got {scheduler!r}')
        for name, value, choices in (
            ('backend', backend, DIFFUSION_BACKENDS),
            ('precision', precision, DIFFUSION_PRECISIONS),
        ):
            if value not in choices:
                raise ValueError(f'{name} must be one of {", ".join(choices)}, got {value!r}')
        self.model_name = model
        self.card = local_model_card(model)
        self.metrics = DiffusionMetrics(
            registry_of(self), [*instrumented_endpoints(type(self)), STREAM_METRICS_LABEL]
        )
        with self.metrics.model_load_seconds.time():
            self.pipeline = self.load_pipeline(model, device)
            self.configure_pipeline(scheduler, vae_tiling, compile_unet)
            self.backend = self.use_backend(backend, precision, compile_unet, openvino_cache)
        self.preview_projection = projection_for(self.pipeline)
        self.checks_safety = self.configure_safety_checker(safety_checker)
        native_side = self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        self.native_side = native_side
        model_defaults = step_defaults(model, self.pipeline, self.card)
        self.defaults = dict(
            num_images=num_images,
            num_inference_steps=num_inference_steps or model_defaults['num_inference_steps'],
            guidance_scale=model_defaults['guidance_scale']
            if guidance_scale is None
            else guidance_scale,
            width=width or native_side,
            height=height or native_side,
        )
        self.max_images = max_images
        self.max_inference_steps = max_inference_steps
        self.max_side = max_side or NATIVE_SIDES_PER_MAX_SIDE * native_side
        for name, low, high in (
            ('width', MIN_SIDE, self.max_side),
            ('height', MIN_SIDE, self.max_side),
            ('num_inference_steps', 1, self.max_inference_steps),
            ('guidance_scale', 0, MAX_GUIDANCE_SCALE),
        ):
            if not low <= self.defaults[name] <= high:
                raise ValueError(
                    f'the default {name} (an argument or the model card) must be between {low} '
                    f'and {high}, got {self.defaults[name]}'
                )
        self.image_pipeline = None  # image-to-image, made from self.pipeline when first needed
        # Every pipeline call, the warm-up included, runs on this one thread (speech2image/batching.py).
        self.worker = ModelWorker(
            self.generate_batch,
            max_batch_size,
            'diffusion-model',
            # With OpenVINO, torch runs only the scheduler's small tensor sums: one thread, so
            # that its OpenMP threads do not spin on the cores OpenVINO's threads need.
            on_start=functools.partial(
                use_torch_threads, 1 if self.backend == 'openvino' else self.threads
            ),
        )
        # One denoising step's cost at the default size, measured by the warm-up: the /info
        # endpoint gives it to clients that estimate what a size will cost (the web page).
        self.step_seconds: Optional[float] = None
        if warmup:
            self.step_seconds = self.worker.call(self.timed_warmup)
        # Watch the UNet only now: the warm-up is not traffic.
        self.metrics.watch_unet(self.pipeline.unet)
        self.start_draining_on_sigterm(drain_seconds)

    def timed_warmup(self) -> float:
        """One tiny generation of ``WARMUP_STEPS`` at the default size (on the model thread);
        returns the seconds between the ends of its last two steps: one step's cost."""
        settings = self.settings_from({'num_inference_steps': WARMUP_STEPS})
        step_ends: List[float] = []

        def on_step_end(pipeline, index: int, timestep, tensors: Dict) -> Dict:
            step_ends.append(time.perf_counter())
            return tensors

        self.run_pipeline(['warm-up'], [[0]], settings, on_step_end)
        return step_ends[-1] - step_ends[-2]

    def model_info(self) -> Dict:
        """What a client needs to offer sizes and say what draws the pictures: the model, its
        card's summary, the size it is made for, the defaults and caps, and one step's cost."""
        return {
            'model': self.model_name,
            'description': model_card_summary(self.card),
            'native_width': self.native_side,
            'native_height': self.native_side,
            'min_side': MIN_SIDE,
            'max_side': self.max_side,
            'side_multiple': SIDE_MULTIPLE,
            'max_images': self.max_images,
            'max_inference_steps': self.max_inference_steps,
            'step_seconds': self.step_seconds,
            **self.defaults,
        }

    @staticmethod
    def load_pipeline(model: str, device: str):
        import torch
        from diffusers import AutoPipelineForText2Image

        device = resolve_device(device, torch_cuda_usable)
        dtype = torch.float16 if device == 'cuda' else torch.float32
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(
                model, torch_dtype=dtype, local_files_only=hub_offline()
            )
        except Exception as error:
            raise ModelLoadError(
                f'cannot load diffusers model {model!r}: {error}. Give a local directory saved '
                'with save_pretrained(), or a hub id on a machine that can reach the hub '
                '(HF_TOKEN for gated models).'
            ) from None
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(device)

    def configure_pipeline(self, scheduler: str, vae_tiling: bool, compile_unet: bool) -> None:
        """Speed settings: scheduler, VAE memory use, and on CUDA channels-last and compile.
        Attention already uses PyTorch's fused SDPA kernels (diffusers' default on torch 2)."""
        import torch
        from diffusers import DPMSolverMultistepScheduler

        pipeline = self.pipeline
        few_step = few_step_defaults(self.model_name, pipeline) is not None
        if scheduler == 'dpm++' or (
            scheduler == 'auto' and not few_step and type(pipeline).__name__ in DPM_SOLVER_PIPELINES
        ):
            pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
                pipeline.scheduler.config, algorithm_type='dpmsolver++'
            )
        pipeline.vae.enable_slicing()  # decode a batch one image at a time: lower peak memory
        if vae_tiling:
            pipeline.vae.enable_tiling()
        if pipeline.device.type == 'cuda':
            pipeline.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            pipeline.unet = torch.compile(
                pipeline.unet, mode=COMPILE_MODES[pipeline.device.type], fullgraph=True
            )

    def configure_safety_checker(self, wanted: Optional[bool]) -> bool:
        """Keep, drop or require the checkpoint's safety checker (``wanted`` None: keep what it
        has); whether images are checked. Previews are off while they are: a preview is drawn
        from the latents, before the checker sees the image."""
        has_checker = getattr(self.pipeline, 'safety_checker', None) is not None
        if wanted and not has_checker:
            raise ModelLoadError(
                f'safety_checker is on, but {self.model_name!r} has no safety checker: serve a '
                'checkpoint that has one, or turn it off'
            )
        if has_checker and wanted is False:
            self.pipeline.safety_checker = None
        checks = has_checker and wanted is not False
        if checks:
            self.preview_projection = None
        return checks

    def use_backend(
        self, backend: str, precision: str, compile_unet: bool, cache: Optional[str]
    ) -> str:
        """Run the pipeline's networks on ``backend`` (resolving 'auto'); returns the backend
        chosen. OpenVINO replaces them inside the pipeline (speech2image/openvino_backend.py)."""
        cpu = self.pipeline.device.type == 'cpu'
        if backend == 'auto':
            supported = type(self.pipeline).__name__ == 'StableDiffusionPipeline'
            few_step = self.pipeline.unet.config.time_cond_proj_dim is not None
            backend = (
                'openvino' if cpu and supported and not few_step and not compile_unet else 'torch'
            )
        if backend == 'torch':
            if precision != 'f32':
                raise ValueError(f'precision {precision} needs the OpenVINO backend')
            return backend
        if not cpu or compile_unet:
            raise ValueError('the OpenVINO backend runs on the CPU, without compile_unet')
        from speech2image.openvino_backend import OpenVINOPipeline

        OpenVINOPipeline(self.pipeline, precision, self.threads, cache).install()
        return backend

    def settings_from(self, parameters: Dict) -> GenerationSettings:
        """Validate a request's parameters against the caps, filling in the defaults."""
        sides = {}
        for name in ('width', 'height'):
            side = int_parameter(parameters, name, self.defaults[name], MIN_SIDE, self.max_side)
            if side % SIDE_MULTIPLE:
                raise RequestError(
                    f"parameter '{name}' must be a multiple of {SIDE_MULTIPLE}, got {side}"
                )
            sides[name] = side
        return GenerationSettings(
            num_images=int_parameter(
                parameters, 'num_images', self.defaults['num_images'], 1, self.max_images
            ),
            num_inference_steps=int_parameter(
                parameters,
                'num_inference_steps',
                self.defaults['num_inference_steps'],
                1,
                self.max_inference_steps,
            ),
            guidance_scale=float_parameter(
                parameters,
                'guidance_scale',
                self.defaults['guidance_scale'],
                0.0,
                MAX_GUIDANCE_SCALE,
            ),
            seed=int_parameter(parameters, 'seed', None, 0, SEED_LIMIT - 1),
            negative_prompt=text_parameter(parameters, 'negative_prompt') or None,
            image_format=choice_parameter(parameters, 'image_format', 'png', IMAGE_FORMATS),
            **sides,
        )

    def document_settings(
        self,
        index: int,
        doc: SpeechDoc,
        parameters: Dict,
        request_settings: GenerationSettings,
        turn: Optional[PlannedTurn] = None,
    ) -> GenerationSettings:
        """A document's settings: the request's, with what its speaker said (the
        ``spoken_settings`` tag, from the WhisperExecutor) under the request's explicit ones,
        and in a conversation the previous turn's under both (its seed as the turn says)."""
        spoken = doc.tags.get(SPOKEN_SETTINGS_TAG)
        if not spoken and turn is None:
            return request_settings
        try:
            asked = parameters
            if spoken:
                asked = generation_parameters(
                    spoken,
                    parameters,
                    self.defaults,
                    self.max_images,
                    self.max_inference_steps,
                    self.max_side,
                )
            if turn is not None:
                asked = turn.settings_under(asked, spoken_seed=bool(spoken and 'seed' in spoken))
            settings = self.settings_from(asked)
        except ValueError as error:  # RequestError included
            source = 'spoken settings' if turn is None else 'conversation settings'
            raise document_error(index, doc, f'{source}: {error}') from None
        if turn is not None and turn.source_image_needed:
            settings = dataclasses.replace(settings, strength=turn.edit.strength)
        return settings

    def planned_turns(self, docs: DocList[SpeechDoc]) -> Dict[int, PlannedTurn]:
        """Each conversation turn of the request, by document index: what its text asks of the
        conversation in its tag (speech2image/conversation.py). Raises RequestError naming the
        document for a conversation it refuses or an edit it cannot apply."""
        turns = {}
        for index, doc in enumerate(docs):
            if CONVERSATION_TAG in doc.tags:
                said = check_prompt(index, doc)
                try:
                    turns[index] = plan_turn(said, doc.tags[CONVERSATION_TAG], self.max_side)
                except ValueError as error:  # ConversationError, EditError
                    raise document_error(index, doc, str(error)) from None
        return turns

    def generation_jobs(
        self,
        docs: DocList[SpeechDoc],
        parameters: Dict,
        turns: Dict[int, PlannedTurn],
        **job_fields,
    ) -> List[GenerationJob]:
        """The request's documents as jobs for the model thread, one per set of settings
        (documents differ only when their speakers said settings or are conversation turns),
        each with its docs' indices; ``job_fields`` go to every job. A turn that goes back
        draws nothing: it has no job."""
        request_settings = self.settings_from(parameters)
        prompts = [check_prompt(index, doc) for index, doc in enumerate(docs)]
        groups: Dict[GenerationSettings, List[int]] = {}
        for index, doc in enumerate(docs):
            turn = turns.get(index)
            if turn is not None:
                if turn.edit.kind == BACK:
                    continue
                prompts[index] = turn.edit.prompt
            settings = self.document_settings(index, doc, parameters, request_settings, turn)
            groups.setdefault(settings, []).append(index)
        return [
            GenerationJob(
                [prompts[i] for i in indices],
                [settings.seeds() for _ in indices],
                settings,
                indices,
                source_images=(
                    [turns[i].source_image(settings.width, settings.height) for i in indices]
                    if settings.strength is not None
                    else None
                ),
                **job_fields,
            )
            for settings, indices in groups.items()
        ]

    @requests(on=['/default', '/generate'])  # /default: jina's catch-all, so also '/'
    @instrumented
    async def generate(
        self, docs: DocList[SpeechDoc], parameters: Dict, **kwargs
    ) -> DocList[SpeechDoc]:
        """Generate ``num_images`` images per document: each job waits on the model thread,
        which may run it in one pipeline call with other requests' jobs queued beside it."""
        turns = self.planned_turns(docs)
        jobs = self.generation_jobs(docs, parameters, turns)
        try:
            results = await asyncio.gather(
                *(self.worker.run(job, job.settings.batch_key(), len(job.prompts)) for job in jobs)
            )
        except asyncio.CancelledError:  # the caller is gone (client hung up, timeout)
            self.cancel(jobs)
            raise
        # Encoding (PNG: tens of ms at 512 px) off the event loop and off the model thread.
        return await asyncio.to_thread(self.attach_images, docs, jobs, results, turns)

    @requests(on=DIFFUSION_STREAM_ENDPOINT)
    async def generate_stream(self, doc: StreamRequest, **kwargs) -> StreamEvent:
        """One document's generation as events: progress after every step, previews every
        ``preview_every`` steps, then ``done`` with its images, or one ``error``. The gateway's
        ``/stream`` calls it after Whisper; closing the stream cancels the generation."""
        with self.metrics.call(STREAM_METRICS_LABEL), self.tracking():
            try:
                async for event in self.generation_events(doc):
                    yield event
            except Exception as error:  # noqa: BLE001 - the client gets it as its error event
                self.metrics.count_error(error)
                yield StreamEvent(
                    event='error',
                    status=422 if isinstance(error, RequestError) else 500,
                    message=str(error),
                )

    async def generation_events(self, doc: StreamRequest) -> AsyncIterator[StreamEvent]:
        """``generate_stream``'s events; raises what ``generate`` would raise."""
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue = asyncio.Queue()
        docs = DocList[SpeechDoc]([doc.document()])
        turns = self.planned_turns(docs)
        jobs = self.generation_jobs(
            docs,
            doc.parameters,
            turns,
            on_step=lambda *step: loop.call_soon_threadsafe(steps.put_nowait, step),
        )
        if not jobs:  # a conversation going back: the picture is one already made
            [doc] = await asyncio.to_thread(self.attach_images, docs, [], [], turns)
            yield StreamEvent(event='done', text=doc.text, tags=doc.tags, images=doc.matches)
            return
        [job] = jobs
        default_every = max(1, round(job.settings.num_inference_steps / DEFAULT_PREVIEWS))
        job = dataclasses.replace(
            job,
            preview_every=int_parameter(
                doc.parameters, 'preview_every', default_every, 0, self.max_inference_steps
            ),
        )
        future = self.worker.submit(job, job.settings.batch_key(), len(job.prompts))
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(steps.put_nowait, None))
        try:
            while (item := await steps.get()) is not None:
                step, total, latents = item
                yield StreamEvent(event='progress', step=step, steps=total)
                if latents is not None:
                    previews = await asyncio.to_thread(self.preview_images, latents, job.settings)
                    yield StreamEvent(event='preview', step=step, steps=total, images=previews)
            images = await asyncio.wrap_future(future)
        finally:
            if not future.done():  # the stream was closed: its caller is gone
                self.cancel([job])
        [doc] = await asyncio.to_thread(self.attach_images, docs, [job], [images], turns)
        yield StreamEvent(event='done', text=doc.text, tags=doc.tags, images=doc.matches)

    def cancel(self, jobs: List[GenerationJob]) -> None:
        """Stop waiting for ``jobs``: out of the queue if not started, else skipped by the
        model thread (which stops the call once none of its jobs is wanted)."""
        for job in jobs:
            job.cancelled.set()
        self.metrics.cancelled_requests.inc()

    def preview_images(self, latents, settings: GenerationSettings) -> DocList[ImageDoc]:
        """One JPEG preview per image of a job, from its latents (images x channels x h x w)."""
        return DocList[ImageDoc](
            ImageDoc(
                bytes_=preview_jpeg(
                    image, self.preview_projection, settings.width, settings.height
                ),
                mime_type=PREVIEW_MIME_TYPE,
                width=settings.width,
                height=settings.height,
                tags={'image': number},
            )
            for number, image in enumerate(latents)
        )

    @requests(on=INFO_ENDPOINT)
    async def info(self, docs: DocList[SpeechDoc], **kwargs) -> DocList[SpeechDoc]:
        """What this Executor serves (``model_info``), in each document's ``diffusion`` tag."""
        for doc in docs:
            doc.tags[DIFFUSION_INFO_TAG] = self.model_info()
        return docs

    @requests(on='/transcribe')
    async def pass_through(self, docs: DocList[SpeechDoc], **kwargs) -> DocList[SpeechDoc]:
        """'/transcribe' stops after Whisper; this Executor hands the transcript back as is."""
        return docs

    def generate_batch(self, jobs: List[GenerationJob]) -> List[List]:
        """On the model thread: one pipeline call for every image of every job (they share a
        batch key); returns each job's PIL images, in order."""
        settings = jobs[0].settings
        prompts = [prompt for job in jobs for prompt in job.prompts]
        seeds = [doc_seeds for job in jobs for doc_seeds in job.seeds]
        sources = [image for job in jobs for image in job.source_images or ()] or None
        self.metrics.batch_documents.observe(len(prompts))
        started = time.perf_counter()
        images = self.run_pipeline(prompts, seeds, settings, self.step_callback(jobs), sources)
        self.metrics.observe_pipeline_call(
            len(images), time.perf_counter() - started, self.pipeline.device
        )
        per_job, start = [], 0
        for job in jobs:
            per_job.append(images[start : start + job.images])
            start += job.images
        return per_job

    def attach_images(
        self,
        docs: DocList[SpeechDoc],
        jobs: List[GenerationJob],
        results: List[List],
        turns: Dict[int, PlannedTurn],
    ) -> DocList[SpeechDoc]:
        """Each document's images, encoded, as its ``matches``; a conversation turn's document
        also gets what it understood and the conversation to send back."""
        for job, images in zip(jobs, results):
            images = iter(images)
            for index, prompt, doc_seeds in zip(job.indices, job.prompts, job.seeds):
                docs[index].matches = DocList[ImageDoc](
                    self.image_doc(next(images), prompt, seed, job.settings) for seed in doc_seeds
                )
                note_flagged_images(docs[index])
        for index, turn in turns.items():
            answered_turns(docs[index], turn)
        return docs

    def step_callback(self, jobs: List[GenerationJob]) -> Callable:
        """diffusers' ``callback_on_step_end`` for one call over ``jobs``: each streaming job
        hears of its step (with its own latents when a preview is due), and the call stops once
        every job is cancelled. It reads the latents and changes nothing: previews leave the
        images as they would be without."""
        spans, start = [], 0
        for job in jobs:
            spans.append((start, start + job.images))
            start += job.images

        def on_step_end(pipeline, index: int, timestep, tensors: Dict) -> Dict:
            step = index + 1
            # Image-to-image runs only the last ``strength`` of the steps.
            steps = pipeline.num_timesteps
            for job, (first, end) in zip(jobs, spans):
                if job.on_step is None or job.cancelled.is_set():
                    continue
                preview_due = (
                    self.preview_projection is not None
                    and job.preview_every
                    and step % job.preview_every == 0
                    and step < steps
                )
                latents = tensors['latents'][first:end].clone() if preview_due else None
                job.on_step(step, steps, latents)
            if all(job.cancelled.is_set() for job in jobs):
                raise GenerationCancelled(f'cancelled after step {step} of {steps}')
            return tensors

        return on_step_end

    def run_pipeline(
        self,
        prompts: List[str],
        seeds: List[List[int]],
        settings: GenerationSettings,
        on_step_end: Optional[Callable] = None,
        source_images: Optional[List] = None,
    ):
        """One pipeline call for every image of every prompt; returns PIL images in order.
        ``on_step_end`` is diffusers' ``callback_on_step_end``; with ``source_images`` (one per
        prompt) the call is image-to-image at ``settings.strength``."""
        import torch

        flat_prompts = [p for p, doc_seeds in zip(prompts, seeds) for _ in doc_seeds]
        generators = [
            torch.Generator(device='cpu').manual_seed(seed)
            for doc_seeds in seeds
            for seed in doc_seeds
        ]
        negative = (
            [settings.negative_prompt] * len(flat_prompts) if settings.negative_prompt else None
        )
        pipeline, inputs = self.pipeline, {'width': settings.width, 'height': settings.height}
        steps = settings.num_inference_steps
        if source_images is not None:
            pipeline = self.image_to_image()
            inputs = {
                'image': [i for i, doc_seeds in zip(source_images, seeds) for _ in doc_seeds],
                'strength': settings.strength,
            }
            # diffusers runs int(steps * strength) steps and refuses none: run at least one.
            steps = max(steps, math.ceil(1 / settings.strength))
        with torch.inference_mode():
            result = pipeline(
                prompt=flat_prompts,
                negative_prompt=negative,
                num_inference_steps=steps,
                guidance_scale=settings.guidance_scale,
                generator=generators,
                callback_on_step_end=on_step_end,
                **inputs,
            )
        return safety_marked(result)

    def image_to_image(self):
        """diffusers' image-to-image pipeline on this Executor's loaded components (no second
        copy of the weights), made on first use, on the model thread."""
        if self.image_pipeline is None:
            from diffusers import AutoPipelineForImage2Image

            self.image_pipeline = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            self.image_pipeline.set_progress_bar_config(disable=True)
        return self.image_pipeline

    def image_doc(self, image, prompt: str, seed: int, settings: GenerationSettings) -> ImageDoc:
        safety = {SAFETY_FLAGGED_TAG: image.info[SAFETY_FLAG_INFO]} if self.checks_safety else {}
        return ImageDoc(
            bytes_=encode_image(image, settings.image_format),
            mime_type=IMAGE_FORMATS[settings.image_format],
            width=image.width,
            height=image.height,
            tags=dict(
                prompt=prompt,
                negative_prompt=settings.negative_prompt,
                seed=seed,
                model=self.model_name,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                **safety,
                **({} if settings.strength is None else {'strength': settings.strength}),
            ),
        )
