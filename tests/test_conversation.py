"""A conversation about a picture through the Flow, on every protocol, on the tiny random model:
what the service does with the turns (the conversation sent back, seeds, image-to-image, going
back, refusals). What the pictures show is judged on the trained model in
test_conversation_pixels.py."""

import base64
import subprocess
import sys
import time

import pytest

from devtools.offline_flow import ASSETS
from speech2image import defaults
from speech2image.edits import KEEP_COMPOSITION_STRENGTHS
from speech2image.schema import SpeechDoc
from tests.protocols import (
    ANSWER_TIMEOUT_S,
    INVALID,
    OK,
    SENDERS,
    STREAM_SENDERS,
    conversation_turn,
    image_bytes,
    over_grpc,
    post_stream,
    sse_events,
)
from tests.support import diffusion_metric, poll_until

WAYS = [(kind, protocol) for kind in ('request', 'stream') for protocol in sorted(SENDERS)]
CANCELLED = 'speech2image_diffusion_cancelled_requests_total'
UNET_CALLS = 'speech2image_diffusion_step_seconds_count'  # one per UNet call


def talk(flow, way, *utterances, parameters=None):
    """A conversation of ``utterances``; returns each turn's answered document."""
    conversation, answers = [], []
    for said in utterances:
        status, message, answered = conversation_turn(flow, way, said, conversation, parameters)
        assert status == OK, (said, message)
        answers.append(answered)
        conversation = answered['tags']['conversation']
    return answers


@pytest.mark.parametrize('way', WAYS, ids=[f'{k}-{p}' for k, p in WAYS])
def test_a_conversation_on_every_protocol(running_flow, way):
    new, blue, another, back = talk(
        running_flow,
        way,
        'a red ball on the left',
        'make it blue',
        'another one',
        'go back',
        parameters={'seed': 11},
    )
    assert new['tags']['edit']['kind'] == 'new'
    assert [image['tags']['seed'] for image in new['images']] == [11]
    # The edit: understood, shown, drawn image-to-image from the first picture, same seed.
    assert blue['text'] == 'a blue ball on the left'
    assert blue['tags']['edit']['summary'] == 'changed: colour red -> blue'
    assert blue['tags']['edit']['changes'] == [{'what': 'colour', 'before': 'red', 'after': 'blue'}]
    [image] = blue['images']
    assert (
        image['tags']['seed'] == 11
        and image['tags']['strength'] == KEEP_COMPOSITION_STRENGTHS['colour']
    )
    assert image['tags']['prompt'] == 'a blue ball on the left'
    # Another one: the same prompt, the next seed, the request's own seed notwithstanding.
    assert another['tags']['edit']['kind'] == 'another'
    assert [i['tags']['seed'] for i in another['images']] == [12]
    assert {i['tags']['prompt'] for i in another['images']} == {'a blue ball on the left'}
    # Going back: the picture before the last, exactly, and the conversation without the last.
    assert image_bytes(back['images'][0]) == image_bytes(blue['images'][0])
    assert [t['said'] for t in back['tags']['conversation']] == [
        'a red ball on the left',
        'make it blue',
    ]
    for answered in (new, blue, another):
        turns = answered['tags']['conversation']
        assert base64.b64decode(turns[-1]['image']) == image_bytes(answered['images'][0])


@pytest.mark.parametrize('way', WAYS, ids=[f'{k}-{p}' for k, p in WAYS])
def test_refusals_name_what_is_wrong_on_every_protocol(running_flow, way):
    [first] = talk(running_flow, way, 'a red ball on the left')
    turns = first['tags']['conversation']
    cases = [
        ('make it shiny', turns, 'could not read "make it shiny" as a change to the picture'),
        ('go back', turns, 'there is no earlier picture to go back to'),
        ('make it blue', [], 'there is none yet: say what to draw first'),
        (
            'make it blue',
            turns * (defaults.MAX_CONVERSATION_TURNS + 1),
            f'conversation has 9 turns, the limit is {defaults.MAX_CONVERSATION_TURNS}',
        ),
        ('make it blue', {'turns': turns}, "tag 'conversation' must be a list of turns"),
        (
            'make it blue',
            [{**turns[0], 'made_at': time.time() - defaults.CONVERSATION_MAX_AGE_SECONDS - 60}],
            'conversation expired',
        ),
    ]
    for said, conversation, message in cases:
        status, answer, _ = conversation_turn(running_flow, way, said, conversation)
        assert (status, message) == (INVALID, message) and message in answer, (said, answer)
    # The service goes on serving the conversation.
    assert conversation_turn(running_flow, way, 'make it blue', turns)[0] == OK


def test_turns_of_every_kind_share_a_request(running_flow):
    """One request, four documents: a new picture, an edit drawn from an image, a move drawn
    from words, and a step back; each gets its own answer."""
    [first, second] = talk(
        running_flow, ('request', 'gRPC'), 'a red ball on the left', 'make it green'
    )
    turns = second['tags']['conversation']
    docs = [
        SpeechDoc(text='a yellow star', tags={'conversation': []}),
        SpeechDoc(text='make it blue', tags={'conversation': turns}),
        SpeechDoc(text='move it to the right', tags={'conversation': turns}),
        SpeechDoc(text='go back', tags={'conversation': turns}),
    ]
    answer = over_grpc(running_flow.grpc, '/', docs, {})
    assert answer.status == OK, answer.message
    new, blue, moved, back = answer.docs
    assert [d['text'] for d in answer.docs] == [
        'a yellow star',
        'a blue ball on the left',
        'a green ball on the right',
        'a red ball on the left',
    ]
    assert 'strength' in blue['matches'][0]['tags']
    assert 'strength' not in moved['matches'][0]['tags']  # a move is drawn from the words
    assert image_bytes(back['matches'][0]) == image_bytes(first['images'][0])
    assert new['tags']['edit']['kind'] == 'new'


@pytest.mark.parametrize('image_format', ['jpeg', 'webp'])
def test_a_conversation_in_every_image_format(running_flow, image_format):
    first, blue, back = talk(
        running_flow,
        ('request', 'HTTP'),
        'a red ball',
        'make it blue',
        'go back',
        parameters={'image_format': image_format},
    )
    assert blue['images'][0]['mime_type'] == f'image/{image_format}'
    assert back['images'][0]['mime_type'] == f'image/{image_format}'
    assert image_bytes(back['images'][0]) == image_bytes(first['images'][0])


def test_an_edit_streams_its_image_to_image_steps_and_previews(running_flow):
    """Image-to-image runs the last ``strength`` of the steps: 10 steps at 0.6 are 6, each
    reported, with previews."""
    parameters = {'num_inference_steps': 10, 'preview_every': 2}
    [first] = talk(running_flow, ('stream', 'HTTP'), 'a red ball', parameters=parameters)
    doc = SpeechDoc(text='make it blue', tags={'conversation': first['tags']['conversation']})
    answer = STREAM_SENDERS['HTTP'](running_flow, doc, parameters)
    assert answer.status == OK, answer.message
    progress = [(e['step'], e['steps']) for e in answer.events if e['event'] == 'progress']
    assert progress == [(step, 6) for step in range(1, 7)]
    assert [e['step'] for e in answer.events if e['event'] == 'preview'] == [2, 4]


def test_cancelling_an_edit_stops_its_steps(running_flow):
    """Hanging up on a long image-to-image edit stops its UNet calls within a few steps."""
    [first] = talk(running_flow, ('request', 'gRPC'), 'a red ball', parameters={'seed': 1})
    doc = SpeechDoc(text='make it blue', tags={'conversation': first['tags']['conversation']})
    cancelled_before = diffusion_metric(running_flow, CANCELLED)
    unet_before = diffusion_metric(running_flow, UNET_CALLS)
    with post_stream(running_flow.http, doc, {'num_inference_steps': 100}) as response:
        for event in sse_events(response):
            if event['event'] == 'progress' and event['step'] == 3:
                assert event['steps'] == 60
                break
    poll_until(
        lambda: diffusion_metric(running_flow, CANCELLED) == cancelled_before + 1,
        30,
        'the cancel to be counted',
    )
    computed = diffusion_metric(running_flow, UNET_CALLS) - unet_before
    assert 3 <= computed <= 3 + 5, computed
    # And the Executor goes on with the conversation.
    status, message, _ = conversation_turn(
        running_flow, ('request', 'HTTP'), 'make it blue', first['tags']['conversation']
    )
    assert status == OK, message


def test_the_cli_talks_across_clips_and_typed_lines(running_flow, tmp_path):
    """``speech2image --talk``: a typed picture, a spoken edit (assets/make_it_blue.wav), an
    edit it refuses (said and shown, the conversation goes on), then back to the first."""
    lines = ['a red ball on the left', str(ASSETS / 'make_it_blue.wav'), 'make it shiny', 'go back']
    result = subprocess.run(
        [sys.executable, '-m', 'speech2image.client', '--host', running_flow.grpc]
        + ['--out', str(tmp_path), '--seed', '5', '--talk'],
        input='\n'.join(lines) + '\n',
        capture_output=True,
        text=True,
        timeout=ANSWER_TIMEOUT_S * 2,
    )
    assert result.returncode == 1, result.stderr  # one turn was refused
    assert 'drew "a blue ball on the left" (changed: colour red -> blue)' in result.stdout
    assert 'refused: document 0' in result.stderr
    assert 'could not read "make it shiny"' in ' '.join(result.stderr.split())
    # The three pictures, in the order they were saved (going back saves the first one again).
    first, blue, back = sorted(tmp_path.glob('*.png'), key=lambda path: path.stat().st_mtime_ns)
    assert back.read_bytes() == first.read_bytes() != blue.read_bytes()
