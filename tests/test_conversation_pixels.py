"""A conversation judged by its pixels, through the Flow, on the trained offline model
(models/shapes-world), with devtools/world_judge.py reading each picture.

    "a red ball on the left" -> "make it blue" -> "move it to the right" -> "another one"
    -> "go back" -> "now at night"

Turns alternate between two Flows that share nothing (two gateways, two diffusion Executors):
each turn is served by another replica than the turn before, as behind a Service without sticky
sessions. On the random model these tests fail
(``S2I_OFFLINE_DIFFUSION_MODEL=models/tiny-stable-diffusion pytest tests/test_conversation_pixels.py``):
the judge finds no red ball on the left.
"""

import pytest

from devtools.offline_flow import serve_flow
from devtools.world_judge import judge
from tests.protocols import OK, conversation_turn, image_bytes

# Enough steps for the trained model to draw what is said; a fixed seed makes the pictures the
# same on every run.
PARAMETERS = {'num_inference_steps': 20, 'seed': 3}
TURNS = (
    'a red ball on the left',
    'make it blue',
    'move it to the right',
    'another one',
    'go back',
    'now at night',
)
# How far an edit that keeps the composition may move the thing: a tenth of the width.
KEPT_CENTROID = 0.1
# How much of the thing's pixels an edit that keeps the composition keeps: over half their union.
KEPT_OVERLAP = 0.5
# How far "move it to the right" must move it: from the left quarter towards the right one.
MOVED_CENTROID = 0.25


@pytest.fixture(scope='module')
def answers(running_flow):
    """Each turn's answered document, the turns sent to the shared Flow and a second one in
    turn."""
    with serve_flow() as second:
        first = running_flow
        conversation, answers = [], {}
        for number, said in enumerate(TURNS):
            flow = (first, second)[number % 2]
            status, message, answered = conversation_turn(
                flow, ('request', 'gRPC'), said, conversation, PARAMETERS
            )
            assert status == OK, (said, message)
            answers[said] = answered
            conversation = answered['tags']['conversation']
        # The edit again, on the other Flow: the same picture, whoever draws it.
        status, message, again = conversation_turn(
            first,
            ('request', 'gRPC'),
            'make it blue',
            answers[TURNS[0]]['tags']['conversation'],
            PARAMETERS,
        )
        assert status == OK, message
        answers['make it blue, on the first Flow'] = again
    return answers


def judged(answered):
    """The judge's verdict on a turn's (first) picture."""
    return judge(image_bytes(answered['images'][0]))


def test_the_first_picture_is_what_was_said(answers):
    first = judged(answers['a red ball on the left'])
    assert (first.colour, first.thing, first.position) == ('red', 'ball', 'left'), first


def test_make_it_blue_gives_a_blue_ball_that_stays_on_the_left(answers):
    first, blue = judged(answers['a red ball on the left']), judged(answers['make it blue'])
    assert (blue.colour, blue.thing) == ('blue', 'ball'), blue
    assert abs(blue.centroid[0] - first.centroid[0]) < KEPT_CENTROID, (first, blue)
    assert answers['make it blue']['tags']['edit']['summary'] == 'changed: colour red -> blue'


def test_a_turn_on_another_replica_draws_the_same_picture(answers):
    """Turn two went to the second Flow; sent to the first, it gives the same bytes."""
    assert image_bytes(answers['make it blue']['images'][0]) == image_bytes(
        answers['make it blue, on the first Flow']['images'][0]
    )


def test_move_it_to_the_right_moves_it(answers):
    blue, moved = judged(answers['make it blue']), judged(answers['move it to the right'])
    assert (moved.colour, moved.thing, moved.position) == ('blue', 'ball', 'right'), moved
    assert moved.centroid[0] - blue.centroid[0] > MOVED_CENTROID, (blue, moved)


def test_another_one_is_a_different_picture_of_the_same_prompt(answers):
    moved, another = answers['move it to the right'], answers['another one']
    assert another['text'] == moved['text'] == 'a blue ball on the right'
    assert image_bytes(another['images'][0]) != image_bytes(moved['images'][0])
    judgement = judged(another)
    assert (judgement.colour, judgement.thing, judgement.position) == ('blue', 'ball', 'right')


def test_go_back_returns_the_previous_picture_exactly(answers):
    assert image_bytes(answers['go back']['images'][0]) == image_bytes(
        answers['move it to the right']['images'][0]
    )


def test_now_at_night_repaints_the_place_and_keeps_the_ball(answers):
    """A place edit redraws most of the picture from the one gone back to, at a higher strength
    than a colour's: the night sky, and the blue ball where it was, its pixels mostly where they
    were. (Not which thing the judge names: on a dark, grainy background the ball's outline blurs,
    and the silhouette classifier is the judge's weakest part; weights/README.md.)"""
    back, night = judged(answers['go back']), judged(answers['now at night'])
    assert answers['now at night']['tags']['edit']['summary'] == 'changed: place none -> night sky'
    assert (night.place, night.colour) == ('night sky', 'blue'), night
    assert abs(night.centroid[0] - back.centroid[0]) < KEPT_CENTROID, (back, night)
    overlap = back.foreground_mask & night.foreground_mask
    union = back.foreground_mask | night.foreground_mask
    assert overlap.sum() / union.sum() > KEPT_OVERLAP, (back, night)
