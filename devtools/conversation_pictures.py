"""The conversation docs/conversation.md shows: its turns through the diffusion Executor (the
same code the Flow serves, in this process), each turn's picture saved, and the judge's verdict.

    python -m devtools.conversation_pictures --out docs/conversation \\
        "a red ball on the left" "make it blue" "move it to the right" "now at night" "go back"

Prints one line per turn: what was said, the prompt drawn, what changed, the picture's file and
what devtools/world_judge.py sees in it (colour, position, centroid).
"""

import argparse
from pathlib import Path

from devtools.offline_flow import WORLD_MODEL
from devtools.world_judge import judge
from speech2image.conversation import CONVERSATION_TAG, EDIT_TAG
from speech2image.schema import SpeechDoc

DIFFUSION_CONFIG = Path(__file__).resolve().parent.parent / 'executors/stablediffusion/config.yml'


def main() -> None:
    import asyncio

    from docarray import DocList
    from jina import Executor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('turns', nargs='+', help='what is said, one turn each')
    parser.add_argument('--out', type=Path, required=True, help='folder for the PNGs')
    parser.add_argument('--model', default=str(WORLD_MODEL))
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--seed', type=int, default=3)
    args = parser.parse_args()
    executor = Executor.load_config(
        str(DIFFUSION_CONFIG), uses_with={'model': args.model, 'warmup': False}
    )
    parameters = {'num_inference_steps': args.steps, 'seed': args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    conversation = []
    for number, said in enumerate(args.turns, 1):
        docs = DocList[SpeechDoc]([SpeechDoc(text=said, tags={CONVERSATION_TAG: conversation})])
        [doc] = asyncio.run(executor.generate(docs=docs, parameters=parameters))
        conversation = doc.tags[CONVERSATION_TAG]
        path = args.out / f'turn{number}.png'
        path.write_bytes(bytes(doc.matches[0].bytes_))
        seen = judge(bytes(doc.matches[0].bytes_))
        centroid = 'none' if seen.centroid is None else f'x {seen.centroid[0]:.2f}'
        print(
            f'{number}. "{said}" -> "{doc.text}" ({doc.tags[EDIT_TAG]["summary"]}) {path}: '
            f'judged {seen.colour} {seen.thing} {seen.position} {centroid}, {seen.place}',
            flush=True,
        )


if __name__ == '__main__':
    main()
