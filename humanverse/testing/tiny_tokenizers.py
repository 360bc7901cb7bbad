"""Small byte-level BPE vocabularies for the tiny model zoo, learnt offline from a built-in corpus.

The real checkpoints ship CLIP (SD-2, SDXL) and GPT-2/OPT (BLIP-2) byte-level BPE tokenizers with
~50k tokens. Tiny stand-ins cannot download those, so this module learns a few hundred merges from
a short English text and returns a vocabulary in the same layout as the real one:

* CLIP style: the 256 byte symbols, the same 256 with the end-of-word suffix ``</w>``, the merged
  symbols in merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` (so id 0 is ``"!"``, as in
  the real vocabulary, which SD-2's OpenCLIP tokenizer uses as its pad token).
* GPT-2/OPT style: ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` at ids 0..3 (OPT's layout), the 256 byte
  symbols, then the merged symbols; a space is part of the following word (``Ġ``).

Only the standard library is used; the learner is deterministic (ties broken lexicographically).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["BpeVocab", "bytes_to_unicode", "clip_bpe", "gpt2_bpe"]

# A short built-in corpus in the domain of the data (captions of people), so that common caption
# words become single tokens and tokenised prompts stay short.
_CORPUS = """
a photo of a man standing in front of a building. a woman sitting on a bench in the park.
a young girl smiling at the camera while holding a red umbrella. two people walking down the
street at night. a group of friends playing football on the beach. an old man with a beard
wearing a hat and a coat. a person riding a bicycle on a road next to the river. a child
running across the grass with a dog. a portrait of a woman with long hair and a white dress.
a man in a suit talking on the phone. a boy jumping into the water from a wooden pier.
the athlete is running on the track during the race. a couple dancing in the kitchen.
a dancer posing on the stage under bright lights. a skier going down the snowy mountain.
a close up photo of a smiling face. a full body shot of a person doing yoga on a mat.
the people are standing together and looking at the sea. she is holding a cup of coffee.
he is sitting at a table with a laptop and a book. a tennis player hitting the ball.
a family having dinner together at home. a woman walking her dog in the city.
a man and a woman holding hands on the street. a student reading in the library.
a chef cooking in a restaurant kitchen. a surfer riding a wave in the ocean.
a baseball player swinging a bat. a person wearing a blue shirt and black pants.
high quality, detailed, realistic photograph of a human, standing, sitting, walking, running.
""".strip()

_CLIP_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)
_GPT2_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+", re.UNICODE)

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
OPT_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class BpeVocab:
    """A byte-level BPE vocabulary: token -> id, and the merges in priority order."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]

    def merges_text(self) -> str:
        """The ``merges.txt`` file contents (with the usual ``#version`` header)."""
        return "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character map used by GPT-2 and CLIP BPE.

    Printable latin-1 bytes map to themselves; the remaining 68 bytes map to code points 256+ in
    byte order, so every byte has a visible, whitespace-free symbol. The dict's order (printable
    bytes first, then the others) is the order of the first 256 entries of the real vocabularies,
    which puts ``"!"`` at id 0.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _symbols(word: str, end_of_word: str) -> tuple[str, ...]:
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    if end_of_word:
        chars[-1] = chars[-1] + end_of_word
    return tuple(chars)


def _learn_merges(words: Counter[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    merges: list[tuple[str, str]] = []
    current = dict(words)
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in current.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        updated: dict[tuple[str, ...], int] = {}
        for symbols, count in current.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            key = tuple(out)
            updated[key] = updated.get(key, 0) + count
        current = updated
    return merges


def _index(tokens: list[str]) -> dict[str, int]:
    """Contiguous ids in first-seen order (two merges can spell the same token)."""
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


@lru_cache(maxsize=4)
def clip_bpe(num_merges: int = 300) -> BpeVocab:
    """A CLIP-layout vocabulary (lower-cased words, ``</w>`` end-of-word suffix)."""
    words = Counter(_symbols(w, "</w>") for w in _CLIP_WORDS.findall(_CORPUS.lower()))
    merges = _learn_merges(words, num_merges)
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + [a + b for a, b in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    return BpeVocab(vocab=_index(tokens), merges=merges)


@lru_cache(maxsize=4)
def gpt2_bpe(num_merges: int = 300) -> BpeVocab:
    """A GPT-2/OPT-layout vocabulary (case kept, leading space folded into the word)."""
    words = Counter(_symbols(w, "") for w in _GPT2_WORDS.findall(_CORPUS.replace("\n", " ")))
    merges = _learn_merges(words, num_merges)
    tokens = list(OPT_SPECIALS) + list(bytes_to_unicode().values()) + [a + b for a, b in merges]
    return BpeVocab(vocab=_index(tokens), merges=merges)
