"""StableDiffusionExecutor on the tiny offline model, loaded through its config.yml."""

import asyncio
import io
import threading

import numpy as np
import pytest
from docarray import DocList
from jina import Executor
from PIL import Image

from devtools.offline_flow import TINY_SD
from speech2image.hub import ModelLoadError
from speech2image.schema import SpeechDoc
from speech2image.validation import RequestError
from tests.support import call_endpoint

CONFIG = 'executors/stablediffusion/config.yml'
FAST = {'num_inference_steps': 2}


@pytest.fixture(scope='module')
def diffusion():
    return Executor.load_config(CONFIG, uses_with={'model': str(TINY_SD)})


def generate(executor, texts, **parameters):
    docs = [SpeechDoc(text=text) for text in texts]
    return call_endpoint(executor, 'generate', docs, {**FAST, **parameters})


def test_images_are_pngs_with_their_parameters(diffusion):
    [doc] = generate(
        diffusion,
        ['a red apple'],
        num_images=3,
        seed=10,
        width=96,
        height=64,
        guidance_scale=3.0,
        negative_prompt='blurry',
    )
    assert [image.tags['seed'] for image in doc.matches] == [10, 11, 12]
    for image in doc.matches:
        decoded = Image.open(io.BytesIO(image.bytes_))
        assert decoded.format == 'PNG' and decoded.size == (96, 64)
        assert (image.width, image.height, image.mime_type) == (96, 64, 'image/png')
        assert image.tags == {
            'prompt': 'a red apple',
            'negative_prompt': 'blurry',
            'seed': image.tags['seed'],
            'model': str(TINY_SD),
            'num_inference_steps': 2,
            'guidance_scale': 3.0,
        }


def batch_calls(executor) -> float:
    """Pipeline calls the Executor has made for requests so far (its batch-size histogram)."""
    [family] = executor.metrics.batch_documents.collect()
    return next(sample.value for sample in family.samples if sample.name.endswith('_count'))


def test_queued_requests_share_calls_on_the_one_model_thread(diffusion):
    """Every pipeline call runs on the Executor's model thread, and requests that arrive while
    it is busy share its next call, each with its own seed."""
    threads = []
    hook = diffusion.pipeline.unet.register_forward_pre_hook(
        lambda *_: threads.append(threading.current_thread().name)
    )
    calls_before = batch_calls(diffusion)

    async def concurrently():
        return await asyncio.gather(
            *(
                diffusion.generate(
                    docs=DocList[SpeechDoc]([SpeechDoc(text=f'prompt {seed}')]),
                    parameters={**FAST, 'seed': seed},
                )
                for seed in range(3)
            )
        )

    try:
        answers = asyncio.run(concurrently())
    finally:
        hook.remove()
    assert [[image.tags['seed'] for image in doc.matches] for [doc] in answers] == [[0], [1], [2]]
    assert set(threads) == {'diffusion-model'}
    assert batch_calls(diffusion) - calls_before <= 2  # the first alone at most, then the rest


def test_same_seed_same_image_other_seed_other_image(diffusion):
    first = generate(diffusion, ['a boat'], seed=123)[0].matches[0].bytes_
    again = generate(diffusion, ['a boat'], seed=123)[0].matches[0].bytes_
    other = generate(diffusion, ['a boat'], seed=124)[0].matches[0].bytes_
    assert first == again
    assert first != other


def pixels(image_doc) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_doc.bytes_)), dtype=np.int16)


def test_a_seeded_image_is_reproducible_from_its_tags(diffusion):
    """Image k of a seeded request can be made again alone from the seed in its tags. Batched
    and single runs round differently in float32, so a few pixel values may differ by one."""
    [doc] = generate(diffusion, ['a boat'], seed=50, num_images=2)
    second = doc.matches[1]
    [alone] = generate(diffusion, ['a boat'], seed=second.tags['seed'])
    difference = np.abs(pixels(alone.matches[0]) - pixels(second))
    assert difference.max() <= 1
    other = generate(diffusion, ['a boat'], seed=51 + 7)[0].matches[0]
    assert np.abs(pixels(other) - pixels(second)).max() > 1


def test_unseeded_images_get_distinct_recorded_seeds(diffusion):
    [doc] = generate(diffusion, ['a cat'], num_images=2)
    seeds = [image.tags['seed'] for image in doc.matches]
    assert seeds[0] != seeds[1] and all(0 <= seed < 2**31 for seed in seeds)


def test_defaults_are_the_models_native_size(diffusion):
    [doc] = generate(diffusion, ['a cat'])
    assert (doc.matches[0].width, doc.matches[0].height) == (64, 64)
    assert len(doc.matches) == 1


def test_integral_floats_are_accepted_as_integers(diffusion):
    """gRPC parameters arrive as protobuf doubles: 2.0 means 2."""
    [doc] = generate(diffusion, ['a cat'], num_images=2.0, seed=5.0)
    assert [image.tags['seed'] for image in doc.matches] == [5, 6]


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'num_images': 0}, "'num_images' must be between 1 and 4, got 0"),
        ({'num_images': 5}, "'num_images' must be between 1 and 4, got 5"),
        ({'num_images': 2.5}, "'num_images' must be an integer, got 2.5"),
        ({'num_images': 'two'}, "'num_images' must be an integer, got 'two'"),
        ({'num_images': True}, "'num_images' must be an integer, got True"),
        ({'num_inference_steps': 0}, "'num_inference_steps' must be between 1 and 100"),
        ({'num_inference_steps': 1000}, "'num_inference_steps' must be between 1 and 100"),
        ({'guidance_scale': -1}, "'guidance_scale' must be between 0 and 30, got -1"),
        ({'guidance_scale': float('nan')}, "'guidance_scale' must be a number"),
        ({'guidance_scale': 'high'}, "'guidance_scale' must be a number"),
        ({'width': 136}, "'width' must be between 64 and 128"),
        ({'height': 32}, "'height' must be between 64 and 128"),
        ({'width': 100}, "'width' must be a multiple of 8, got 100"),
        ({'seed': -1}, "'seed' must be between 0 and 2147483647"),
        ({'seed': 2**31}, "'seed' must be between 0 and 2147483647"),
        ({'negative_prompt': 7}, "'negative_prompt' must be a string"),
    ],
)
def test_bad_parameters_name_the_parameter(diffusion, parameters, message):
    with pytest.raises(RequestError, match=message.replace('(', r'\(').replace(')', r'\)')):
        generate(diffusion, ['a cat'], **parameters)


def test_empty_prompt_names_the_document(diffusion):
    with pytest.raises(RequestError, match=r'document 1 \(id \w+\): no prompt'):
        generate(diffusion, ['a cat', '   '])


def test_caps_come_from_the_configuration():
    capped = Executor.load_config(CONFIG, uses_with={'model': str(TINY_SD), 'max_images': 2})
    with pytest.raises(RequestError, match="'num_images' must be between 1 and 2, got 3"):
        generate(capped, ['a cat'], num_images=3)


def test_unavailable_model_fails_fast_with_its_name():
    with pytest.raises(ModelLoadError, match="diffusers model 'no-org/no-model'"):
        Executor.load_config(CONFIG, uses_with={'model': 'no-org/no-model'})


@pytest.mark.parametrize(
    'image_format, mime_type', [('jpeg', 'image/jpeg'), ('webp', 'image/webp')]
)
def test_lossy_formats_on_request(diffusion, image_format, mime_type):
    [doc] = generate(diffusion, ['a cat'], seed=1, image_format=image_format)
    image = doc.matches[0]
    assert image.mime_type == mime_type
    assert Image.open(io.BytesIO(image.bytes_)).format == image_format.upper()


def test_unknown_image_format(diffusion):
    with pytest.raises(
        RequestError, match="parameter 'image_format' must be one of jpeg, png, webp; got 'gif'"
    ):
        generate(diffusion, ['a cat'], image_format='gif')


def test_full_step_models_get_dpm_solver_and_full_step_defaults(diffusion):
    assert type(diffusion.pipeline.scheduler).__name__ == 'DPMSolverMultistepScheduler'
    assert diffusion.pipeline.scheduler.config.algorithm_type == 'dpmsolver++'
    assert (diffusion.defaults['num_inference_steps'], diffusion.defaults['guidance_scale']) == (
        25,
        7.5,
    )


def test_few_step_models_are_recognised_by_name(tmp_path):
    """A checkpoint named like SD-Turbo gets 1 step and no guidance, and keeps its scheduler."""
    turbo = tmp_path / 'my-sd-turbo'
    turbo.symlink_to(TINY_SD)
    executor = Executor.load_config(CONFIG, uses_with={'model': str(turbo), 'warmup': False})
    assert (executor.defaults['num_inference_steps'], executor.defaults['guidance_scale']) == (
        1,
        0.0,
    )
    [doc] = generate(executor, ['a cat'], num_inference_steps=None)
    assert doc.matches[0].tags['num_inference_steps'] == 1
    assert doc.matches[0].tags['guidance_scale'] == 0.0


def model_with_card(tmp_path, card: str):
    """The tiny model's components under a directory whose README.md is ``card``."""
    model = tmp_path / 'carded-model'
    model.mkdir()
    for component in TINY_SD.iterdir():
        (model / component.name).symlink_to(component.resolve())
    (model / 'README.md').write_text(card)
    return model


def test_a_model_card_sets_the_model_own_defaults_and_says_what_it_draws(tmp_path):
    """A card's ``inference: parameters:`` win over the full-step defaults; a flag and a
    request still win over the card; the card's first paragraph is the model's description."""
    model = model_with_card(
        tmp_path,
        '---\ninference:\n  parameters:\n    guidance_scale: 3\n    num_inference_steps: 12\n'
        '---\n# carded\n\nDraws tiny noise.\n\nMore.\n',
    )
    executor = Executor.load_config(CONFIG, uses_with={'model': str(model), 'warmup': False})
    assert (executor.defaults['num_inference_steps'], executor.defaults['guidance_scale']) == (
        12,
        3.0,
    )
    assert executor.model_info()['description'] == 'Draws tiny noise.'
    [doc] = generate(executor, ['a cat'], num_inference_steps=None)
    assert doc.matches[0].tags['guidance_scale'] == 3.0
    assert doc.matches[0].tags['num_inference_steps'] == 12
    [doc] = generate(executor, ['a cat'], guidance_scale=5.0)
    assert doc.matches[0].tags['guidance_scale'] == 5.0
    flagged = Executor.load_config(
        CONFIG, uses_with={'model': str(model), 'warmup': False, 'guidance_scale': 6.0}
    )
    assert flagged.defaults['guidance_scale'] == 6.0


@pytest.mark.parametrize(
    'parameters, error',
    [
        ('guidance_scale: high', "inference parameter guidance_scale must be a number, got 'high'"),
        (
            'guidance_scale: 40',
            'the default guidance_scale .* must be between 0 and 30.0, got 40.0',
        ),
        ('num_inference_steps: 0', 'the default num_inference_steps .* must be between 1 and 100'),
    ],
)
def test_a_model_card_with_a_wrong_default_is_refused_naming_it(tmp_path, parameters, error):
    model = model_with_card(
        tmp_path, f'---\ninference:\n  parameters:\n    {parameters}\n---\nA model.\n'
    )
    with pytest.raises(Exception, match=error):
        Executor.load_config(CONFIG, uses_with={'model': str(model), 'warmup': False})


def test_unknown_scheduler_is_refused():
    with pytest.raises(Exception, match='scheduler must be one of auto, checkpoint, dpm\\+\\+'):
        Executor.load_config(CONFIG, uses_with={'model': str(TINY_SD), 'scheduler': 'ddim'})
