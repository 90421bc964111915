"""What Whisper heard, checked before it is painted (speech2image/transcript_checks.py): the
checks on their own, and the WhisperExecutor refusing with them, in-process."""

import pytest
from jina import Executor

from devtools.offline_flow import ASSETS
from speech2image.audio import decode_audio
from speech2image.schema import SpeechDoc
from speech2image.transcript_checks import TranscriptLimits, language_doubt, transcript_doubt
from speech2image.validation import RequestError
from tests.support import call_endpoint
from tests.test_multilingual import CONFIG, WHISPER_BASE, clip

LIMITS = TranscriptLimits()
CONFIDENT = [{'avg_logprob': -0.2, 'no_speech_prob': 0.01, 'compression_ratio': 1.1}]


def doubt(text: str, seconds: float = 3.0, segments=CONFIDENT, **limits):
    return transcript_doubt(text, segments, seconds, TranscriptLimits(**limits))


@pytest.mark.parametrize(
    'text',
    [
        'a red fox in the snow',
        'Draw two pictures of a red fox in the snow, with seed 42.',
        'a cat playing the piano',
        'thank you notes on a wooden table',  # holds "thank you", but is not only that
        'a red fox and a red panda',  # "a red" twice: two-word runs may repeat
    ],
)
def test_a_clear_prompt_passes(text):
    assert doubt(text) is None


@pytest.mark.parametrize(
    'text, reason',
    [
        ("I'll see you in the next video.", 'next video'),
        ("I'll be back in the next video.", 'next video'),
        ('Thanks for watching!', 'for watching'),
        ('A cat playing piano. Subtitles by the Amara.org community', 'subtitles by'),
        ('Thank you.', 'thank you'),
        ('See you later!', 'see you later'),
    ],
)
def test_known_hallucinated_phrases_are_refused(text, reason):
    assert reason in doubt(text)


def test_a_repeated_sentence_is_refused():
    text = 'The boat is on the sea. The boat is on the sea. The boat is on the sea.'
    assert 'come 3 times' in doubt(text, seconds=10)
    assert doubt(text, seconds=10, max_ngram_repeats=3) is None


def test_more_words_than_the_audio_holds_are_refused():
    text = 'a red fox in the snow under a starry sky next to a wooden house by a lake'
    assert 'more than 2.0 s of speech can hold' in doubt(text, seconds=2.0)
    assert doubt(text, seconds=4.0) is None


def test_whispers_own_doubt_is_refused():
    unsure = [{**CONFIDENT[0], 'avg_logprob': -1.6}]
    assert 'confidence' in doubt('a red fox', segments=unsure)
    silent = [{**CONFIDENT[0], 'no_speech_prob': 0.95}]
    assert 'no speech with probability 95%' in doubt('a red fox', segments=silent)
    looping = [{**CONFIDENT[0], 'compression_ratio': 3.1}]
    assert 'compression ratio 3.1' in doubt('a red fox', segments=looping)
    # The worst segment counts: one made-up segment after a clear one.
    assert 'confidence' in doubt('a red fox. a hat', segments=[*CONFIDENT, *unsure])


def test_an_unsure_language_is_refused_with_its_name_and_probability():
    assert language_doubt('fi', 0.16, LIMITS) == (
        "the language sounded most like 'fi' (16%), which is unsure"
    )
    assert language_doubt('es', 0.92, LIMITS) is None


@pytest.fixture(scope='module')
def whisper_base():
    return Executor.load_config(CONFIG, uses_with={'model': str(WHISPER_BASE)})


def test_the_tags_carry_whispers_confidence(whisper_base):
    [doc] = call_endpoint(whisper_base, 'transcribe', [clip('apple.wav')])
    assert 'red apple' in doc.text
    [segment] = doc.tags['segments']
    assert -1 < segment['avg_logprob'] < 0
    assert 0 <= segment['no_speech_prob'] < 0.5
    assert 0.5 < segment['compression_ratio'] < 2
    assert doc.tags['language'] == 'en' and doc.tags['language_probability'] > 0.5


def test_translated_speech_keeps_the_words_as_heard(whisper_base):
    [doc] = call_endpoint(whisper_base, 'transcribe', [clip('barco.wav')])
    assert 'boat' in doc.text.lower()
    assert 'barco de vela' in doc.tags['source_transcript'].lower()
    # English speech needs no second transcript.
    [english] = call_endpoint(whisper_base, 'transcribe', [clip('apple.wav')])
    assert 'source_transcript' not in english.tags


def test_the_language_floor_refuses_and_a_given_language_wins():
    strict = Executor.load_config(
        CONFIG, uses_with={'model': str(WHISPER_BASE), 'min_language_probability': 0.995}
    )
    with pytest.raises(RequestError) as refused:
        call_endpoint(strict, 'transcribe', [clip('fuchs.wav')])
    message = str(refused.value)
    assert message.startswith('document 0 (id ')
    assert "could not tell which language was spoken: the language sounded most like 'de' (" in (
        message
    )
    assert "give the language (parameter 'language', e.g. 'de')" in message
    [doc] = call_endpoint(strict, 'transcribe', [clip('fuchs.wav')], {'language': 'de'})
    assert 'fox' in doc.text.lower() and doc.tags['language_probability'] == 1


def test_speech_played_backwards_is_refused_not_painted(whisper_base):
    """Speech sounds and no words: base writes a sentence (measured: "I will go to the next
    room and take a look at the camera", mean log-probability -1.74)."""
    samples = decode_audio((ASSETS / 'apple.wav').read_bytes(), 60)[::-1].copy()
    with pytest.raises(RequestError) as refused:
        call_endpoint(whisper_base, 'transcribe', [SpeechDoc(tensor=samples, id='backwards')])
    message = str(refused.value)
    assert message.startswith('document 0 (id backwards): could not understand the speech clearly')
    assert message.endswith("speak again, or give the language (parameter 'language')")
