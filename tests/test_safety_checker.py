"""A checkpoint's safety checker, reported: each image says whether it was flagged, a flagged
(black) image comes with a note, and ``safety_checker`` turns it on or off. The checker is a
tiny random one whose verdict is forced (devtools.offline_models)."""

import io

import numpy as np
import pytest
from jina import Executor
from PIL import Image

from devtools.offline_flow import TINY_SD
from devtools.offline_models import build_safety_checked_stable_diffusion
from speech2image.hub import ModelLoadError
from speech2image.schema import SAFETY_FLAGGED_TAG, SAFETY_NOTE_TAG, SpeechDoc
from tests.support import call_endpoint

CONFIG = 'executors/stablediffusion/config.yml'
FAST = {'num_inference_steps': 2, 'num_images': 2, 'seed': 3}


@pytest.fixture(scope='session')
def flagging_checkpoint(tmp_path_factory):
    """The tiny Stable Diffusion with a safety checker that flags every image."""
    directory = tmp_path_factory.mktemp('flagging-sd')
    return build_safety_checked_stable_diffusion(TINY_SD, directory, flags_every_image=True)


@pytest.fixture(scope='session')
def passing_checkpoint(tmp_path_factory):
    """The same with a safety checker that flags no image."""
    directory = tmp_path_factory.mktemp('passing-sd')
    return build_safety_checked_stable_diffusion(TINY_SD, directory, flags_every_image=False)


def generate(checkpoint, **uses_with) -> SpeechDoc:
    executor = Executor.load_config(CONFIG, uses_with={'model': str(checkpoint), **uses_with})
    [doc] = call_endpoint(executor, 'generate', [SpeechDoc(text='a red apple')], FAST)
    return doc


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.bytes_)))


def test_a_flagged_image_is_tagged_and_its_document_says_why_it_is_black(flagging_checkpoint):
    doc = generate(flagging_checkpoint)
    assert [image.tags[SAFETY_FLAGGED_TAG] for image in doc.matches] == [True, True]
    assert all(pixels(image).max() == 0 for image in doc.matches)  # diffusers blanked them
    assert doc.tags[SAFETY_NOTE_TAG] == (
        "2 of 2 images (number 1, 2) were flagged by the model's safety checker as possibly "
        'unsafe and are blacked out; try another prompt or seed'
    )


def test_an_image_the_checker_passes_says_so_and_has_no_note(passing_checkpoint):
    doc = generate(passing_checkpoint)
    assert [image.tags[SAFETY_FLAGGED_TAG] for image in doc.matches] == [False, False]
    assert all(pixels(image).max() > 0 for image in doc.matches)
    assert SAFETY_NOTE_TAG not in doc.tags


def test_safety_checker_off_returns_the_images_unchecked(flagging_checkpoint):
    doc = generate(flagging_checkpoint, safety_checker=False)
    assert all(SAFETY_FLAGGED_TAG not in image.tags for image in doc.matches)
    assert all(pixels(image).max() > 0 for image in doc.matches)
    assert SAFETY_NOTE_TAG not in doc.tags


def test_safety_checker_on_needs_a_checkpoint_that_has_one():
    with pytest.raises(ModelLoadError, match='has no safety checker'):
        Executor.load_config(CONFIG, uses_with={'model': str(TINY_SD), 'safety_checker': True})
    # Without one and by default: nothing checked, nothing tagged.
    doc = generate(TINY_SD)
    assert all(SAFETY_FLAGGED_TAG not in image.tags for image in doc.matches)
