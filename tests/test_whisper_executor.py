"""WhisperExecutor on the offline models, loaded through its config.yml as the Flow loads it."""

import asyncio

import numpy as np
import pytest
from docarray import DocList
from jina import Executor

from devtools.audio_files import apple_samples
from devtools.offline_flow import ASSETS, WHISPER_TINY_EN
from executors.whisper.executor import WhisperBackend, merged_into_windows
from speech2image.audio import load_audio
from speech2image.hub import ModelLoadError
from speech2image.schema import SAMPLE_RATE, SpeechDoc
from speech2image.validation import RequestError
from tests.conftest import OPENAI_WHISPER_TINY_EN
from tests.support import call_endpoint

CONFIG = 'executors/whisper/config.yml'


def load_whisper(**uses_with) -> Executor:
    return Executor.load_config(CONFIG, uses_with=uses_with)


@pytest.fixture(scope='module')
def whisper():
    return load_whisper(model=str(WHISPER_TINY_EN))


def run(executor, docs, parameters=None, endpoint='transcribe'):
    return call_endpoint(executor, endpoint, docs, parameters)


def test_both_backends_offer_what_the_executor_asks(whisper):
    openai = load_whisper(backend='openai-whisper', model=str(OPENAI_WHISPER_TINY_EN))
    for executor in (whisper, openai):
        assert isinstance(executor.backend, WhisperBackend)
        # English-only: English is the one language either takes (faster-whisper's
        # supported_languages, and the openai backend the same way).
        assert executor.backend.languages == {'en'} and not executor.backend.multilingual


def test_real_tiny_en_transcribes_the_spoken_clip(whisper):
    [doc] = run(whisper, [SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes())])
    assert 'painting of a red apple on a wooden table' in doc.text.lower()
    assert doc.tags['language'] == 'en'
    assert doc.tags['language_probability'] == 1  # English-only: English is certain
    assert doc.tags['task'] == 'transcribe'
    assert doc.tags['audio_seconds'] == pytest.approx(3.03, abs=0.01)
    [segment] = doc.tags['segments']
    assert 0 <= segment['start'] < segment['end'] <= 3.1
    assert segment['text'] == doc.text


def test_tensor_input_gives_the_same_transcript(whisper):
    [doc] = run(whisper, [SpeechDoc(tensor=apple_samples())])
    assert 'red apple on a wooden table' in doc.text.lower()


def test_a_batched_decode_hears_each_clip_as_alone(whisper):
    """Clips decoded in one batch give each its own transcript; noise among them gives none.
    The fox command has pauses between its phrases: cut at each, it was misheard."""
    apple = apple_samples()
    lighthouse, fox = (
        load_audio(SpeechDoc(bytes_=(ASSETS / name).read_bytes()), 60, None)
        for name in ('lighthouse.wav', 'fox_command.wav')
    )
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * SAMPLE_RATE).astype(np.float32)
    alone = [
        whisper.backend.transcribe(clip, 'transcribe', None).text
        for clip in (apple, lighthouse, fox)
    ]
    batched = whisper.backend.transcribe_batch([apple, noise, lighthouse, fox], 'transcribe', None)
    assert [transcript.text for transcript in batched] == [alone[0], '', alone[1], alone[2]]
    assert 'red apple' in alone[0] and 'painting' in alone[1] and 'red fox' in alone[2]
    [segment] = batched[2].segments
    assert 0 <= segment['start'] < segment['end'] <= 3.2  # times within its own clip


def test_speech_spans_merge_into_windows():
    """Pieces up to a window long, each span whole: a span that would pass the window starts
    the next piece."""
    spans = [{'start': 0, 'end': 10}, {'start': 15, 'end': 40}, {'start': 45, 'end': 90}]
    assert merged_into_windows(spans, 100) == [{'start': 0, 'end': 90}]
    assert merged_into_windows(spans, 50) == [{'start': 0, 'end': 40}, {'start': 45, 'end': 90}]
    assert merged_into_windows([], 50) == []


def test_concurrent_requests_get_their_own_transcripts(whisper):
    clips = [(ASSETS / name).read_bytes() for name in ('apple.wav', 'lighthouse.wav')] * 2

    async def concurrently():
        return await asyncio.gather(
            *(
                whisper.transcribe(docs=DocList[SpeechDoc]([SpeechDoc(bytes_=clip)]), parameters={})
                for clip in clips
            )
        )

    texts = [doc.text.lower() for [doc] in asyncio.run(concurrently())]
    assert ['red apple' in text for text in texts] == [True, False, True, False]
    assert ['sea' in text for text in texts] == [False, True, False, True]


def test_text_only_document_passes_through(whisper):
    [doc] = run(whisper, [SpeechDoc(text='  a lighthouse  ')])
    assert doc.text == '  a lighthouse  '
    assert 'language' not in doc.tags


def test_noise_gives_no_speech_not_an_invented_prompt(whisper):
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * SAMPLE_RATE).astype(np.float32)
    with pytest.raises(RequestError, match=r'document 0 \(id \w+\): no speech detected'):
        run(whisper, [SpeechDoc(tensor=noise)])


def test_error_names_the_failing_document(whisper):
    good = SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes())
    bad = SpeechDoc(bytes_=b'not audio')
    with pytest.raises(
        RequestError, match=rf'document 1 \(id {bad.id}\): bytes_ is not a decodable'
    ):
        run(whisper, [good, bad])


def test_document_with_neither_audio_nor_text(whisper):
    with pytest.raises(RequestError, match='no prompt: text is empty and there is no audio'):
        run(whisper, [SpeechDoc()])


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'task': 'summarise'}, "parameter 'task' must be one of transcribe, translate"),
        ({'language': 'xx'}, "parameter 'language' must be one of"),
        ({'language': 'de'}, 'the model is English-only'),
        ({'task': 'translate'}, "'translate', but the model is English-only: it cannot translate"),
        ({'spoken_settings': 'no'}, "parameter 'spoken_settings' must be true or false"),
    ],
)
def test_bad_parameters(whisper, parameters, message):
    with pytest.raises(RequestError, match=message):
        run(whisper, [SpeechDoc(text='hi')], parameters)


def test_spoken_settings_are_taken_from_the_transcript(whisper):
    [doc] = run(whisper, [SpeechDoc(bytes_=(ASSETS / 'fox_command.wav').read_bytes())])
    assert 'draw two pictures of a red fox in the snow' in doc.tags['transcript'].lower()
    assert doc.text.lower() == 'a red fox in the snow'
    assert doc.tags['spoken_settings'] == {'num_images': 2, 'seed': 42}


@pytest.mark.parametrize(
    'executor_setting, parameters', [(True, {'spoken_settings': False}), (False, {})]
)
def test_spoken_settings_turned_off_keep_the_transcript(executor_setting, parameters):
    executor = load_whisper(model=str(WHISPER_TINY_EN), spoken_settings=executor_setting)
    [doc] = run(executor, [SpeechDoc(bytes_=(ASSETS / 'fox_command.wav').read_bytes())], parameters)
    assert doc.text == doc.tags['transcript']
    assert 'draw two pictures of a red fox' in doc.text.lower()
    assert 'spoken_settings' not in doc.tags


def test_generate_endpoint_checks_prompts(whisper):
    with pytest.raises(RequestError, match=r'prompt is 1001 characters, the limit is 1000'):
        run(whisper, [SpeechDoc(text='a' * 1001)], endpoint='check_prompts')
    [doc] = run(whisper, [SpeechDoc(text='a cat')], endpoint='check_prompts')
    assert doc.text == 'a cat'


def test_openai_whisper_backend_transcribes_the_spoken_clip_with_the_converted_weights():
    """The same trained tiny.en as faster-whisper, converted from CTranslate2 to an openai-whisper
    checkpoint (offline_models.convert_ct2_whisper_to_openai)."""
    executor = load_whisper(backend='openai-whisper', model=str(OPENAI_WHISPER_TINY_EN))
    assert not executor.backend.multilingual
    [doc] = run(executor, [SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes())])
    assert 'painting of a red apple on a wooden table' in doc.text.lower()
    assert doc.tags['language'] == 'en'
    assert doc.tags['task'] == 'transcribe'
    [segment] = doc.tags['segments']
    assert 0 <= segment['start'] < segment['end'] <= 3.1


def test_openai_whisper_backend_decodes_at_most_max_new_tokens():
    executor = load_whisper(
        backend='openai-whisper', model=str(OPENAI_WHISPER_TINY_EN), max_new_tokens=3
    )
    transcript = executor.backend.transcribe(apple_samples(), task='transcribe', language=None)
    assert 1 <= len(transcript.text.split()) <= 3
    assert 'painting of a red apple'.startswith(transcript.text.lower())


@pytest.mark.parametrize('backend', ['faster-whisper', 'openai-whisper'])
def test_unavailable_model_fails_fast_with_its_name(backend):
    with pytest.raises(ModelLoadError, match="model 'no-such-model'"):
        load_whisper(backend=backend, model='no-such-model')


def test_unknown_backend():
    with pytest.raises(Exception, match='backend must be one of'):
        load_whisper(backend='whisper.cpp', model=str(WHISPER_TINY_EN))
