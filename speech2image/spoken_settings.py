"""Settings a person can say: a spoken command in, the prompt and the settings it asked for out.

    "Jarvis, paint me four pictures of a red fox in the snow, seed 42, no people, in landscape"
    -> prompt "a red fox in the snow"
    -> {'num_images': 4, 'seed': 42, 'negative_prompt': 'people', 'orientation': 'landscape'}

Rule-based and conservative: each rule needs a marker that makes it a setting, not a subject
("four pictures of", not "four horsemen"; "in portrait", not "a portrait of"; "seed 42", not
"seeds" or "a seed of doubt"). Text with nothing to take is returned unchanged. The rules are
English: the WhisperExecutor parses what is English after Whisper (spoken English, or any
language translated). ``generation_parameters`` turns the settings into StableDiffusionExecutor
parameters, under the request's explicit ones.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

# Document tags: what Whisper heard, and the settings taken from it.
TRANSCRIPT_TAG = 'transcript'
# Set when Whisper translated from another language: its transcript in the language spoken
# (``transcript`` then holds the English).
SOURCE_TRANSCRIPT_TAG = 'source_transcript'
SPOKEN_SETTINGS_TAG = 'spoken_settings'
# Orientation -> (width, height) ratio; the shorter side stays the model's native side.
ORIENTATIONS = {'portrait': (2, 3), 'landscape': (3, 2), 'wide': (16, 9), 'square': (1, 1)}
# Quality -> factor on the default number of denoising steps.
QUALITY_STEP_FACTORS = {'quick': 0.5, 'detailed': 2.0}
SEED_LIMIT = 2**31  # seeds travel in int32 tags (StableDiffusionExecutor.SEED_LIMIT)
SIDE_MULTIPLE = 8

NUMBER_WORDS = {
    'one': 1,
    'single': 1,
    'two': 2,
    'a couple of': 2,
    'a pair of': 2,
    'three': 3,
    'four': 4,
    'five': 5,
    'six': 6,
    'seven': 7,
    'eight': 8,
    'nine': 9,
    'ten': 10,
    'eleven': 11,
    'twelve': 12,
    'twenty': 20,
    'thirty': 30,
    'forty': 40,
    'fifty': 50,
}
NUMBER = r'\d+|' + '|'.join(sorted(map(re.escape, NUMBER_WORDS), key=len, reverse=True))
# Words for "an image" when counting images: not "photos" or "drawings", which also say a style.
IMAGE_NOUNS = r'(?:pictures?|images?|pics?|versions?|variations?|variants?|options?)'
ADDRESS = r'(?:(?:hey|hi|ok|okay)\s+)?[a-z]+\s*[,!]\s*'
POLITE = (
    r'(?:(?:please|kindly)\s+|(?:can|could|would|will)\s+you\s+(?:please\s+)?|'
    r"i(?:'d|\s+would)\s+like\s+you\s+to\s+|i\s+want\s+you\s+to\s+|let's\s+)*"
)
COMMAND_VERBS = r'(?:draw|paint|sketch|make|create|generate|show|give|imagine|illustrate|produce)'
DETERMINER = rf'(?:a|an|the|some|my|this|that|{NUMBER}|{IMAGE_NOUNS})\b'
# A command verb, when it is one: after an address or "please", before "me", or before a
# determiner ("Paint splashes on a wall" is a subject). "quickly" asks for a quick image.
COMMAND = (
    rf'^\s*(?P<address>{ADDRESS})?(?P<polite>{POLITE})(?P<quick>quick(?:ly)?\s+)?'
    rf'(?:{COMMAND_VERBS}\s+(?:(?P<me>me|us)\s+)?'
    rf"|(?P<wish>i(?:'d|\s+would)\s+like\s+(?:to\s+see\s+)?|let's\s+see\s+|i\s+want\s+))"
    rf'(?P<count_phrase>(?P<count>{NUMBER})\s+{IMAGE_NOUNS}\s+of\s+|(?:an?|the|some)\s+{IMAGE_NOUNS}\s+of\s+'
    rf'|{IMAGE_NOUNS}\s+of\s+)?'
)
# A clause joined to the prompt: after a comma, "with", "and", "using", "but".
JOIN = r'(?:^|\s*,\s*|\s+)(?:(?:and|but|with|using|use|in)\s+(?:the\s+|a\s+)?)?'
END = r'(?=\s*(?:[,.;!?]|$|\s+(?:and|with|but|in|no|without|seed)\b))'
RULES = {
    # A number in words too: Whisper writes "Seed seven." as often as "seed 7".
    'seed': rf'{JOIN}(?:random\s+)?\bseed\b\s*(?:number\s+|of\s+|is\s+|=\s*|:\s*)?(?P<value>{NUMBER})\b',
    'num_inference_steps': rf'{JOIN}(?P<value>{NUMBER})\s+(?:denoising\s+|inference\s+)?steps\b{END}',
    'num_images': rf'{JOIN}(?P<value>{NUMBER})\s+{IMAGE_NOUNS}{END}',
    'orientation': (
        rf'{JOIN}(?:(?:as\s+)?an?\s+)?(?P<value>portrait|landscape|square|wide|widescreen|'
        rf'vertical|horizontal)\s+(?:format|mode|orientation|aspect(?:\s+ratio)?|image|picture)\b'
        rf'|(?:\s*,\s*|\s+)(?:in|as)\s+(?P<value2>portrait|landscape|widescreen|square)'
        rf'(?:\s+(?:format|mode|orientation))?{END}'
    ),
    'quick': (
        rf'{JOIN}(?:(?:make\s+it|be|do\s+it)\s+)?(?:quick(?:ly)?|fast)(?:\s+(?:draft|version|mode|please))?'
        rf'{END}|{JOIN}(?:a\s+)?(?:quick|rough)\s+draft{END}'
        rf'|{JOIN}(?:in\s+)?(?:low|draft)\s+quality{END}'
    ),
    'detailed': (
        rf'{JOIN}(?:(?:make\s+it|in)\s+)?(?:(?:very|highly|extra|really)\s+detailed|high\s+quality|'
        rf'(?:great|lots\s+of|full|fine)\s+detail|best\s+quality|take\s+your\s+time|detailed){END}'
    ),
    'negative_prompt': (
        r'(?:(?:\s*,\s*(?:and\s+|but\s+|with\s+)?|\s+(?:and|but|with)\s+)'
        r'(?:no|without(?:\s+any)?)|\s+without(?:\s+any)?)\s+'
        r'(?!(?:one|body|man\'s|longer|more|way|matter|doubt|end|fear)\b)'
        r'(?P<value>[^,.;!?]+?)(?=\s*(?:[,.;!?]|$|\s+(?:and\s+no|but|with|seed)\b))'
    ),
}
# Tried in this order: settings with numbers first, so "no people, seed 42" ends each clause.
ORDER = (
    'seed',
    'num_inference_steps',
    'num_images',
    'orientation',
    'quick',
    'detailed',
    'negative_prompt',
)
PATTERNS = {name: re.compile(RULES[name], re.IGNORECASE) for name in ORDER}
COMMAND_PATTERN = re.compile(COMMAND, re.IGNORECASE)
# Descriptions that also ask for quality: they set it and stay in the prompt.
KEEP_IN_PROMPT = re.compile(
    r'(?:very|highly|extra|really)\s+detailed|high\s+quality|best\s+quality', re.IGNORECASE
)
ORIENTATION_WORDS = {'widescreen': 'wide', 'vertical': 'portrait', 'horizontal': 'landscape'}


@dataclass
class SpokenCommand:
    """What a spoken command asked for: the prompt to draw and the settings said with it."""

    prompt: str
    settings: Dict[str, Any] = field(default_factory=dict)


def number_value(word: str) -> Optional[int]:
    """'4' or 'four' -> 4; None for anything else."""
    word = re.sub(r'\s+', ' ', word.lower())
    return int(word) if word.isdigit() else NUMBER_WORDS.get(word)


def tidy(text: str) -> str:
    """Join what is left of a prompt: no doubled or dangling commas, no trailing full stop."""
    text = re.sub(r'\s+', ' ', text)
    text = re.sub(r'\s*,(\s*,)+', ',', text)
    text = re.sub(r'\s+([,.;!?])', r'\1', text)
    return text.strip(' ,;.!?')


def take_setting(name: str, match: re.Match) -> Optional[Tuple[str, Any]]:
    """The (setting, value) a rule's match says, or None when the value is not one."""
    if name in ('quick', 'detailed'):
        return 'quality', name
    value = match.group('value') if 'value' in match.groupdict() else None
    if name == 'orientation':
        word = (value or match.group('value2')).lower()
        return name, ORIENTATION_WORDS.get(word, word)
    if name == 'negative_prompt':
        return name, re.sub(r'^(?:a|an|the|any)\s+', '', value.strip(), flags=re.IGNORECASE)
    number = number_value(value)
    if (
        number is None
        or (name == 'seed' and number >= SEED_LIMIT)
        or (name != 'seed' and number < 1)
    ):
        return None
    return name, number


def is_command(match: re.Match, text: str) -> bool:
    """Whether a match of the command phrase is one: said to someone ("Jarvis,", "please",
    "paint me", "I'd like"), or a verb before what to draw ("draw a cat", not "Paint splashes")."""
    if any(match.group(name) for name in ('address', 'polite', 'me', 'wish', 'count_phrase')):
        return True
    return re.match(DETERMINER, text[match.end() :], re.IGNORECASE) is not None


def parse_command(text: str) -> SpokenCommand:
    """Split a spoken command into the prompt and the settings it says.

    Returns the text unchanged, with no settings, when no rule is sure of anything or when
    taking the settings would leave no prompt.
    """
    settings: Dict[str, Any] = {}
    prompt = text
    command = COMMAND_PATTERN.match(prompt)
    if command and is_command(command, prompt):
        if command.group('count'):
            settings['num_images'] = number_value(command.group('count'))
        if command.group('quick'):
            settings['quality'] = 'quick'
        prompt = prompt[command.end() :]
    negatives: List[str] = []
    for name in ORDER:
        for match in reversed(list(PATTERNS[name].finditer(prompt))):
            taken = take_setting(name, match)
            if taken is None:
                continue
            setting, value = taken
            if setting == 'negative_prompt':
                negatives.insert(0, value)
            else:
                settings.setdefault(setting, value)
            kept = KEEP_IN_PROMPT.search(match.group(0)) if setting == 'quality' else None
            replacement = f', {kept.group(0)}' if kept else ''
            prompt = prompt[: match.start()] + replacement + prompt[match.end() :]
    if negatives:
        settings['negative_prompt'] = ', '.join(negatives)
    prompt = tidy(prompt)
    if not prompt or (not settings and prompt == tidy(text)):
        return SpokenCommand(text)
    return SpokenCommand(prompt, settings)


def scaled_sides(orientation: str, width: int, height: int, max_side: int) -> Tuple[int, int]:
    """(width, height) for an orientation: the shorter side is the default one, the longer side
    follows the ratio, both multiples of 8 and at most ``max_side``."""
    ratio_w, ratio_h = ORIENTATIONS[orientation]
    short = min(width, height)
    long = min(short * max(ratio_w, ratio_h) / min(ratio_w, ratio_h), max_side)
    short = min(short, long * min(ratio_w, ratio_h) / max(ratio_w, ratio_h))
    long, short = (int(side) // SIDE_MULTIPLE * SIDE_MULTIPLE for side in (long, short))
    return (long, short) if ratio_w > ratio_h else (short, long)


def generation_parameters(
    spoken: Any,
    explicit: Mapping[str, Any],
    defaults: Mapping[str, Any],
    max_images: int,
    max_inference_steps: int,
    max_side: int,
) -> Dict[str, Any]:
    """A document's generation parameters: its spoken settings under the request's ``explicit``
    parameters (which always win), spoken counts clamped to the caps.

    ``defaults`` holds the Executor's ``num_inference_steps``, ``width`` and ``height``. Values
    of the wrong type pass through unchanged, for the Executor's checks to refuse by name.
    Raises ValueError when ``spoken`` is not a mapping or names an unknown orientation or quality.
    """
    if not isinstance(spoken, Mapping):
        raise ValueError(f"tag '{SPOKEN_SETTINGS_TAG}' must be an object, got {spoken!r}")
    parameters: Dict[str, Any] = {}
    for name in ('num_images', 'seed', 'num_inference_steps', 'negative_prompt'):
        if spoken.get(name) is not None:
            parameters[name] = spoken[name]
    if isinstance(parameters.get('num_images'), (int, float)):
        parameters['num_images'] = min(parameters['num_images'], max_images)
    quality = spoken.get('quality')
    if quality is not None:
        if not isinstance(quality, str) or quality not in QUALITY_STEP_FACTORS:
            raise ValueError(
                f'spoken quality must be one of {", ".join(QUALITY_STEP_FACTORS)}, got {quality!r}'
            )
        parameters.setdefault(
            'num_inference_steps',
            max(1, round(defaults['num_inference_steps'] * QUALITY_STEP_FACTORS[quality])),
        )
    if isinstance(parameters.get('num_inference_steps'), (int, float)):
        parameters['num_inference_steps'] = min(
            parameters['num_inference_steps'], max_inference_steps
        )
    orientation = spoken.get('orientation')
    if orientation is not None:
        if not isinstance(orientation, str) or orientation not in ORIENTATIONS:
            raise ValueError(
                f'spoken orientation must be one of {", ".join(ORIENTATIONS)}, got {orientation!r}'
            )
        parameters['width'], parameters['height'] = scaled_sides(
            orientation, defaults['width'], defaults['height'], max_side
        )
    return {**parameters, **explicit}
