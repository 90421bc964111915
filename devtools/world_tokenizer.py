"""A CLIP BPE tokenizer whose vocabulary is the world's words (speech2image/world.py).

CLIP's own 49,408-token vocabulary is on no registry reachable here, and a model that knows a few
hundred words needs no more. The vocabulary is CLIP's byte alphabet (each byte alone and as a
word end, ``x</w>``), the special tokens, and BPE merges chosen so that every word of the world is
one token: an unknown word falls apart into byte tokens, which the model learns to ignore.
"""

import json
from pathlib import Path
from typing import Dict, List, Tuple

from speech2image.world import (
    COLOURS,
    COUNTS,
    FILLERS,
    OPENINGS,
    PLACES,
    PLURALS,
    POSITIONS,
    SIZES,
    THINGS,
)

SPECIAL_TOKENS = ('<|startoftext|>', '<|endoftext|>')
MAX_LENGTH = 77  # CLIP's context
# Words people put around a prompt, beside the world's own.
COMMON_WORDS = 'of me the a an and with in on at to it is this my please jarvis picture paint draw'


def world_words() -> List[str]:
    """Every word the world's captions use, once, in a stable order."""
    phrases = list(COLOURS) + list(OPENINGS) + list(FILLERS) + COMMON_WORDS.split()
    for words in THINGS.values():
        phrases += list(words) + [PLURALS.get(w, w + 's') for w in words]
    for table in (PLACES, POSITIONS, SIZES, COUNTS):
        for key, words in table.items():
            phrases += list(words) + ([key] if isinstance(key, str) else [])
    words = []
    for phrase in phrases:
        for word in phrase.replace(',', ' ').split():
            if word not in words:
                words.append(word)
    return words


def _bpe(word: str, ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """CLIP's BPE of one word: merge the lowest-ranked adjacent pair until none is ranked."""
    parts = list(word[:-1]) + [word[-1] + '</w>']
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        ranked = [(rank, i) for rank, i in pairs if rank is not None]
        if not ranked:
            break
        _, i = min(ranked)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def world_merges(words: List[str]) -> List[Tuple[str, str]]:
    """Merges that make each word one token: a word still in pieces gets a merge of its first
    two pieces, ranked last, until it is whole."""
    merges: List[Tuple[str, str]] = []
    ranks: Dict[Tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
    return merges


def build_world_tokenizer(directory: Path):
    """Write ``vocab.json`` and ``merges.txt`` to ``directory`` and load them as a CLIPTokenizer."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    merges = world_merges(world_words())
    vocab = characters + [c + '</w>' for c in characters]
    vocab += [a + b for a, b in merges] + list(SPECIAL_TOKENS)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / 'merges.txt').write_text(
        '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges)
    )
    # from_pretrained: constructing CLIPTokenizer from file arguments silently gives a 2-token
    # vocabulary in transformers 5.
    return CLIPTokenizer.from_pretrained(directory, model_max_length=MAX_LENGTH)
