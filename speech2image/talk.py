"""``speech2image --talk``: a conversation about one picture, from the command line.

Each turn is a clip or typed words: first the audio files and ``--text`` prompts given on the
command line, then one line of stdin at a time (a path to an audio file, or words). Each is sent
with the conversation the last answer carried (speech2image/conversation.py), so "make it blue",
"move it to the left", "another one" and "go back" refine the last picture and anything else
starts a new one. A turn the service refuses is printed and the conversation goes on from the
last picture; the exit status is 1 if any turn was refused.
"""

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Iterator, List

from speech2image.conversation import CONVERSATION_TAG, EDIT_TAG
from speech2image.schema import SpeechDoc

PROMPT = 'say> '


def typed_turns(lines) -> Iterator[SpeechDoc]:
    """A document per line of ``lines``: an existing file is a clip, other words are typed;
    blank lines are skipped."""
    for line in lines:
        said = line.strip()
        if not said:
            continue
        path = Path(said).expanduser()
        if path.is_file():
            yield SpeechDoc(bytes_=path.read_bytes(), tags={'source': path.name})
        else:
            yield SpeechDoc(text=said, tags={'source': 'text'})


def stdin_lines() -> Iterator[str]:
    """stdin's lines, with a prompt when a person types them."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print(PROMPT, end='', flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def talk(args, first: List[SpeechDoc], console) -> int:
    """Run the conversation: each turn streamed (or, with ``--no-stream``, one request), its
    prompt, what changed and its images printed. Returns the exit status."""
    from speech2image.client import ServiceError, post_documents, stream_document

    conversation: list = []
    refused = False
    for doc in itertools.chain(first, typed_turns(stdin_lines())):
        doc.tags[CONVERSATION_TAG] = conversation
        try:
            if args.stream:
                answered = asyncio.run(stream_document(args, doc))
            else:
                [answered] = post_documents(args, [doc], console)
        except ServiceError as error:
            console.print(f'[red]refused:[/red] {error}')
            refused = True
            continue
        print(f'  drew "{answered.text}" ({answered.tags[EDIT_TAG]["summary"]})', flush=True)
        conversation = answered.tags[CONVERSATION_TAG]
    return 1 if refused else 0
