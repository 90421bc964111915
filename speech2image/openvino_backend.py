"""OpenVINO for a diffusers Stable Diffusion pipeline on CPU: its UNet, text encoder and VAE
decoder run as OpenVINO models inside the diffusers pipeline itself.

Only the three networks change: the pipeline's own denoising loop, scheduler, guidance, seeds
(torch generators), negative prompts, sizes and ``callback_on_step_end`` (progress, previews,
cancelling at a step) stay diffusers' code, so every scheduler and request parameter works as
on torch. The UNet and the text encoder keep their torch objects (their configs, and forward
hooks such as the step metrics) with ``forward`` running the OpenVINO model and their weights
freed; the VAE's decoder network is replaced by an OpenVINO module, its encoder stays torch.

Each network is converted once (``openvino.convert_model`` of the torch module, with dynamic
batch and sizes: one model serves every size the Executor accepts) and saved under the cache
directory, named by a digest of its weights, its configuration and the library versions, so a
restart reads it instead of converting again. OpenVINO's own model cache (``CACHE_DIR``) keeps
the compiled form, which OpenVINO keys by the model, the precision and the threads.

Imported only when the backend is chosen: it imports torch, diffusers and openvino.
"""

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional

import diffusers
import openvino_telemetry.utils.opt_in_checker as telemetry_consent
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers.modeling_outputs import BaseModelOutputWithPooling

# OpenVINO's converter sends usage telemetry (Google Analytics), from its import on, unless the
# user opted out beforehand; a service must not call out: declined here, before openvino loads.
telemetry_consent.OptInChecker.check = lambda *args, **kwargs: (
    telemetry_consent.ConsentCheckResult.DECLINED
)

import openvino  # noqa: E402 - after the telemetry consent above

PRECISIONS = ('f32', 'bf16')
DEVICE = 'CPU'
# Pipelines whose UNet, text encoder and VAE the conversions below fit.
SUPPORTED_PIPELINES = ('StableDiffusionPipeline',)
# Values sampled from each weight tensor for the cache key: the key changes with the weights
# (a checkpoint retrained in the same directory) without hashing all of a large model.
KEY_SAMPLES_PER_TENSOR = 64
MODEL_FILE = 'model.xml'
COMPILED_CACHE = 'compiled'
EXAMPLE_BATCH = 2  # conversion traces one batch; the converted model takes any
EXAMPLE_TIMESTEP = 500.0

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where converted models live unless told otherwise: the user's cache directory
    (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'speech2image' / 'openvino'


def check_precision(precision: str) -> None:
    """Refuse a precision OpenVINO cannot run here: an unknown name, or bf16 on a CPU without
    bf16 instructions (AVX512-BF16 or AMX)."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    capabilities = openvino.Core().get_property(DEVICE, 'OPTIMIZATION_CAPABILITIES')
    if precision == 'bf16' and 'BF16' not in capabilities:
        raise ValueError(
            'precision bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX); '
            'this one has none: use f32'
        )


def weights_key(module: torch.nn.Module, extra: Dict) -> str:
    """A hex digest of ``module``'s weights (names, shapes, dtypes and a strided sample of each
    tensor), its class and ``extra`` (configuration, versions)."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    digest.update(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // KEY_SAMPLES_PER_TENSOR)
        digest.update(f'{name}{tuple(tensor.shape)}{tensor.dtype}'.encode())
        digest.update(flat[::stride].float().numpy().tobytes())
    return digest.hexdigest()[:24]


class UNetStep(torch.nn.Module):
    """A diffusers UNet as (latents, one timestep per latent, text embeddings) -> predicted
    noise: the graph OpenVINO converts."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    def example_input(self, text_length: int):
        config = self.unet.config
        side = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        return (
            torch.randn(EXAMPLE_BATCH, config.in_channels, side, side),
            torch.full((EXAMPLE_BATCH,), EXAMPLE_TIMESTEP),
            torch.randn(EXAMPLE_BATCH, text_length, config.cross_attention_dim),
        )


class TextEncoding(torch.nn.Module):
    """CLIP's text encoder as token ids -> (last hidden state, pooled output)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        hidden, pooled = self.text_encoder(input_ids, return_dict=False)[:2]
        return hidden, pooled


def decoder_example(vae):
    """Latents of the VAE's native size, for tracing its decoder."""
    config = vae.config
    side = config.sample_size // 2 ** (len(config.block_out_channels) - 1)
    return (torch.randn(1, config.latent_channels, side, side),)


def run(request, *inputs: torch.Tensor):
    """One inference of ``request`` on torch tensors; its outputs as torch tensors (copied: the
    request reuses its buffers)."""
    outputs = request.infer([tensor.contiguous().numpy() for tensor in inputs], share_outputs=False)
    return [torch.from_numpy(outputs[index]) for index in range(len(outputs))]


class OpenVINODecoder(torch.nn.Module):
    """The VAE's decoder network (latents -> pixels in [-1, 1]) as an OpenVINO model; the VAE
    around it (scaling, slicing, tiling) stays diffusers' own."""

    def __init__(self, compiled):
        super().__init__()
        self.request = compiled.create_infer_request()

    def forward(self, latents, latent_embeds=None):
        if latent_embeds is not None:
            raise ValueError('the OpenVINO VAE decoder takes no latent embeddings')
        [pixels] = run(self.request, latents.float())
        return pixels


def release_weights(module: torch.nn.Module) -> None:
    """Free ``module``'s weights, which OpenVINO now holds, keeping their dtype and device (the
    pipeline reads both from its modules: 'meta' would move its latents off the CPU)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def hook_unet(unet, compiled) -> None:
    """Make ``unet`` (the pipeline's torch module) run ``compiled``, and free its weights. The
    pipeline still calls the same object, so its config, dtype and forward hooks stay."""
    request = compiled.create_infer_request()

    def forward(sample, timestep, encoder_hidden_states, return_dict=True, **extra):
        given = sorted(name for name, value in extra.items() if value is not None)
        if given:
            raise ValueError(f'the OpenVINO UNet takes no {", ".join(given)}')
        timesteps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        timesteps = timesteps.expand(sample.shape[0])
        [noise] = run(request, sample.float(), timesteps, encoder_hidden_states.float())
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    unet.forward = forward
    release_weights(unet)


def hook_text_encoder(text_encoder, compiled) -> None:
    """Make ``text_encoder`` (CLIP's, torch) run ``compiled``, and free its weights; the
    pipeline reads its first output, the hidden states, as the prompt embeddings."""
    request = compiled.create_infer_request()

    def forward(input_ids, attention_mask=None, output_hidden_states=None, **extra):
        if attention_mask is not None or output_hidden_states:
            raise ValueError('the OpenVINO text encoder takes no attention mask or hidden states')
        hidden, pooled = run(request, input_ids.long())
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    text_encoder.forward = forward
    release_weights(text_encoder)


def converted(name: str, module: torch.nn.Module, example_input, config: Dict, cache_dir: Path):
    """The file of ``module`` converted to OpenVINO, converted now unless ``cache_dir`` holds it
    (its key: the weights, ``config`` (the network's configuration) and the library versions);
    returns (path, seconds the conversion took, or None on a cache hit)."""
    versions = {'openvino': openvino.__version__, 'diffusers': diffusers.__version__}
    # Private entries ('_name_or_path', ...) say where the model was read from, not what it is.
    config = {entry: value for entry, value in config.items() if not entry.startswith('_')}
    key = weights_key(module, {'network': name, 'config': config, **versions})
    path = cache_dir / f'{name}-{key}' / MODEL_FILE
    if path.exists():
        return path, None
    started = time.perf_counter()
    with torch.no_grad():
        model = openvino.convert_model(module, example_input=example_input)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named per process: replicas starting together may convert side by side.
    partial = path.with_name(f'partial-{os.getpid()}.xml')
    # Full-precision weights: the precision is chosen when compiling, not here.
    openvino.save_model(model, partial, compress_to_fp16=False)
    partial.with_suffix('.bin').rename(path.with_suffix('.bin'))
    partial.rename(path)  # renamed last: a half-written model is converted again
    return path, time.perf_counter() - started


def compiled(path: Path, precision: str, threads: int, cache_dir: Path, shapes=None):
    """The converted model at ``path`` compiled for this CPU at ``precision`` with ``threads``
    threads; OpenVINO keeps the compiled form under ``cache_dir`` for the next time. ``shapes``
    (one per input) fixes the input shapes, which are otherwise dynamic."""
    config = {
        'INFERENCE_PRECISION_HINT': precision,
        'INFERENCE_NUM_THREADS': threads,
        'CACHE_DIR': str(cache_dir / COMPILED_CACHE),
    }
    core = openvino.Core()
    model = core.read_model(str(path))
    if shapes:
        model.reshape({index: list(shape) for index, shape in enumerate(shapes)})
    return core.compile_model(model, DEVICE, config)


class OpenVINOPipeline:
    """Converts (or reads from the cache), compiles and hooks in the three networks of one
    Stable Diffusion pipeline."""

    def __init__(self, pipeline, precision: str, threads: int, cache_dir: Optional[Path] = None):
        """:param pipeline: a diffusers StableDiffusionPipeline on the CPU, in float32.
        :param precision: 'f32' or 'bf16' (OpenVINO's inference precision).
        :param threads: OpenVINO's CPU threads.
        :param cache_dir: where converted and compiled models are kept; None: ``default_cache_dir()``.
        """
        name = type(pipeline).__name__
        if name not in SUPPORTED_PIPELINES:
            raise ValueError(
                f'the OpenVINO backend runs {", ".join(SUPPORTED_PIPELINES)}; this model loads '
                f'as {name}: use the torch backend'
            )
        if pipeline.unet.config.time_cond_proj_dim is not None:
            raise ValueError(
                'the OpenVINO backend does not run UNets with a guidance embedding (LCM): '
                'use the torch backend'
            )
        check_precision(precision)
        self.pipeline = pipeline
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # Seconds each network took to convert (absent when read from the cache) and compile.
        self.timings: Dict[str, float] = {}

    def network(self, name: str, module: torch.nn.Module, example_input, config: Dict):
        """``module`` converted (unless cached) and compiled, its seconds in ``timings``."""
        path, seconds = converted(name, module, example_input, config, self.cache_dir)
        if seconds is not None:
            self.timings[f'{name}_convert_s'] = seconds
        started = time.perf_counter()
        network = compiled(path, self.precision, self.threads, self.cache_dir)
        self.timings[f'{name}_compile_s'] = time.perf_counter() - started
        return network

    def install(self) -> Dict[str, float]:
        """Hook the three compiled networks into the pipeline; returns the seconds spent on
        each conversion (none when all came from the cache) and compilation."""
        pipeline = self.pipeline
        text_length = pipeline.tokenizer.model_max_length
        step = UNetStep(pipeline.unet)
        unet = self.network(
            'unet', step, step.example_input(text_length), dict(pipeline.unet.config)
        )
        encoder = self.network(
            'text_encoder',
            TextEncoding(pipeline.text_encoder),
            (torch.zeros(1, text_length, dtype=torch.int64),),
            pipeline.text_encoder.config.to_dict(),
        )
        decoder = self.network(
            'vae_decoder',
            pipeline.vae.decoder,
            decoder_example(pipeline.vae),
            dict(pipeline.vae.config),
        )
        hook_unet(pipeline.unet, unet)
        hook_text_encoder(pipeline.text_encoder, encoder)
        pipeline.vae.decoder = OpenVINODecoder(decoder)
        logger.info('OpenVINO %s: %s', self.precision, self.timings)
        return self.timings
