"""A conversation about one picture, carried by the request: no replica keeps anything.

Each answer's document holds the conversation so far in its tag ``conversation``: a list of
turns, the newest last, each with what was said, the prompt and seed that drew it, its settings
and its first image (base64). The client sends that list back, as it got it, with its next
utterance; any gateway and any diffusion replica can then take the turn (docs/conversation.md).

    turn 1: text "a red ball on the left", tags {"conversation": []}
    -> image, tags {"edit": {"kind": "new", ...}, "conversation": [turn 1]}
    turn 2: text "make it blue", tags {"conversation": [turn 1]}
    -> image drawn from turn 1's, tags {"edit": {"summary": "changed: colour red -> blue"},
       "conversation": [turn 1, turn 2]}

A document without the tag is no conversation: its text is drawn as it is. Bounded: at most
``MAX_CONVERSATION_TURNS`` turns and ``MAX_CONVERSATION_MB`` of images (the oldest turns are
dropped from answers, a request over either is refused), and a conversation whose last turn is
older than ``CONVERSATION_MAX_AGE_SECONDS`` is refused: start a new picture.
"""

import base64
import binascii
import io
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from speech2image.defaults import (
    CONVERSATION_MAX_AGE_SECONDS,
    MAX_CONVERSATION_MB,
    MAX_CONVERSATION_TURNS,
    MEBIBYTE,
)
from speech2image.edits import ANOTHER, BACK, FROM_IMAGE, NEW, Edit, EditError, read_utterance

CONVERSATION_TAG = 'conversation'  # in and out: the turns so far
EDIT_TAG = 'edit'  # out: what the turn understood (kind, changes, summary)
# The settings a turn passes on to the next, as StableDiffusionExecutor parameters.
CARRIED_SETTINGS = ('num_inference_steps', 'guidance_scale', 'width', 'height', 'negative_prompt')
SEED_LIMIT = 2**31
IMAGE_FORMATS = ('PNG', 'JPEG', 'WEBP')


class ConversationError(ValueError):
    """A conversation the service refuses: malformed, over a limit, or too old."""


@dataclass(frozen=True)
class PlannedTurn:
    """A turn to take: what was understood, the turns before it, and what to draw from."""

    edit: Edit
    turns: List[Dict[str, Any]]

    @property
    def previous(self) -> Optional[Dict[str, Any]]:
        return self.turns[-1] if self.turns else None

    @property
    def source_image_needed(self) -> bool:
        return self.edit.drawn == FROM_IMAGE

    def settings_under(self, asked: Dict[str, Any], spoken_seed: bool) -> Dict[str, Any]:
        """The generation parameters of this turn: ``asked`` (the request's, with the spoken
        ones) over the previous turn's settings. The seed is the conversation's: the previous
        one for edits and "again", the next unused one for "another one"; the request's seed
        parameter seeds new pictures only, a seed said in this turn always wins."""
        if self.edit.kind == NEW:
            return asked
        previous = self.previous
        carried = {
            name: previous['settings'][name]
            for name in CARRIED_SETTINGS
            if previous['settings'][name] is not None
        }
        parameters = {**carried, **asked}
        if not spoken_seed:
            if self.edit.kind == ANOTHER:
                parameters['seed'] = (previous['seed'] + previous['images']) % SEED_LIMIT
            else:
                parameters['seed'] = previous['seed']
        return parameters

    def source_image(self, width: int, height: int):
        """The previous picture as an RGB PIL image of ``width`` x ``height``, for an edit
        drawn from it."""
        from PIL import Image

        image = Image.open(io.BytesIO(turn_image(self.previous))).convert('RGB')
        return image if image.size == (width, height) else image.resize((width, height))


def plan_turn(
    said: str, conversation: Any, max_side: int, now: Optional[float] = None
) -> PlannedTurn:
    """Read ``said`` against a conversation (the tag's value as the client sent it).

    Raises ConversationError for a malformed, over-long or expired conversation, and
    speech2image.edits.EditError for an edit that cannot be applied (such as going back from
    the first picture)."""
    turns = checked_turns(conversation, max_side, time.time() if now is None else now)
    previous = turns[-1]['prompt'] if turns else None
    edit = read_utterance(said, previous)
    if edit.kind == BACK and len(turns) < 2:
        raise EditError(f'"{said}": there is no earlier picture to go back to')
    return PlannedTurn(edit, turns)


def checked_turns(conversation: Any, max_side: int, now: float) -> List[Dict[str, Any]]:
    """The conversation's turns, each checked; raises ConversationError naming what is wrong."""
    if not isinstance(conversation, list):
        raise ConversationError(
            f"tag '{CONVERSATION_TAG}' must be a list of turns, got {type(conversation).__name__}"
        )
    if len(conversation) > MAX_CONVERSATION_TURNS:
        raise ConversationError(
            f'conversation has {len(conversation)} turns, the limit is {MAX_CONVERSATION_TURNS}'
        )
    turns = [checked_turn(number, turn, max_side) for number, turn in enumerate(conversation)]
    size = sum(len(turn_image(turn)) for turn in turns)
    if size > MAX_CONVERSATION_MB * MEBIBYTE:
        raise ConversationError(
            f'conversation holds {size / MEBIBYTE:.1f} MiB of images, '
            f'the limit is {MAX_CONVERSATION_MB} MiB'
        )
    if turns and now - turns[-1]['made_at'] > CONVERSATION_MAX_AGE_SECONDS:
        raise ConversationError(
            f'conversation expired: its last turn is {now - turns[-1]["made_at"]:.0f} s old, '
            f'the limit is {CONVERSATION_MAX_AGE_SECONDS} s; start a new picture'
        )
    return turns


def checked_turn(number: int, turn: Any, max_side: int) -> Dict[str, Any]:
    """One turn with its numbers as ints (gRPC carries them as doubles); raises
    ConversationError naming the turn and the field."""

    def fail(reason: str) -> ConversationError:
        return ConversationError(f'conversation turn {number}: {reason}')

    if not isinstance(turn, dict):
        raise fail(f'must be an object, got {type(turn).__name__}')
    for name, kind in (('prompt', str), ('image', str), ('settings', dict)):
        if not isinstance(turn.get(name), kind):
            raise fail(f"'{name}' must be a {kind.__name__}, got {turn.get(name)!r:.80}")
    checked = dict(turn)
    for name, low, high in (('seed', 0, SEED_LIMIT - 1), ('images', 1, 100)):
        checked[name] = whole_number(turn.get(name), low, high, fail, name)
    made_at = turn.get('made_at')
    if (
        isinstance(made_at, bool)
        or not isinstance(made_at, (int, float))
        or not math.isfinite(made_at)
    ):
        raise fail(f"'made_at' must be a time in seconds, got {made_at!r:.80}")
    settings = turn['settings']
    checked['settings'] = {name: settings.get(name) for name in CARRIED_SETTINGS}
    for name in ('num_inference_steps', 'width', 'height'):
        checked['settings'][name] = whole_number(settings.get(name), 1, max_side, fail, name)
    try:
        image = turn_image(checked)
    except (binascii.Error, ValueError):
        raise fail("'image' is not base64") from None
    check_image(image, max_side, fail)
    return checked


def whole_number(value: Any, low: int, high: int, fail, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"'{name}' must be an integer, got {value!r:.80}")
    if not (math.isfinite(value) and value == int(value) and low <= value <= high):
        raise fail(f"'{name}' must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def check_image(data: bytes, max_side: int, fail) -> None:
    """An image the service could have made: PNG, JPEG or WebP, each side at most ``max_side``.
    Reads the header only, so a decompression bomb is refused before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError):
        raise fail("'image' is not an image") from None
    if image_format not in IMAGE_FORMATS:
        raise fail(f"'image' must be PNG, JPEG or WebP, got {image_format}")
    if max(width, height) > max_side:
        raise fail(f"'image' is {width}x{height}, the limit is {max_side} a side")


def turn_image(turn: Dict[str, Any]) -> bytes:
    return base64.b64decode(turn['image'], validate=True)


def made_turn(planned: PlannedTurn, prompt: str, images, now: Optional[float] = None) -> Dict:
    """The record of a turn drawn as ``images`` (the answer's ImageDocs): what the next turn
    needs to go on from it."""
    first = images[0]
    return {
        'said': planned.edit.said,
        'prompt': prompt,
        'seed': first.tags['seed'],
        'images': len(images),
        'settings': {
            'num_inference_steps': first.tags['num_inference_steps'],
            'guidance_scale': first.tags['guidance_scale'],
            'width': first.width,
            'height': first.height,
            'negative_prompt': first.tags.get('negative_prompt'),
        },
        'image': base64.b64encode(bytes(first.bytes_)).decode('ascii'),
        'mime_type': first.mime_type,
        'summary': planned.edit.summary(),
        'made_at': time.time() if now is None else now,
    }


def answered_turns(doc, planned: PlannedTurn) -> None:
    """Finish a turn's document: its images (a turn that goes back: the picture before the
    last, as it was), its prompt as ``text``, what it understood and the conversation to send
    back in its tags."""
    from docarray import DocList

    from speech2image.schema import ImageDoc

    if planned.edit.kind == BACK:
        answer = planned.turns[-2]
        doc.text = answer['prompt']
        doc.matches = DocList[ImageDoc]([turn_image_doc(answer)])
        turn = None
    else:
        doc.text = planned.edit.prompt
        turn = made_turn(planned, doc.text, doc.matches)
    doc.tags[EDIT_TAG] = edit_tags(planned)
    doc.tags[CONVERSATION_TAG] = conversation_after(planned, turn)


def turn_image_doc(turn: Dict[str, Any]):
    """A turn's picture as the ImageDoc it was answered with (its bytes unchanged)."""
    from speech2image.schema import ImageDoc

    settings = turn['settings']
    return ImageDoc(
        bytes_=turn_image(turn),
        mime_type=turn.get('mime_type') or 'image/png',
        width=settings['width'],
        height=settings['height'],
        tags={
            'prompt': turn['prompt'],
            'seed': turn['seed'],
            'negative_prompt': settings['negative_prompt'],
            'num_inference_steps': settings['num_inference_steps'],
            'guidance_scale': settings['guidance_scale'],
        },
    )


def conversation_after(planned: PlannedTurn, turn: Optional[Dict]) -> List[Dict]:
    """The conversation to answer with: the turns with this one appended (or, going back,
    without the last), the oldest dropped to stay within the limits."""
    turns = planned.turns[:-1] if planned.edit.kind == BACK else [*planned.turns, turn]
    while len(turns) > MAX_CONVERSATION_TURNS or (
        len(turns) > 1 and sum(len(turn_image(t)) for t in turns) > MAX_CONVERSATION_MB * MEBIBYTE
    ):
        turns = turns[1:]
    return turns


def edit_tags(planned: PlannedTurn) -> Dict[str, Any]:
    """What the turn understood, for the person: kind, changes and the summary line."""
    return {
        'kind': planned.edit.kind,
        'said': planned.edit.said,
        'changes': [
            {'what': c.what, 'before': c.before, 'after': c.after} for c in planned.edit.changes
        ],
        'summary': planned.edit.summary(),
        'drawn_from': planned.edit.drawn,
    }
