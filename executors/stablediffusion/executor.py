"""StableDiffusionExecutor: a prompt (``doc.text``) in, PNG images (``doc.matches``) out.

Loads any diffusers text-to-image checkpoint, by hub id or local directory, through
``AutoPipelineForText2Image``. Concurrent requests with the same parameters are merged by jina's
dynamic batching into one pipeline call, so they share UNet forward passes.
"""

import io
import secrets
from dataclasses import dataclass
from typing import Dict, List, Optional

from docarray import DocList
from jina import dynamic_batching, requests

from speech2image.draining import DEFAULT_DRAIN_SECONDS, DrainingExecutor
from speech2image.schema import ImageDoc, SpeechDoc
from speech2image.hub import ModelLoadError, hub_offline
from speech2image.metrics import DiffusionMetrics, registry_of
from speech2image.validation import (
    RequestError,
    check_prompt,
    float_parameter,
    int_parameter,
)

# Seeds fit a signed 32-bit int: docarray's protobuf stores tag integers as int32, and a value
# that fails to serialise inside jina's batch queue hangs the request instead of failing it.
SEED_LIMIT = 2**31
SIDE_MULTIPLE = 8  # the VAE downsamples by 8
MIN_SIDE = 64
MAX_GUIDANCE_SCALE = 30.0



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

    def seeds(self) -> List[int]:
        """One seed per image: ``seed``, ``seed + 1``, ... when given, else random ones.
        Each is recorded on its image, so any image can be made again."""
        if self.seed is None:
            return [secrets.randbelow(SEED_LIMIT) for _ in range(self.num_images)]
        return [(self.seed + offset) % SEED_LIMIT for offset in range(self.num_images)]



def encode_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


class StableDiffusionExecutor(DrainingExecutor):
    """Generates images for each document's prompt.

    Per-request parameters, each checked against this Executor's caps: ``num_images``,
    ``num_inference_steps``, ``guidance_scale``, ``width``, ``height``, ``seed``,
    ``negative_prompt``.
    """

    def __init__(
        self,
        model: str = 'stable-diffusion-v1-5/stable-diffusion-v1-5',
        device: str = 'auto',
        num_images: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        width: Optional[int] = None,
        height: Optional[int] = None,
        max_images: int = 4,
        max_inference_steps: int = 100,
        max_side: int = 1024,
        drain_seconds: float = DEFAULT_DRAIN_SECONDS,
        **kwargs,
    ):
        """
        :param model: diffusers checkpoint: a hub id or a local directory. A gated or private
            hub model reads its token from the ``HF_TOKEN`` environment variable.
        :param device: 'auto' (CUDA in float16 when present, else CPU in float32), 'cpu', 'cuda'.
        :param num_images: images per prompt when a request does not say.
        :param num_inference_steps: denoising steps when a request does not say.
        :param guidance_scale: classifier-free guidance when a request does not say.
        :param width: image width when a request does not say; None is the model's native size.
        :param height: image height when a request does not say; None is the model's native size.
        :param max_images: cap on ``num_images`` per prompt.
        :param max_inference_steps: cap on ``num_inference_steps``.
        :param max_side: cap on ``width`` and ``height``.
        :param drain_seconds: on SIGTERM, how long requests in flight may take to finish.
        """
        super().__init__(**kwargs)
        self.model_name = model
        self.pipeline = self.load_pipeline(model, device)
        native_side = self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        self.defaults = dict(
            num_images=num_images,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width or native_side,
            height=height or native_side,
        )
        self.max_images = max_images
        self.max_inference_steps = max_inference_steps
        self.max_side = max_side
        self.metrics = DiffusionMetrics(registry_of(self))
        self.start_draining_on_sigterm(drain_seconds)

    @staticmethod
    def load_pipeline(model: str, device: str):
        import torch
        from diffusers import AutoPipelineForText2Image

        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
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
        negative_prompt = parameters.get('negative_prompt')
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise RequestError(f"parameter 'negative_prompt' must be a string, got {negative_prompt!r}")
        return GenerationSettings(
            num_images=int_parameter(
                parameters, 'num_images', self.defaults['num_images'], 1, self.max_images
            ),
            num_inference_steps=int_parameter(
                parameters, 'num_inference_steps', self.defaults['num_inference_steps'],
                1, self.max_inference_steps,
            ),
            guidance_scale=float_parameter(
                parameters, 'guidance_scale', self.defaults['guidance_scale'],
                0.0, MAX_GUIDANCE_SCALE,
            ),
            seed=int_parameter(parameters, 'seed', None, 0, SEED_LIMIT - 1),
            negative_prompt=negative_prompt or None,
            **sides,
        )

    @requests(on=['/default', '/generate'])  # /default: jina's catch-all, so also '/'
    @dynamic_batching(preferred_batch_size=4, timeout=50)
    def generate(self, docs: DocList[SpeechDoc], parameters: Dict, **kwargs) -> DocList[SpeechDoc]:
        """Generate ``num_images`` images per document in one pipeline call for the batch."""
        settings = self.settings_from(parameters)
        prompts = [check_prompt(index, doc) for index, doc in enumerate(docs)]
        self.metrics.batch_documents.observe(len(docs))
        seeds = [settings.seeds() for _ in docs]
        images = iter(self.run_pipeline(prompts, seeds, settings))
        for doc, prompt, doc_seeds in zip(docs, prompts, seeds):
            doc.matches = DocList[ImageDoc](
                self.image_doc(next(images), prompt, seed, settings) for seed in doc_seeds
            )
        return docs

    @requests(on='/transcribe')
    def pass_through(self, docs: DocList[SpeechDoc], **kwargs) -> DocList[SpeechDoc]:
        """'/transcribe' stops after Whisper; this Executor hands the transcript back as is."""
        return docs

    def run_pipeline(self, prompts: List[str], seeds: List[List[int]], settings: GenerationSettings):
        """One pipeline call for every image of every prompt; returns PIL images in order."""
        import torch

        flat_prompts = [p for p, doc_seeds in zip(prompts, seeds) for _ in doc_seeds]
        generators = [
            torch.Generator(device='cpu').manual_seed(seed) for doc_seeds in seeds for seed in doc_seeds
        ]
        negative = [settings.negative_prompt] * len(flat_prompts) if settings.negative_prompt else None
        with torch.inference_mode():
            result = self.pipeline(
                prompt=flat_prompts,
                negative_prompt=negative,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
                width=settings.width,
                height=settings.height,
                generator=generators,
            )
        return list(result.images)

    def image_doc(self, image, prompt: str, seed: int, settings: GenerationSettings) -> ImageDoc:
        return ImageDoc(
            bytes_=encode_png(image),
            width=image.width,
            height=image.height,
            tags=dict(
                prompt=prompt,
                negative_prompt=settings.negative_prompt,
                seed=seed,
                model=self.model_name,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale,
            ),
        )
