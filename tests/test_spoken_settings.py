"""The spoken-command parser: a table of phrasings, the ones it must leave alone included."""

import pytest

from speech2image.spoken_settings import (
    SpokenCommand,
    generation_parameters,
    parse_command,
    scaled_sides,
)

# (what Whisper wrote, the prompt sent to Stable Diffusion, the settings taken from speech)
PHRASINGS = [
    # The article's example and the issue's.
    (
        'Jarvis, paint me Captain America drinking a boba tea.',
        'Captain America drinking a boba tea',
        {},
    ),
    (
        'Draw four pictures of a red fox in the snow, seed 42.',
        'a red fox in the snow',
        {'num_images': 4, 'seed': 42},
    ),
    (
        'A lighthouse at night, no people, in landscape.',
        'A lighthouse at night',
        {'negative_prompt': 'people', 'orientation': 'landscape'},
    ),
    # An address and a command phrase.
    ('Please draw a cat on a sofa.', 'a cat on a sofa', {}),
    ('Can you make an image of a castle on a hill?', 'a castle on a hill', {}),
    ('Could you please paint a sunset over the ocean', 'a sunset over the ocean', {}),
    ('Hey Jarvis, draw me a dragon.', 'a dragon', {}),
    ('OK computer, generate a picture of a forest.', 'a forest', {}),
    ("I'd like a picture of a mountain lake.", 'a mountain lake', {}),
    ('I want you to draw a robot reading a book.', 'a robot reading a book', {}),
    ('Show me a city skyline at dusk.', 'a city skyline at dusk', {}),
    ('Create an image of a bowl of fruit.', 'a bowl of fruit', {}),
    ('Generate a watercolor of a harbor.', 'a watercolor of a harbor', {}),
    ('Paint me a painting of a horse.', 'a painting of a horse', {}),
    ('Make me a photo of a rainy street.', 'a photo of a rainy street', {}),
    ('Sketch an owl in a tree.', 'an owl in a tree', {}),
    ("Let's see a spaceship landing on Mars.", 'a spaceship landing on Mars', {}),
    # How many images.
    ('Draw 3 images of a blue bird.', 'a blue bird', {'num_images': 3}),
    ('Make two pictures of a snowman.', 'a snowman', {'num_images': 2}),
    ('Give me a couple of pictures of a beach.', 'a beach', {'num_images': 2}),
    ('A bowl of ramen, four images.', 'A bowl of ramen', {'num_images': 4}),
    ('A red car, 2 versions.', 'A red car', {'num_images': 2}),
    ('A tiger in the jungle and three variations', 'A tiger in the jungle', {'num_images': 3}),
    # Seeds.
    ('A cat wearing a hat, seed 7', 'A cat wearing a hat', {'seed': 7}),
    ('A cat wearing a hat with seed 1234.', 'A cat wearing a hat', {'seed': 1234}),
    ('A cat wearing a hat, use seed number 99.', 'A cat wearing a hat', {'seed': 99}),
    ('A cat wearing a hat using the seed 5', 'A cat wearing a hat', {'seed': 5}),
    ('A cat wearing a hat, seed is 0.', 'A cat wearing a hat', {'seed': 0}),
    # Whisper's own punctuation and number words: "... grass.  Seed seven."
    ('A tree on the grass.  Seed seven.', 'A tree on the grass', {'seed': 7}),
    # Orientation and size.
    ('A tall tower in portrait.', 'A tall tower', {'orientation': 'portrait'}),
    ('A mountain range in landscape format', 'A mountain range', {'orientation': 'landscape'}),
    ('A desert road in widescreen', 'A desert road', {'orientation': 'wide'}),
    ('A desert road, wide format.', 'A desert road', {'orientation': 'wide'}),
    (
        'An app icon of a rocket, square format.',
        'An app icon of a rocket',
        {'orientation': 'square'},
    ),
    ('A flower in a vase as a square image', 'A flower in a vase', {'orientation': 'square'}),
    ('A waterfall in portrait mode', 'A waterfall', {'orientation': 'portrait'}),
    ('A skyscraper, vertical format', 'A skyscraper', {'orientation': 'portrait'}),
    (
        'A train crossing a bridge, horizontal orientation.',
        'A train crossing a bridge',
        {'orientation': 'landscape'},
    ),
    # Steps and quality.
    ('Quickly draw a dog.', 'a dog', {'quality': 'quick'}),
    ('A dog on a skateboard, make it quick.', 'A dog on a skateboard', {'quality': 'quick'}),
    ('A dog on a skateboard, rough draft.', 'A dog on a skateboard', {'quality': 'quick'}),
    ('A castle, highly detailed.', 'A castle, highly detailed', {'quality': 'detailed'}),
    ('A castle in high quality', 'A castle, high quality', {'quality': 'detailed'}),
    ('A castle, take your time.', 'A castle', {'quality': 'detailed'}),
    ('A castle, detailed.', 'A castle', {'quality': 'detailed'}),
    ('A castle with 30 steps', 'A castle', {'num_inference_steps': 30}),
    ('A castle, fifty inference steps.', 'A castle', {'num_inference_steps': 50}),
    # Negative prompts.
    ('A street market, without text.', 'A street market', {'negative_prompt': 'text'}),
    ('A street market with no cars', 'A street market', {'negative_prompt': 'cars'}),
    (
        'A street market, no people and no cars.',
        'A street market',
        {'negative_prompt': 'people, cars'},
    ),
    ('A beach at sunrise but no boats', 'A beach at sunrise', {'negative_prompt': 'boats'}),
    ('A room without any furniture', 'A room', {'negative_prompt': 'furniture'}),
    # Everything at once.
    (
        'Jarvis, draw me four pictures of a red fox in the snow, seed 42, no trees, in portrait.',
        'a red fox in the snow',
        {'num_images': 4, 'seed': 42, 'negative_prompt': 'trees', 'orientation': 'portrait'},
    ),
    (
        'Please make 2 images of a koi pond in landscape with seed 8, highly detailed, without text',
        'a koi pond, highly detailed',
        {
            'num_images': 2,
            'orientation': 'landscape',
            'seed': 8,
            'quality': 'detailed',
            'negative_prompt': 'text',
        },
    ),
]

# Phrasings whose words look like settings but are the subject: they must come back unchanged.
UNCHANGED = [
    'Four horsemen of the apocalypse.',
    'The four seasons in one tree',
    'Two cats sleeping on a windowsill',
    'A portrait of a cat.',
    'A portrait of a woman in a red dress',
    'A landscape with mountains and a river.',
    'A landscape painting of Provence',
    'A town square at noon',
    'A square in Paris with pigeons',
    'A wide river at sunset',
    'Sunflower seeds on a plate',
    'A seed of doubt growing into a tree',
    'Apple seedlings in the rain.',
    'The Seedorf stadium at night',
    'A desert road, widescreen.',
    'A quick sketch of a dog.',
    'The quick brown fox jumps over the lazy dog.',
    'A fast car on a race track',
    'A detailed map of Middle Earth',
    "No Man's Sky spaceship",
    'A no parking sign in the snow',
    'A lonely road with no one around',
    'A knight with nobody around him',
    'Nothing but blue sky',
    'Seven samurai on a hill',
    'A photo of the number 42 on a door',
    'Mickey Mouse drawing a picture',
    'A painter who paints pictures of the sea',
    'A steps to heaven staircase',
    'Three steps to the temple',
    'Picture frames on a wall',
    'A cat',
    '',
]


@pytest.mark.parametrize('said, prompt, settings', PHRASINGS)
def test_phrasing_gives_its_prompt_and_settings(said, prompt, settings):
    assert parse_command(said) == SpokenCommand(prompt, settings)


@pytest.mark.parametrize('said', UNCHANGED)
def test_subject_words_are_left_alone(said):
    assert parse_command(said) == SpokenCommand(said, {})


def test_the_table_is_large_enough():
    assert len(PHRASINGS) + len(UNCHANGED) >= 60


def test_nothing_left_to_draw_keeps_the_whole_text():
    assert parse_command('Draw four pictures.') == SpokenCommand('Draw four pictures.', {})


def test_a_seed_too_large_for_the_tags_is_not_taken():
    said = 'A cat, seed 99999999999'
    assert parse_command(said) == SpokenCommand(said, {})


DEFAULTS = {'num_inference_steps': 20, 'width': 512, 'height': 512}
CAPS = dict(max_images=4, max_inference_steps=100, max_side=1024)


@pytest.mark.parametrize(
    'orientation, sides',
    [
        ('portrait', (512, 768)),
        ('landscape', (768, 512)),
        ('wide', (904, 512)),
        ('square', (512, 512)),
    ],
)
def test_orientation_keeps_the_short_side_and_follows_the_ratio(orientation, sides):
    assert scaled_sides(orientation, 512, 512, max_side=1024) == sides


def test_orientation_fits_under_the_side_cap():
    assert scaled_sides('wide', 768, 768, max_side=1024) == (1024, 576)


def test_spoken_settings_become_parameters_under_the_caps():
    spoken = {
        'num_images': 9,
        'seed': 42,
        'orientation': 'landscape',
        'quality': 'detailed',
        'negative_prompt': 'people',
    }
    assert generation_parameters(spoken, {}, DEFAULTS, **CAPS) == {
        'num_images': 4,
        'seed': 42,
        'num_inference_steps': 40,
        'width': 768,
        'height': 512,
        'negative_prompt': 'people',
    }


def test_quick_halves_the_steps_and_explicit_steps_beat_a_quality():
    assert generation_parameters({'quality': 'quick'}, {}, DEFAULTS, **CAPS) == {
        'num_inference_steps': 10
    }
    said = {'quality': 'quick', 'num_inference_steps': 500}
    assert generation_parameters(said, {}, DEFAULTS, **CAPS) == {'num_inference_steps': 100}


def test_explicit_request_parameters_always_win():
    spoken = {'num_images': 3, 'seed': 42, 'orientation': 'portrait'}
    explicit = {'num_images': 1, 'seed': 7, 'width': 640}
    assert generation_parameters(spoken, explicit, DEFAULTS, **CAPS) == {
        'num_images': 1,
        'seed': 7,
        'width': 640,
        'height': 768,
    }


@pytest.mark.parametrize(
    'spoken, message',
    [
        ('four', "tag 'spoken_settings' must be an object"),
        ({'orientation': 'diagonal'}, 'spoken orientation must be one of portrait, landscape'),
        ({'quality': 'best'}, 'spoken quality must be one of quick, detailed'),
        ({'quality': ['quick']}, 'spoken quality must be one of quick, detailed'),
        ({'orientation': {'portrait': 1}}, 'spoken orientation must be one of'),
    ],
)
def test_bad_spoken_settings_are_refused_by_name(spoken, message):
    with pytest.raises(ValueError, match=message):
        generation_parameters(spoken, {}, DEFAULTS, **CAPS)


def test_the_flow_flag_or_its_environment_variable_turns_the_parser_off(monkeypatch):
    import flow

    def whisper_arguments(argv):
        return flow.flow_spec(flow.parse_args(argv))['executors'][0]['uses_with']

    assert 'spoken_settings' not in whisper_arguments([])  # the Executor's default (on) applies
    assert whisper_arguments(['--spoken-settings', 'off'])['spoken_settings'] is False
    monkeypatch.setenv('S2I_SPOKEN_SETTINGS', 'off')
    assert whisper_arguments([])['spoken_settings'] is False
    assert whisper_arguments(['--spoken-settings', 'on'])['spoken_settings'] is True
