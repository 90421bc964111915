"""The spoken-edit parser's phrasing table (speech2image/edits.py) and the conversation's checks
and bounds (speech2image/conversation.py), without a model."""

import base64
import io

import pytest
from PIL import Image

from speech2image import defaults
from speech2image.conversation import (
    ConversationError,
    PlannedTurn,
    checked_turns,
    conversation_after,
    plan_turn,
)
from speech2image.edits import (
    AGAIN,
    ANOTHER,
    BACK,
    EDIT,
    FROM_IMAGE,
    FROM_TEXT,
    NEW,
    EditError,
    read_utterance,
)

BALL = 'a red ball on the left'
NOW = 1_000_000.0
SIDE = 64
MAX_SIDE = 1024


@pytest.mark.parametrize(
    'said, kind, drawn, prompt, summary',
    [
        # Colours and places keep the composition: drawn from the previous picture.
        (
            'make it blue',
            EDIT,
            FROM_IMAGE,
            'a blue ball on the left',
            'changed: colour red -> blue',
        ),
        ('Jarvis, make it blue please', EDIT, FROM_IMAGE, 'a blue ball on the left', None),
        ('now paint it green', EDIT, FROM_IMAGE, 'a green ball on the left', None),
        ('turn the ball purple', EDIT, FROM_IMAGE, 'a purple ball on the left', None),
        ('blue', EDIT, FROM_IMAGE, 'a blue ball on the left', None),
        ('a yellow one', EDIT, FROM_IMAGE, 'a yellow ball on the left', None),
        (
            'now at night',
            EDIT,
            FROM_IMAGE,
            'a red ball on the left in the night sky',
            'changed: place none -> night sky',
        ),
        (
            'change the background to snow',
            EDIT,
            FROM_IMAGE,
            'a red ball on the left in the snow',
            None,
        ),
        # Moves, sizes and things move shapes: drawn from the words with the same seed.
        (
            'move it to the right',
            EDIT,
            FROM_TEXT,
            'a red ball on the right',
            'changed: position left -> right',
        ),
        ('move it up', EDIT, FROM_TEXT, 'a red ball at the top', None),
        ('to the middle', EDIT, FROM_TEXT, 'a red ball in the middle', None),
        ('bigger', EDIT, FROM_TEXT, 'a big red ball on the left', 'changed: size medium -> big'),
        ('make it tiny', EDIT, FROM_TEXT, 'a small red ball on the left', None),
        (
            'make it a boat',
            EDIT,
            FROM_TEXT,
            'a red boat on the left',
            'changed: thing ball -> boat',
        ),
        ('add another ball', EDIT, FROM_TEXT, 'two red balls on the left', 'changed: count 1 -> 2'),
        ('one more ball', EDIT, FROM_TEXT, 'two red balls on the left', None),
        (
            'add a green tree',
            EDIT,
            FROM_TEXT,
            f'{BALL}, with a green tree',
            'changed: added a green tree',
        ),
        (
            'make it bigger and yellow',
            EDIT,
            FROM_TEXT,
            'a big yellow ball on the left',
            'changed: size medium -> big, colour red -> yellow',
        ),
        # The conversation's own words.
        ('another one', ANOTHER, FROM_TEXT, BALL, 'another one: same prompt, new seed'),
        ('give me a different one', ANOTHER, FROM_TEXT, BALL, None),
        ('again', AGAIN, FROM_TEXT, BALL, 'again: same prompt and seed'),
        (
            'same but blue',
            AGAIN,
            FROM_TEXT,
            'a blue ball on the left',
            'again: same prompt and seed; changed: colour red -> blue',
        ),
        ('again, but on the beach', AGAIN, FROM_TEXT, 'a red ball on the left on the beach', None),
        ('go back', BACK, 'none', None, 'went back to the previous picture'),
        ('undo that', BACK, 'none', None, None),
        # Not edits: a new picture of what was said.
        ('a green boat on the sea', NEW, FROM_TEXT, 'a green boat on the sea', 'new picture'),
        ('paint me a cat', NEW, FROM_TEXT, 'paint me a cat', None),
        ('draw two pictures of a star', NEW, FROM_TEXT, 'draw two pictures of a star', None),
    ],
)
def test_what_the_parser_understands(said, kind, drawn, prompt, summary):
    edit = read_utterance(said, BALL)
    assert (edit.kind, edit.drawn, edit.prompt) == (kind, drawn, prompt)
    if summary is not None:
        assert edit.summary() == summary
    assert edit.same_seed == (kind in (EDIT, AGAIN))


@pytest.mark.parametrize(
    'said, strength',
    [
        ('make it blue', 0.6),
        ('now at night', 0.7),
        ('make it blue and put it on the beach', 0.7),
        ('move it to the right', None),
        ('another one', None),
    ],
)
def test_image_to_image_strength_is_what_the_change_needs(said, strength):
    """A place repaints most of the picture and needs more of the steps than a colour; an edit
    of both takes the larger; a turn drawn from the words has none."""
    assert read_utterance(said, BALL).strength == strength


@pytest.mark.parametrize(
    'previous, said, prompt',
    [
        # Other words of the prompt stay; only what changed is said anew.
        (
            'a red boat on the sea at sunset, oil painting',
            'make it blue',
            'a blue boat on the sea at sunset, oil painting',
        ),
        (
            'a painting of a big red ball in the middle, on a wooden table',
            'smaller',
            'a painting of a red ball in the middle, on a wooden table',
        ),
        ('A Red Ball on the left', 'make it blue', 'a blue ball on the left'),
        (f'{BALL}, with a green tree', 'remove the tree', BALL),
        ('two red balls', 'remove a ball', 'a red ball'),
        ('a lighthouse at dusk', 'on the beach', 'a lighthouse at dusk on the beach'),
    ],
)
def test_edits_keep_the_rest_of_the_prompt(previous, said, prompt):
    assert read_utterance(said, previous).prompt == prompt


@pytest.mark.parametrize(
    'previous, said, message',
    [
        (BALL, 'make it shiny', 'could not read "make it shiny" as a change to the picture'),
        (BALL, 'move it', 'could not read "move it"'),
        (BALL, 'make it red', 'the picture already shows that'),
        (BALL, 'remove the tree', 'there is no tree in the picture to remove'),
        (BALL, 'remove the ball', 'the ball is the only thing in the picture'),
        ('a big red ball', 'bigger', 'it is already big, the biggest size'),
        ('two big red balls', 'add another ball', 'at most 2 big things fit'),
        ('a sunset', 'make it blue', 'names no thing to change'),
        (None, 'make it blue', 'there is none yet: say what to draw first'),
        (None, 'another one', 'there is none yet'),
    ],
)
def test_what_the_parser_refuses(previous, said, message):
    with pytest.raises(EditError, match=message):
        read_utterance(said, previous)


def test_without_a_picture_anything_but_an_edit_is_a_new_one():
    assert read_utterance('a red ball', None).kind == NEW


def png(side: int = SIDE, colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new('RGB', (side, side), colour).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()


def turn(prompt: str = BALL, seed: float = 7, image: str = None, made_at: float = NOW) -> dict:
    """A turn as a client sends it back (numbers as gRPC's Struct carries them: doubles)."""
    return {
        'said': prompt,
        'prompt': prompt,
        'seed': float(seed),
        'images': 1.0,
        'settings': {
            'num_inference_steps': 2.0,
            'guidance_scale': 7.5,
            'width': float(SIDE),
            'height': float(SIDE),
            'negative_prompt': None,
        },
        'image': png() if image is None else image,
        'mime_type': 'image/png',
        'summary': 'new picture',
        'made_at': made_at,
    }


def test_a_turn_carries_the_previous_settings_and_seed():
    turns = [turn(seed=7)]
    for said, seed in (('make it blue', 7), ('again', 7), ('another one', 8), ('a cat', None)):
        planned = plan_turn(said, turns, MAX_SIDE, now=NOW)
        parameters = planned.settings_under({'seed': 99, 'num_inference_steps': 5}, False)
        assert parameters.get('seed', 99 if seed is None else None) == (seed or 99), said
        assert parameters['num_inference_steps'] == 5  # the request's own settings win
    said_seed = plan_turn('another one', turns, MAX_SIDE, now=NOW).settings_under({'seed': 3}, True)
    assert said_seed['seed'] == 3  # a seed said in this turn wins over the conversation's


def test_going_back_needs_an_earlier_picture():
    with pytest.raises(EditError, match='no earlier picture to go back to'):
        plan_turn('go back', [turn()], MAX_SIDE, now=NOW)
    planned = plan_turn('go back', [turn('a red ball'), turn(BALL)], MAX_SIDE, now=NOW)
    assert [t['prompt'] for t in conversation_after(planned, None)] == ['a red ball']


def test_answers_keep_the_conversation_within_its_limits():
    turns = [turn(f'a red ball {n}') for n in range(defaults.MAX_CONVERSATION_TURNS)]
    planned = PlannedTurn(read_utterance('bigger', BALL), turns)
    kept = conversation_after(planned, turn('the newest'))
    assert len(kept) == defaults.MAX_CONVERSATION_TURNS
    assert [kept[0]['prompt'], kept[-1]['prompt']] == ['a red ball 1', 'the newest']


@pytest.mark.parametrize(
    'conversation, message',
    [
        ({'turns': []}, "tag 'conversation' must be a list of turns, got dict"),
        (
            [turn()] * (defaults.MAX_CONVERSATION_TURNS + 1),
            f'conversation has 9 turns, the limit is {defaults.MAX_CONVERSATION_TURNS}',
        ),
        (['a red ball'], 'conversation turn 0: must be an object, got str'),
        ([{**turn(), 'prompt': None}], "turn 0: 'prompt' must be a str"),
        ([turn(), {**turn(), 'seed': 2.5}], "turn 1: 'seed' must be an integer from 0 to"),
        ([{**turn(), 'seed': -1}], "'seed' must be an integer from 0 to 2147483647, got -1"),
        ([{**turn(), 'made_at': 'yesterday'}], "'made_at' must be a time in seconds"),
        ([turn(image='not base64!')], "turn 0: 'image' is not base64"),
        ([turn(image=base64.b64encode(b'GIF89a' + bytes(20)).decode())], "'image' is not an image"),
        ([turn(image=png(side=MAX_SIDE + 8))], "'image' is 1032x1032, the limit is 1024 a side"),
        (
            [turn(made_at=NOW - defaults.CONVERSATION_MAX_AGE_SECONDS - 5)],
            'conversation expired: its last turn is 3605 s old, the limit is 3600',
        ),
    ],
)
def test_a_conversation_it_refuses_is_named(conversation, message):
    with pytest.raises(ConversationError, match=message):
        checked_turns(conversation, MAX_SIDE, NOW)


def test_a_conversation_over_its_bytes_is_refused():
    # Incompressible pixels: each PNG is about 3 MiB, three are over the 8 MiB limit.
    noisy = Image.frombytes('RGB', (1024, 1024), bytes(range(256)) * 12288)
    buffer = io.BytesIO()
    noisy.save(buffer, format='PNG', compress_level=0)
    image = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(ConversationError, match='MiB of images, the limit is 8 MiB'):
        checked_turns([turn(image=image)] * 3, MAX_SIDE, NOW)
