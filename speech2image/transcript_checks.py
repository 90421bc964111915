"""Whether Whisper's transcript is what was said, checked before anything is painted.

Whisper writes fluent text for audio it did not understand: the same sentence over and over,
more words than the audio could hold, or the phrases of the video subtitles it was trained on
("thanks for watching", "see you in the next video", subtitle credits). It also says how sure
it was: per segment, the mean log-probability of its tokens, the probability that there was no
speech at all and the gzip compression ratio of the text (high for repetitive text); and the
probability of the language it detected. ``transcript_doubt`` and ``language_doubt`` turn those
into the reason a transcript is refused, or None; the limits are the WhisperExecutor's
arguments, their defaults in speech2image/defaults.py, chosen from the measurements in
docs/languages.md.
"""

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional

from speech2image import defaults

# Phrases Whisper writes on unclear audio, from the subtitles it was trained on (found as whole
# words anywhere in the transcript, lower case, punctuation removed).
KNOWN_HALLUCINATIONS = (
    'for watching',  # thanks for watching, thank you so much for watching
    'next video',  # see you in the next video, I'll be back in the next video
    'this video',
    'subscribe',
    'my channel',
    'see you next time',
    'subtitles by',
    'subtitled by',
    'subtitles made by',
    'captions by',
    'transcribed by',
    'translated by',
    'amara org',
)
# Whole transcripts Whisper writes for breath, music or noise: nothing to paint.
HALLUCINATED_TRANSCRIPTS = frozenset(
    {'you', 'thank you', 'thanks', 'bye', 'bye bye', 'okay', 'oh', 'music', 'see you later'}
)
# Repeated runs of this many words mark a decoding loop.
NGRAM_WORDS = 3
WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class TranscriptLimits:
    """The thresholds a transcript must pass (see speech2image/defaults.py)."""

    min_avg_logprob: float = defaults.MIN_AVG_LOGPROB
    max_no_speech_prob: float = defaults.MAX_NO_SPEECH_PROB
    max_compression_ratio: float = defaults.MAX_COMPRESSION_RATIO
    max_words_per_second: float = defaults.MAX_WORDS_PER_SECOND
    max_ngram_repeats: int = defaults.MAX_NGRAM_REPEATS
    min_language_probability: float = defaults.MIN_LANGUAGE_PROBABILITY


def words_of(text: str) -> List[str]:
    """The words of ``text``, lower case, without punctuation."""
    return WORD.findall(text.lower())


def most_repeated_ngram(words: List[str], size: int = NGRAM_WORDS) -> tuple:
    """(the run of ``size`` words that occurs most often, how often); ((), 0) when shorter."""
    counts = Counter(tuple(words[i : i + size]) for i in range(len(words) - size + 1))
    return counts.most_common(1)[0] if counts else ((), 0)


def known_hallucination(text: str) -> Optional[str]:
    """The known hallucinated phrase ``text`` is or holds, or None."""
    spoken = ' '.join(words_of(text))
    if spoken in HALLUCINATED_TRANSCRIPTS:
        return spoken
    return next((phrase for phrase in KNOWN_HALLUCINATIONS if f' {phrase} ' in f' {spoken} '), None)


def transcript_doubt(
    text: str, segments: List[Dict], audio_seconds: float, limits: TranscriptLimits
) -> Optional[str]:
    """Why ``text`` (Whisper's transcript of ``audio_seconds`` of audio, with its ``segments``'
    avg_logprob, no_speech_prob and compression_ratio) is not to be trusted, or None."""
    phrase = known_hallucination(text)
    if phrase:
        return f'"{phrase}" is a phrase Whisper writes for audio it did not understand'
    words = words_of(text)
    ngram, repeats = most_repeated_ngram(words)
    if repeats > limits.max_ngram_repeats:
        return f'the words "{" ".join(ngram)}" come {repeats} times, as in a decoding loop'
    if len(words) > limits.max_words_per_second * audio_seconds:
        return f'{len(words)} words is more than {audio_seconds:.1f} s of speech can hold'
    scored = [segment for segment in segments if 'avg_logprob' in segment]
    if not scored:
        return None
    if (logprob := min(s['avg_logprob'] for s in scored)) < limits.min_avg_logprob:
        return f"Whisper's confidence (mean log-probability {logprob:.2f}) is low"
    if (no_speech := max(s['no_speech_prob'] for s in scored)) > limits.max_no_speech_prob:
        return f'Whisper heard no speech with probability {no_speech:.0%}'
    if (ratio := max(s['compression_ratio'] for s in scored)) > limits.max_compression_ratio:
        return f'the text repeats itself (compression ratio {ratio:.1f})'
    return None


def language_doubt(language: str, probability: float, limits: TranscriptLimits) -> Optional[str]:
    """Why a detected ``language`` with this ``probability`` is not to be trusted, or None."""
    if probability < limits.min_language_probability:
        return f"the language sounded most like '{language}' ({probability:.0%}), which is unsure"
    return None
