"""Spoken edits: what a person says about the picture in front of them, read by rules against
the prompt that made it.

    previous prompt "a red ball on the left", said "make it blue"
    -> Edit(kind='edit', prompt='a blue ball on the left', changes=(colour red -> blue,))

The words are the world of the offline model (speech2image/world.py): colours, things, places,
positions, sizes, counts. Each turn is one kind:

- ``new``: not an edit ("a green boat on the sea"): a new picture of what was said;
- ``edit``: change the colour, place, size, position or thing, add or remove a thing ("make it
  blue", "at night", "bigger", "move it to the right", "make it a boat", "add a tree", "remove
  the tree", "one more ball"); drawn from the previous picture when the composition stays;
- ``another``: the previous prompt with a new seed ("another one");
- ``again``: the previous prompt and seed ("again"), or with an edit drawn afresh ("same but blue");
- ``back``: the picture before the last ("go back").

An utterance that is an edit but cannot be applied ("make it shiny", "remove the tree" when
there is none) raises ``EditError``, whose message says why. Rules only, on English (spoken, or
Whisper's translation), after speech2image/spoken_settings.py took the settings out.
"""

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from speech2image.spoken_settings import POLITE, tidy
from speech2image.world import (
    COLOURS,
    COUNT_WORDS,
    FILLERS,
    MAX_COUNT,
    PLACE_WORDS,
    PLACES,
    POSITION_WORDS,
    POSITIONS,
    SIZE_WORDS,
    SIZES,
    THING_WORDS,
    THINGS,
    WORD,
    Scene,
    alternatives,
    parse_scene,
    thing_phrase,
)

NEW, EDIT, ANOTHER, AGAIN, BACK = 'new', 'edit', 'another', 'again', 'back'
# How a turn is drawn: from the words alone (text-to-image), from the previous picture
# (image-to-image), or not at all (the picture is one already made).
FROM_TEXT, FROM_IMAGE, NOT_DRAWN = 'text', 'image', 'none'
# Changes that leave every shape where it is: these redraw from the previous picture by
# image-to-image, at this strength (the share of the denoising steps run again). A colour repaints
# the things; a place repaints most of the picture, and the background is settled in the noisiest
# steps, so it needs more of them. The other changes move or reshape things, which image-to-image
# at a strength that keeps the picture cannot do.
KEEP_COMPOSITION_STRENGTHS = {'colour': 0.6, 'place': 0.7}
SIZE_ORDER = tuple(SIZES)  # small, medium, big
DEFAULT_SIZE = 'medium'
COMPARATIVES = {'bigger': 1, 'larger': 1, 'smaller': -1, 'tinier': -1}
# Directions a thing is moved in, as positions of the world.
DIRECTIONS = {'up': 'top', 'higher': 'top', 'down': 'bottom', 'lower': 'bottom'}

_COLOUR = alternatives(COLOURS)
_THING = alternatives(THING_WORDS)
_SIZE = alternatives(SIZE_WORDS)
_FILLER = alternatives(FILLERS)
# Words that open an edit and are no name, so "again, but blue" is not said to someone "again".
EDIT_WORDS = (
    *'now again same but and so then well no yes another back undo instead'.split(),
    *COMPARATIVES,
)
# Said to someone: "Jarvis, ...", "hey Jarvis, ...".
ADDRESS = (
    r'(?:(?:hey|hi|ok|okay)\s+)?'
    rf'(?!(?:{alternatives((*EDIT_WORDS, *COLOURS, *THING_WORDS, *POSITION_WORDS, *SIZE_WORDS))})\b)'
    r'[a-z]+\s*[,!]\s*'
)
LEAD = (
    rf'^\s*(?:{ADDRESS})?{POLITE}'
    r'(?:(?:now|ok|okay|and|then|also|so|alright|well|just|hmm|oh)\b[\s,]*)*'
)
TAIL = r'[\s,]*(?:\b(?:please|now|instead|then|thanks|thank\s+you)\b[\s,]*)*[.!?\s]*$'
OBJECT = r'(?:it|them|that|this|those|these|its|their)'
BACK_RE = re.compile(
    r'^(?:(?:go|take\s+me|step|going)\s+back(?:\s+to\s+(?:the\s+)?(?:last|previous|earlier|'
    r'one\s+before|picture\s+before)(?:\s+(?:one|picture|image|version))?)?(?:\s+one)?'
    r'|undo(?:\s+(?:that|it|the\s+last\s+(?:one|change|edit)))?'
    r'|(?:the\s+)?(?:previous|earlier)\s+(?:one|picture|image|version)|back)$'
)
ANOTHER_RE = re.compile(
    r'^(?:(?:give\s+me|show\s+me|draw|paint|make|try|do|let\'s\s+see)\s+)?'
    r'(?:(?:another|a\s+different|a\s+new)(?:\s+(?:one|picture|image|version|variation|seed))?'
    rf'(?:\s+of\s+(?:{OBJECT}|the\s+same))?|one\s+more(?:\s+time)?|re-?roll|new\s+seed)$'
)
AGAIN_PHRASE = (
    rf'(?:(?:do|draw|paint|make|show)\s+(?:{OBJECT}\s+)?)?'
    r'(?:again|same\s+again|once\s+more|(?:the\s+)?same(?:\s+(?:one|picture|image|thing|seed))?)'
)
AGAIN_RE = re.compile(rf'^{AGAIN_PHRASE}$')
SAME_BUT_RE = re.compile(rf'^{AGAIN_PHRASE}\s*,?\s*but\s+(?P<rest>.+)$')
EDIT_VERB = r'(?:make|turn|paint|colou?r|change|switch|set|render|have|let)'
MOVE_VERB = r'(?:move|put|place|shift|bring|push|slide|drag)'
ADD_VERB = r'(?:add|include|put\s+in|throw\s+in|also\s+draw)'
REMOVE_VERB = r'(?:remove|delete|drop|erase|take\s+(?:away|out|off)|get\s+rid\s+of|lose|no\s+more)'
REFERENT = (
    rf'(?:{OBJECT}|the\s+(?:\w+\s+)?(?:one|ones|thing|things|picture|image|background|'
    rf'colou?r|size|sky)|the\s+(?:(?:{_COLOUR}|{_SIZE})\s+)*(?:{_THING}))\b'
)
# What marks an utterance as an edit of the picture rather than a new one.
EDIT_START_RE = re.compile(
    rf'^(?:(?:{EDIT_VERB})\s+{REFERENT}|(?:{MOVE_VERB}|{ADD_VERB}|{REMOVE_VERB})\b'
    r'|(?:but|instead|rather)\b|(?:another|one\s+more)\s+|(?:just\s+|only\s+)?(?:one|two|three)\s+of\s+them)'
)
# A new picture starts like one: an article or an opening ("a ...", "paint me ...").
NEW_START_RE = re.compile(r'^(?:an?|the|some|one|two|three|\w+\s+me)\b')
PRONOUN_ONE_RE = re.compile(r'\bones?\s*$')
# A thing as a prompt says it: "a big red ball", "two nice green trees".
THING_PHRASE_RE = re.compile(
    rf'(?<![\w-])(?:(?:a|an|one|two|three|the|some|another)\s+)?(?:(?:{_FILLER})\s+)*'
    rf'(?:(?P<size>{_SIZE})\s+)?(?:(?P<colour>{_COLOUR})\s+)?(?P<thing>{_THING})(?![\w-])',
    re.IGNORECASE,
)
# What a new thing of an "add" joins the prompt with, and what may join an added thing to it.
ADDED_JOIN = ', with '
JOINED_RE = r'(?:\s*,?\s*(?:and|with|plus|next\s+to|beside)\s+)?'
PREPOSITION = (
    r'(?:(?:on|in|at|by|near|to|towards|over|above|under|against|next\s+to|in\s+front\s+of)'
    r'\s+(?:(?:a|an|the)\s+)?)?'
)
PLACE_PHRASE_RE = re.compile(
    WORD.format(PREPOSITION + f'(?:{alternatives(PLACE_WORDS)})'), re.IGNORECASE
)
POSITION_PHRASE_RE = re.compile(
    WORD.format(
        PREPOSITION + f'(?:{alternatives(POSITION_WORDS)})'
        r'(?:\s+(?:side|of\s+the\s+(?:picture|image)))?'
    ),
    re.IGNORECASE,
)
PLACE_RE = re.compile(WORD.format(alternatives(PLACE_WORDS)))
COLOUR_RE = re.compile(WORD.format(_COLOUR))
THING_RE = re.compile(WORD.format(_THING))
POSITION_RE = re.compile(WORD.format(alternatives({**POSITION_WORDS, **DIRECTIONS})))
SIZE_RE = re.compile(WORD.format(_SIZE))
COMPARATIVE_RE = re.compile(WORD.format(alternatives(COMPARATIVES)))
COUNT_RE = re.compile(
    rf'(?:\b(?:make\s+(?:{OBJECT})|just|only)\s+(?P<any>one|two|three)\b'
    r'|\b(?P<many>two|three)(?:\s+of\s+them)?\b)'
)
ADD_RE = re.compile(
    rf'(?:\b{ADD_VERB}\s+(?:(?:a|an|another|one\s+more|one|the|some)\s+)?'
    r'|\b(?:another|one\s+more)\s+)'
    rf'(?:(?P<size>{_SIZE})\s+)?(?:(?P<colour>{_COLOUR})\s+)?(?P<thing>{_THING})\b'
)
# "add another", "add one more of them": one more of the picture's thing.
ADD_SAME_RE = re.compile(rf'\b{ADD_VERB}\s+(?:another|one\s+more)(?:\s+(?:one|of\s+them))?$')
REMOVE_RE = re.compile(
    rf'\b{REMOVE_VERB}\s+(?:(?:the|a|an|one|that|this|all\s+the)\s+)?'
    rf'(?:(?:{_SIZE}|{_COLOUR})\s+)*(?:(?P<thing>{_THING})|{OBJECT})?'
)

UNDERSTOOD = (
    'say a colour ("make it blue"), a place ("at night", "on the beach"), a size ("bigger"), '
    'a side ("move it to the left"), a thing ("make it a boat", "add a tree", "remove the '
    'tree"), "another one", "again", "same but ..." or "go back"'
)


class EditError(ValueError):
    """An utterance that is an edit of the picture, but one that cannot be applied to it."""


@dataclass(frozen=True)
class Change:
    """One thing an edit changed: ``what`` (colour, place, size, position, thing, count, added,
    removed), what it was and what it is now (None: not said)."""

    what: str
    before: Optional[str]
    after: Optional[str]

    def __str__(self) -> str:
        if self.what in ('added', 'removed'):
            return f'{self.what} {self.after or self.before}'
        return f'{self.what} {self.before or "none"} -> {self.after or "none"}'


@dataclass(frozen=True)
class Edit:
    """What an utterance asks of the conversation: its kind, the prompt to draw, how to draw it
    (``drawn``: text, image or none), whether the previous seed stays, and what changed."""

    kind: str
    said: str
    prompt: Optional[str]
    drawn: str
    same_seed: bool = False
    changes: Tuple[Change, ...] = field(default_factory=tuple)

    @property
    def strength(self) -> Optional[float]:
        """The image-to-image strength of an edit drawn from the previous picture: the most
        that any of its changes needs. None for one drawn otherwise."""
        if self.drawn != FROM_IMAGE:
            return None
        return max(KEEP_COMPOSITION_STRENGTHS[change.what] for change in self.changes)

    def summary(self) -> str:
        """What was understood, as shown to the person: "changed: colour red -> blue"."""
        changed = 'changed: ' + ', '.join(map(str, self.changes)) if self.changes else ''
        if self.kind == EDIT:
            return changed
        if self.kind == AGAIN:
            return 'again: same prompt and seed' + (f'; {changed}' if changed else '')
        return {
            NEW: 'new picture',
            ANOTHER: 'another one: same prompt, new seed',
            BACK: 'went back to the previous picture',
        }[self.kind]


def normalised(said: str) -> str:
    """The utterance in lower case, without an address, politeness, fillers or end marks."""
    text = re.sub(r'\s+', ' ', said.lower().replace('’', "'")).strip()
    text = re.sub(LEAD, '', text)
    return re.sub(TAIL, '', text).strip(' ,')


def is_edit(text: str) -> bool:
    """Whether a normalised utterance speaks of the picture there is: an edit verb on it ("make
    it ...", "move ...", "add ...", "remove ..."), or words of change without a thing of their
    own ("blue", "at night", "bigger", "a blue one")."""
    if EDIT_START_RE.match(text):
        return True
    if THING_RE.search(text):
        return False
    changes_something = any(
        pattern.search(text)
        for pattern in (COLOUR_RE, PLACE_RE, POSITION_RE, SIZE_RE, COMPARATIVE_RE)
    )
    return changes_something and (
        not NEW_START_RE.match(text) or PRONOUN_ONE_RE.search(text) is not None
    )


def read_utterance(said: str, previous_prompt: Optional[str]) -> Edit:
    """Read what was said against the previous turn's prompt (None: no picture yet).

    Raises EditError when it is an edit that cannot be applied, or one with no picture to edit.
    """
    text = normalised(said)
    if BACK_RE.match(text):
        kind = BACK
    elif ANOTHER_RE.match(text):
        kind = ANOTHER
    elif AGAIN_RE.match(text) or SAME_BUT_RE.match(text):
        kind = AGAIN
    elif is_edit(text):
        kind = EDIT
    else:
        return Edit(NEW, said, said, FROM_TEXT)
    if previous_prompt is None:
        raise EditError(
            f'"{said}" asks to change a picture, but there is none yet: say what to draw first'
        )
    if kind == BACK:
        return Edit(BACK, said, None, NOT_DRAWN)
    if kind == ANOTHER:
        return Edit(ANOTHER, said, previous_prompt, FROM_TEXT)
    if kind == AGAIN:
        same_but = SAME_BUT_RE.match(text)
        if not same_but:
            return Edit(AGAIN, said, previous_prompt, FROM_TEXT, same_seed=True)
        prompt, changes = edited_prompt(same_but.group('rest'), previous_prompt, said)
        return Edit(AGAIN, said, prompt, FROM_TEXT, same_seed=True, changes=changes)
    prompt, changes = edited_prompt(text, previous_prompt, said)
    keeps = all(change.what in KEEP_COMPOSITION_STRENGTHS for change in changes)
    return Edit(EDIT, said, prompt, FROM_IMAGE if keeps else FROM_TEXT, True, changes)


def edited_prompt(text: str, prompt: str, said: str) -> Tuple[str, Tuple[Change, ...]]:
    """The previous ``prompt`` with the edit ``text`` applied, and the changes made."""
    before = parse_scene(prompt)
    extras = extra_things(prompt, before)
    after, added, removed = asked_scene(text, before, extras, said)
    changes = [
        Change(what, str_or_none(filled(before, what)), str_or_none(filled(after, what)))
        for what in ('thing', 'count', 'size', 'colour', 'position', 'place')
        if filled(before, what) != filled(after, what)
    ]
    changes += [Change('added', None, phrase) for phrase in added]
    changes += [Change('removed', thing, None) for thing in removed]
    if not changes:
        raise EditError(f'"{said}": the picture already shows that ({prompt})')
    return rewritten(prompt, before, after, added, removed), tuple(changes)


def str_or_none(value) -> Optional[str]:
    return None if value is None else str(value)


def filled(scene: Scene, what: str):
    """A scene's attribute with the world's defaults for what a prompt leaves unsaid."""
    value = getattr(scene, what)
    if value is None:
        return {'size': DEFAULT_SIZE, 'count': 1}.get(what)
    return value


def extra_things(prompt: str, scene: Scene) -> List[str]:
    """The things a prompt names besides its first one (added by earlier edits)."""
    things = [named(match) for match in THING_PHRASE_RE.finditer(prompt)]
    return [thing for thing in things[1:] if thing != scene.thing]


def asked_scene(
    text: str, before: Scene, extras: List[str], said: str
) -> Tuple[Scene, List[str], List[str]]:
    """The scene an edit asks for, the phrases of things it adds and the things it removes."""
    changes = {}
    added: List[str] = []
    removed: List[str] = []
    rest = text
    remove = REMOVE_RE.search(rest)
    if remove:
        thing = remove.group('thing') and THING_WORDS[remove.group('thing')]
        if thing is None or thing == before.thing:
            if thing is None and extras:
                raise EditError(f'"{said}": say which thing to remove: {", ".join(extras)}')
            if filled(before, 'count') > 1:
                changes['count'] = filled(before, 'count') - 1
            else:
                raise EditError(
                    f'"{said}": the {before.thing or "picture"} is the only thing in the picture; '
                    'say what to draw instead'
                )
        elif thing in extras:
            removed.append(thing)
        else:
            raise EditError(f'"{said}": there is no {thing} in the picture to remove')
        rest = rest[: remove.start()] + rest[remove.end() :]
    add = ADD_RE.search(rest) or ADD_SAME_RE.search(rest)
    if add:
        thing = THING_WORDS[add.group('thing')] if 'thing' in add.groupdict() else before.thing
        if thing == before.thing:
            changes['count'] = filled(before, 'count') + 1
        else:
            size = SIZE_WORDS.get(add.group('size') or '')
            added.append(thing_phrase(Scene(colour=add.group('colour'), thing=thing, size=size)))
        rest = rest[: add.start()] + rest[add.end() :]
    changes.update(attribute_changes(rest, before, said))
    if not changes and not added and not removed:
        raise EditError(f'could not read "{said}" as a change to the picture: {UNDERSTOOD}')
    after = before.with_(**changes)
    if (changes.keys() - {'place', 'position'}) and before.thing is None:
        raise EditError(
            f'"{said}": the picture names no thing to change (one of {", ".join(THINGS)})'
        )
    size, count = filled(after, 'size'), filled(after, 'count')
    if count > MAX_COUNT[size]:
        raise EditError(f'"{said}": at most {MAX_COUNT[size]} {size} things fit in the picture')
    return after, added, removed


def attribute_changes(text: str, before: Scene, said: str) -> dict:
    """The attributes an edit's words name: the last of each kind (a place's words are not a
    colour: "night sky", "white wall"); sizes by name or one step ("bigger")."""
    changes = {}
    places = PLACE_RE.findall(text)
    if places:
        changes['place'] = PLACE_WORDS[places[-1]]
    rest = PLACE_RE.sub(' ', text)
    for what, pattern in (('colour', COLOUR_RE), ('thing', THING_RE), ('position', POSITION_RE)):
        words = pattern.findall(rest)
        if words:
            changes[what] = words[-1]
    if 'thing' in changes:
        changes['thing'] = THING_WORDS[changes['thing']]
    if 'position' in changes:
        word = changes['position']
        changes['position'] = DIRECTIONS.get(word) or POSITION_WORDS[word]
    comparative = COMPARATIVE_RE.search(rest)
    if comparative:
        step = COMPARATIVES[comparative.group(1)]
        index = SIZE_ORDER.index(filled(before, 'size')) + step
        if not 0 <= index < len(SIZE_ORDER):
            extreme = 'biggest' if step > 0 else 'smallest'
            raise EditError(f'"{said}": it is already {filled(before, "size")}, the {extreme} size')
        changes['size'] = SIZE_ORDER[index]
    elif SIZE_RE.search(rest):
        changes['size'] = SIZE_WORDS[SIZE_RE.findall(rest)[-1]]
    count = COUNT_RE.search(rest)
    if count:
        changes['count'] = COUNT_WORDS[count.group('any') or count.group('many')]
    return {what: value for what, value in changes.items() if value is not None}


def named(phrase: re.Match) -> str:
    """The thing a match of THING_PHRASE_RE names."""
    return THING_WORDS[phrase.group('thing').lower()]


def rewritten(
    prompt: str, before: Scene, after: Scene, added: List[str], removed: List[str]
) -> str:
    """``prompt`` saying ``after`` instead of ``before``: the thing's phrase, the position and
    the place replaced where it says them (added where it does not), other words kept."""
    for thing in removed:
        phrase = [m for m in THING_PHRASE_RE.finditer(prompt) if named(m) == thing][-1]
        joined = re.compile(JOINED_RE + re.escape(phrase.group(0)), re.IGNORECASE)
        prompt = joined.sub('', prompt, count=1)
    main = next((m for m in THING_PHRASE_RE.finditer(prompt) if named(m) == before.thing), None)
    end = len(prompt)
    if main is not None:
        phrase = thing_phrase(after)
        prompt = prompt[: main.start()] + phrase + prompt[main.end() :]
        end = main.start() + len(phrase)
    if after.position != before.position:
        prompt, end = replaced(prompt, POSITION_PHRASE_RE, POSITIONS[after.position][0], end)
    if after.place != before.place:
        prompt, _ = replaced(prompt, PLACE_PHRASE_RE, PLACES[after.place][0], len(prompt))
    for phrase in added:
        prompt += ADDED_JOIN + phrase
    return tidy(prompt)


def replaced(prompt: str, pattern: re.Pattern, phrase: str, insert_at: int) -> Tuple[str, int]:
    """``prompt`` with the first match of ``pattern`` replaced by ``phrase``, or ``phrase``
    inserted at ``insert_at`` when nothing matches; and where the phrase ends."""
    match = pattern.search(prompt)
    if match:
        start, end = match.span()
    else:
        start = end = insert_at
        phrase = ' ' + phrase
    return prompt[:start] + phrase + prompt[end:], start + len(phrase)
