"""StableDiffusionExecutor on the tiny model: a document's spoken settings, under the request's."""

import pytest
from jina import Executor

from devtools.offline_flow import TINY_SD
from speech2image.schema import SpeechDoc
from speech2image.validation import RequestError
from tests.support import call_endpoint

CONFIG = 'executors/stablediffusion/config.yml'


@pytest.fixture(scope='module')
def diffusion():
    return Executor.load_config(
        CONFIG, uses_with={'model': str(TINY_SD), 'num_inference_steps': 2, 'max_images': 3}
    )


def spoken_doc(text: str, **settings) -> SpeechDoc:
    return SpeechDoc(text=text, tags={'spoken_settings': settings})


def generate(executor, docs, **parameters):
    return call_endpoint(executor, 'generate', docs, parameters)


def test_spoken_settings_make_the_images(diffusion):
    [doc] = generate(
        diffusion,
        [
            spoken_doc(
                'a red fox',
                num_images=2,
                seed=42,
                orientation='landscape',
                quality='detailed',
                negative_prompt='trees',
            )
        ],
    )
    assert [image.tags['seed'] for image in doc.matches] == [42, 43]
    for image in doc.matches:
        assert (image.width, image.height) == (96, 64)  # 3:2 on the tiny model's 64 px side
        assert image.tags['num_inference_steps'] == 4  # detailed: twice the default 2
        assert image.tags['negative_prompt'] == 'trees'


def test_request_parameters_win_and_caps_apply(diffusion):
    [doc] = generate(
        diffusion,
        [spoken_doc('a red fox', num_images=20, seed=42, orientation='portrait')],
        seed=7,
        height=72,
    )
    assert [image.tags['seed'] for image in doc.matches] == [7, 8, 9]  # 20 capped at max_images 3
    assert {(image.width, image.height) for image in doc.matches} == {(64, 72)}


def test_each_document_of_a_batch_gets_its_own_settings(diffusion):
    docs = [
        spoken_doc('a boat', seed=1, orientation='wide'),
        SpeechDoc(text='a tree'),
        spoken_doc('a cat', seed=1, orientation='wide'),
        spoken_doc('a house', num_images=2),
    ]
    boat, tree, cat, house = generate(diffusion, docs)
    assert [(i.width, i.height, i.tags['seed']) for i in boat.matches] == [(112, 64, 1)]
    assert [(i.width, i.height, i.tags['seed']) for i in cat.matches] == [(112, 64, 1)]
    assert [(i.width, i.height) for i in tree.matches] == [(64, 64)]
    assert [(i.width, i.height) for i in house.matches] == [(64, 64)] * 2
    assert [i.tags['prompt'] for d in (boat, tree, cat, house) for i in d.matches] == [
        'a boat',
        'a tree',
        'a cat',
        'a house',
        'a house',
    ]


@pytest.mark.parametrize(
    'settings, message',
    [
        ({'orientation': 'diagonal'}, 'spoken orientation must be one of'),
        ({'seed': 'forty'}, "parameter 'seed' must be an integer"),
    ],
)
def test_bad_spoken_settings_name_the_document(diffusion, settings, message):
    bad = spoken_doc('a cat', **settings)
    with pytest.raises(
        RequestError, match=rf'document 1 \(id {bad.id}\): spoken settings: {message}'
    ):
        generate(diffusion, [SpeechDoc(text='a dog'), bad])


@pytest.mark.parametrize('parameters, seeds', [({}, [42, 43]), ({'seed': 7}, [7, 8])])
def test_a_spoken_command_through_the_flow(running_flow, parameters, seeds):
    """assets/fox_command.wav says "draw two pictures of a red fox in the snow, with seed 42";
    a request's own seed wins over the spoken one."""
    from devtools.offline_flow import ASSETS
    from speech2image.client import send

    audio = SpeechDoc(bytes_=(ASSETS / 'fox_command.wav').read_bytes())
    [doc] = send(running_flow.grpc, '/', [audio], parameters)
    assert doc.text.lower() == 'a red fox in the snow'
    assert doc.tags['transcript'].lower().startswith('draw two pictures of a red fox')
    assert doc.tags['spoken_settings'] == {'num_images': 2, 'seed': 42}
    assert [image.tags['seed'] for image in doc.matches] == seeds
    assert {image.tags['prompt'] for image in doc.matches} == {doc.text}
