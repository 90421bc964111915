#!/usr/bin/env bash
# Regenerates the bundled spoken prompts (committed, so nothing here runs in tests or the demo).
# Needs Debian's espeak-ng and sox. Their known texts are in clips.json.
set -euo pipefail
cd "$(dirname "$0")"
speak() {  # speak VOICE SPEED OUT TEXT
  espeak-ng -v "$1" -s "$2" -a 80 -w /tmp/clip.wav "$4"
  sox /tmp/clip.wav -r 16000 -c 1 -b 16 "$3"
}
speak en 140 apple.wav "a painting of a red apple on a wooden table"
speak en-us 130 lighthouse.wav "an oil painting of a lighthouse by the sea"
speak en-us 130 fox_command.wav "draw two pictures of a red fox in the snow, with seed 42"
# en-gb-x-rp: Whisper tiny.en heard en-us at 130 as "and we'll start on the left."
speak en-gb-x-rp 130 blue_star.wav "a blue star on the left"
speak en-gb 130 two_trees.wav "draw two pictures of a green tree on the grass, seed 7"
# Spoken edits of a picture (docs/conversation.md): voices Whisper tiny.en hears word for word.
speak en-gb 130 make_it_blue.wav "make it blue"
speak en 130 move_it_right.wav "move it to the right"
