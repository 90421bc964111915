"""The world of the offline model: the words it knows and how captions say them.

The offline model (``models/shapes-world``, devtools/train_world_model.py) was trained on scenes of
one kind: one to three things of one colour and size, at one place in the picture, in front of
one background. This module owns that vocabulary. The renderer, the trainer, the fidelity judge,
the tests and the spoken edits all import it, so a word added here is a word everywhere.

    Scene(colour='red', thing='apple', place='wooden table', position='middle')
    -> "a painting of a red apple in the middle, on a wooden table"

``parse_scene`` reads the scene a caption or prompt names (unknown words are ignored), and
``caption`` writes one, with free phrasing: synonyms, fillers, optional attributes.
"""

import random
import re
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

IMAGE_SIDE = 64  # the model's native size, in pixels

# Colour words and the RGB the renderer paints them with.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (215, 35, 35),
    'orange': (245, 135, 20),
    'yellow': (240, 215, 30),
    'green': (40, 165, 55),
    'blue': (35, 75, 215),
    'purple': (135, 45, 185),
    'pink': (245, 125, 185),
    'white': (250, 250, 250),
    'black': (20, 20, 20),
    'brown': (115, 65, 25),
}

# Things, each with the words that name it; the first is its name.
THINGS: Dict[str, Tuple[str, ...]] = {
    'ball': ('ball', 'circle'),
    'box': ('box', 'square', 'cube'),
    'triangle': ('triangle',),
    'star': ('star',),
    'heart': ('heart',),
    'apple': ('apple',),
    'sun': ('sun',),
    'moon': ('moon',),
    'house': ('house',),
    'tree': ('tree',),
    'boat': ('boat', 'ship'),
    'fish': ('fish',),
    'flower': ('flower',),
    'car': ('car',),
    'lighthouse': ('lighthouse',),
    'cat': ('cat', 'kitten'),
}
PLURALS = {'box': 'boxes', 'fish': 'fish', 'kitten': 'kittens'}

# Backgrounds, each with the phrases that put a thing there.
PLACES: Dict[str, Tuple[str, ...]] = {
    'white wall': ('on a white wall', 'in front of a white wall', 'against a white wall'),
    'sky': ('in the sky', 'in a blue sky', 'up in the sky'),
    'night sky': ('in the night sky', 'at night', 'in the sky at night'),
    'sea': ('on the sea', 'at sea', 'on the ocean', 'next to the sea'),
    'beach': ('on the beach', 'on a beach', 'by the beach'),
    'grass': ('on the grass', 'on green grass', 'in a meadow'),
    'snow': ('in the snow', 'on the snow', 'on snow'),
    'desert': ('in the desert', 'on desert sand', 'in a desert'),
    'wooden table': ('on a wooden table', 'on a table', 'on the wooden table'),
}

# Where in the picture: the phrases, and the anchor (x, y) as fractions of the side.
POSITIONS: Dict[str, Tuple[str, ...]] = {
    'left': ('on the left', 'to the left', 'at the left', 'on the left side'),
    'right': ('on the right', 'to the right', 'at the right', 'on the right side'),
    'top': ('at the top', 'on top', 'at the top of the picture'),
    'bottom': ('at the bottom', 'at the bottom of the picture'),
    'middle': ('in the middle', 'in the centre', 'in the center'),
}
ANCHORS: Dict[str, Tuple[float, float]] = {
    'left': (0.25, 0.5),
    'right': (0.75, 0.5),
    'top': (0.5, 0.25),
    'bottom': (0.5, 0.75),
    'middle': (0.5, 0.5),
}

# Sizes: the words, and the thing's radius as a fraction of the side.
SIZES: Dict[str, Tuple[str, ...]] = {
    'small': ('small', 'little', 'tiny'),
    'medium': (),  # said by saying nothing
    'big': ('big', 'large', 'huge'),
}
RADII = {'small': 0.11, 'medium': 0.17, 'big': 0.25}
# How many: the words; one thing is also "a"/"an".
COUNTS: Dict[int, Tuple[str, ...]] = {1: ('one', 'a', 'an'), 2: ('two',), 3: ('three',)}
# Three big things do not fit in the picture.
MAX_COUNT = {'small': 3, 'medium': 3, 'big': 2}

# Openings and fillers that carry no meaning; the model learns to ignore them.
OPENINGS = (
    '',
    'a painting of',
    'a watercolor of',
    'a watercolour of',
    'a photo of',
    'a picture of',
    'a drawing of',
    'an image of',
    'paint me',
    'draw me',
    'draw',
    'show me',
    'jarvis, paint me',
)
FILLERS = ('nice', 'pretty', 'beautiful', 'please', 'simple', 'lovely', 'bright', 'cute')


@dataclass(frozen=True)
class Scene:
    """What a picture of the world shows. ``None`` in a parsed scene: the words did not say."""

    colour: Optional[str] = None
    thing: Optional[str] = None
    place: Optional[str] = None
    position: Optional[str] = None
    size: Optional[str] = None
    count: Optional[int] = None

    def with_(self, **changes) -> 'Scene':
        return replace(self, **changes)


def alternatives(words) -> str:
    """A regular-expression alternation of ``words``, longest first ("night sky" before "sky")."""
    return '|'.join(sorted((re.escape(w) for w in words), key=len, reverse=True))


# Each word or phrase the world knows -> the name it says (parse_scene, speech2image/edits.py).
THING_WORDS = {word: name for name, words in THINGS.items() for word in words}
THING_WORDS.update({PLURALS.get(w, w + 's'): n for w, n in list(THING_WORDS.items())})
PLACE_WORDS = {phrase: name for name, phrases in PLACES.items() for phrase in phrases + (name,)}
POSITION_WORDS = {'centre': 'middle', 'center': 'middle'}
POSITION_WORDS.update({name: name for name in POSITIONS})
SIZE_WORDS = {word: name for name, words in SIZES.items() for word in words}
COUNT_WORDS = {'one': 1, 'two': 2, 'three': 3}
# A whole word or phrase: the alternation of words given.
WORD = r'(?<![\w-])({})(?![\w-])'
# Places first: "night sky" and "white wall" hold words of other kinds.
_PLACE_RE = re.compile(WORD.format(alternatives(PLACE_WORDS)))
_COLOUR_RE = re.compile(WORD.format(alternatives(COLOURS)))
_THING_RE = re.compile(WORD.format(alternatives(THING_WORDS)))
_POSITION_RE = re.compile(WORD.format(alternatives(POSITION_WORDS)))
_SIZE_RE = re.compile(WORD.format(alternatives(SIZE_WORDS)))
_COUNT_RE = re.compile(WORD.format(alternatives(COUNT_WORDS)))


def parse_scene(text: str) -> Scene:
    """The scene that ``text`` names: its first word of each kind; unknown words are ignored."""
    text = text.lower()
    place = _PLACE_RE.search(text)
    rest = _PLACE_RE.sub(' ', text)  # "white wall" names a place, not a colour
    found = {
        'colour': _COLOUR_RE.search(rest),
        'thing': _THING_RE.search(rest),
        'position': _POSITION_RE.search(rest),
        'size': _SIZE_RE.search(rest),
        'count': _COUNT_RE.search(rest),
    }
    return Scene(
        colour=found['colour'] and found['colour'].group(1),
        thing=found['thing'] and THING_WORDS[found['thing'].group(1)],
        place=place and PLACE_WORDS[place.group(1)],
        position=found['position'] and POSITION_WORDS[found['position'].group(1)],
        size=found['size'] and SIZE_WORDS[found['size'].group(1)],
        count=found['count'] and COUNT_WORDS[found['count'].group(1)],
    )


def random_scene(rng: random.Random) -> Scene:
    """A scene with every attribute drawn uniformly (sizes and counts as the world allows)."""
    size = rng.choice(list(SIZES))
    return Scene(
        colour=rng.choice(list(COLOURS)),
        thing=rng.choice(list(THINGS)),
        place=rng.choice(list(PLACES)),
        position=rng.choice(list(POSITIONS)),
        size=size,
        count=rng.randint(1, MAX_COUNT[size]),
    )


def thing_phrase(scene: Scene, rng: Optional[random.Random] = None) -> str:
    """ "two small red boats": the count, size, colour and thing words of ``scene``; with
    ``rng``, a synonym and "one" or "a" are drawn, else the first words are used."""
    thing = rng.choice(THINGS[scene.thing]) if rng else scene.thing
    count = scene.count or 1
    if count > 1:
        thing = PLURALS.get(thing, thing + 's')
    sizes = SIZES[scene.size] if scene.size else ()
    size = (rng.choice(sizes) if rng else sizes[0]) if sizes else ''
    words = [w for w in (size, scene.colour or '', thing) if w]
    if count > 1:
        return ' '.join([COUNTS[count][0]] + words)
    article = rng.choice(('a', 'a', 'one')) if rng else 'a'
    if article == 'a' and words[0][0] in 'aeiou':
        article = 'an'
    return ' '.join([article] + words)


def caption(scene: Scene, rng: random.Random) -> str:
    """One way to say ``scene``. Attributes that are ``None`` are left unsaid; the order of the
    position and the place, the opening and the fillers vary."""
    parts = [rng.choice(OPENINGS), thing_phrase(scene, rng)]
    tails = []
    if scene.position:
        tails.append(rng.choice(POSITIONS[scene.position]))
    if scene.place:
        tails.append(rng.choice(PLACES[scene.place]))
    rng.shuffle(tails)
    parts += tails
    if rng.random() < 0.15:
        parts.insert(rng.randint(0, len(parts)), rng.choice(FILLERS))
    separator = rng.choice((' ', ', '))
    text = parts[0] + ' ' + separator.join(p for p in parts[1:] if p)
    return text.strip(' ,')


def describe(scene: Scene) -> str:
    """The plain caption of a scene: what the picture shows, for people and for prompts."""
    words = [thing_phrase(scene)]
    if scene.position:
        words.append(POSITIONS[scene.position][0])
    if scene.place:
        words.append(PLACES[scene.place][0])
    return ' '.join(words)


# (colour, thing) pairs never shown in training: the fidelity benchmark asks for them to measure
# generalisation rather than memory.
HELD_OUT = frozenset(
    {
        ('blue', 'apple'),
        ('green', 'car'),
        ('red', 'cat'),
        ('yellow', 'boat'),
        ('purple', 'house'),
        ('pink', 'fish'),
        ('orange', 'heart'),
        ('brown', 'ball'),
        ('white', 'flower'),
        ('black', 'moon'),
    }
)
