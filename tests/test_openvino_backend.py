"""The diffusion Executor's OpenVINO backend (speech2image/openvino_backend.py) on the tiny
offline model: the same images as torch, every request parameter and scheduler, progress,
previews and cancelling at a step, the converted models' cache, and refused combinations.

The Flow tests (streaming, protocols, cancelling) run the default backend, which on this CPU is
OpenVINO; this file compares it with torch in one process."""

import asyncio
import io

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from jina import Executor
from PIL import Image

from devtools.offline_flow import TINY_SD
from speech2image.openvino_backend import OpenVINOPipeline
from speech2image.schema import SpeechDoc, StreamRequest
from tests.support import call_endpoint

CONFIG = 'executors/stablediffusion/config.yml'
# A batch of two prompts, two images each, at a size other than the native one, with a
# negative prompt and guidance: every input the pipeline passes to the three networks.
REQUEST = {
    'seed': 7,
    'num_images': 2,
    'width': 96,
    'height': 64,
    'negative_prompt': 'blurry',
    'guidance_scale': 3.0,
    'num_inference_steps': 4,
}
PROMPTS = ['a red apple', 'a boat on the sea']


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """One cache for the module: the tiny model is converted once."""
    return tmp_path_factory.mktemp('openvino-cache')


def executor(cache, **arguments):
    return Executor.load_config(
        CONFIG, uses_with={'model': str(TINY_SD), 'openvino_cache': str(cache), **arguments}
    )


@pytest.fixture(scope='module')
def executors(cache):
    """The torch and OpenVINO f32 Executors of each scheduler the Executor offers."""
    return {
        (backend, scheduler): executor(cache, backend=backend, scheduler=scheduler)
        for scheduler in ('checkpoint', 'dpm++')
        for backend in ('torch', 'openvino')
    }


def pixels(image_doc) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_doc.bytes_)), dtype=np.int16)


def images(executor, parameters=REQUEST) -> list:
    docs = call_endpoint(
        executor, 'generate', [SpeechDoc(text=text) for text in PROMPTS], parameters
    )
    return [pixels(image) for doc in docs for image in doc.matches]


@pytest.mark.parametrize('scheduler', ['checkpoint', 'dpm++'])
def test_f32_images_equal_torchs_within_one_level(executors, scheduler):
    torch_images = images(executors['torch', scheduler])
    openvino_images = images(executors['openvino', scheduler])
    assert executors['openvino', scheduler].backend == 'openvino'
    assert len(openvino_images) == 4 and openvino_images[0].shape == (64, 96, 3)
    for ours, theirs in zip(openvino_images, torch_images):
        assert np.abs(ours - theirs).max() <= 1
    # Not one image over and over: the seeds and prompts reach OpenVINO.
    assert np.abs(openvino_images[0] - openvino_images[1]).max() > 1
    assert np.abs(openvino_images[0] - openvino_images[2]).max() > 1


def test_auto_is_openvino_on_this_cpu(cache):
    assert executor(cache, warmup=False).backend == 'openvino'


def test_progress_previews_and_cancel_at_a_step(executors):
    """``callback_on_step_end`` runs on OpenVINO as on torch: a progress event every step,
    previews when due, the same final images as ``/generate``; closing the stream stops the
    call at the step it is on."""
    diffusion = executors['openvino', 'dpm++']
    parameters = {'seed': 3, 'num_inference_steps': 4, 'preview_every': 2}

    async def events(parameters, stop_after=None):
        seen = []
        stream = diffusion.generate_stream(StreamRequest(text='a red apple', parameters=parameters))
        async for event in stream:
            seen.append(event)
            if stop_after is not None and event.event == 'progress' and event.step == stop_after:
                await stream.aclose()
                break
        return seen

    seen = asyncio.run(events(parameters))
    assert [(event.event, event.step) for event in seen] == [
        ('progress', 1),
        ('progress', 2),
        ('preview', 2),
        ('progress', 3),
        ('progress', 4),
        ('done', None),
    ]
    [done] = [event for event in seen if event.event == 'done']
    [alone] = call_endpoint(diffusion, 'generate', [SpeechDoc(text='a red apple')], parameters)
    assert done.images[0].bytes_ == alone.matches[0].bytes_

    long = {'seed': 3, 'num_inference_steps': 50}
    steps = []
    hook = diffusion.pipeline.unet.register_forward_pre_hook(lambda *_: steps.append(1))
    try:
        asyncio.run(events(long, stop_after=1))
        diffusion.worker.call(lambda: None)  # the model thread is done with the cancelled call
    finally:
        hook.remove()
    assert len(steps) < long['num_inference_steps']


def test_bf16_makes_images_close_to_f32(cache, executors):
    """bf16 runs where the CPU has bf16 instructions (this one does); its images are not f32's
    but are of the same picture."""
    bf16 = images(executor(cache, precision='bf16', scheduler='dpm++'))
    f32 = images(executors['openvino', 'dpm++'])
    for ours, theirs in zip(bf16, f32):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).mean() < 16


def tiny_pipeline():
    pipeline = StableDiffusionPipeline.from_pretrained(TINY_SD)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_a_restart_reads_the_converted_models_from_the_cache(tmp_path):
    """The first load converts the three networks; another (a restart) converts none; changed
    weights (a checkpoint retrained in place) convert again."""
    first = OpenVINOPipeline(tiny_pipeline(), 'f32', 1, tmp_path).install()
    assert {'unet_convert_s', 'text_encoder_convert_s', 'vae_decoder_convert_s'} <= set(first)
    again = OpenVINOPipeline(tiny_pipeline(), 'f32', 1, tmp_path).install()
    assert not [name for name in again if name.endswith('_convert_s')]
    retrained = tiny_pipeline()
    with torch.no_grad():
        next(retrained.unet.parameters()).add_(0.01)
    changed = OpenVINOPipeline(retrained, 'f32', 1, tmp_path).install()
    assert [name for name in changed if name.endswith('_convert_s')] == ['unet_convert_s']


@pytest.mark.parametrize(
    'arguments, message',
    [
        ({'backend': 'onnx'}, 'backend must be one of auto, torch, openvino'),
        ({'precision': 'f16'}, 'precision must be one of f32, bf16'),
        ({'backend': 'torch', 'precision': 'bf16'}, 'precision bf16 needs the OpenVINO backend'),
        ({'backend': 'openvino', 'compile_unet': True}, 'without compile_unet'),
    ],
)
def test_refused_combinations_say_why(cache, arguments, message):
    with pytest.raises(Exception, match=message):
        executor(cache, warmup=False, **arguments)
