"""Byte-level BPE as its definition says it: start here.

Byte pair encoding (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
Subword Units"; byte-level as in Radford et al. 2019, GPT-2) in the plainest code that is
still exactly right. It is slow (training recounts every pair after every merge, encoding
rescans every pair after every merge) and that is the point: the fast versions, the encoder
of `BPETokenizer` in tokenizer.py and the incremental trainer in bpe_train.py, must give the
same merges and the same tokens, and tests/test_tokenizer.py checks that they do.

Text becomes UTF-8 bytes, so the alphabet is the 256 byte values and nothing is ever unknown.
  1. special tokens ("[MASK]", "<|endoftext|>") are cut out of the text first, longest first,
     and never take part in merges;
  2. each remaining part is split into pre-tokens with a regex (GPT-2's by default), so merges
     never cross a word/space/punctuation boundary;
  3. training: count adjacent pairs of tokens inside pre-tokens (weighted by how often the
     pre-token occurs), merge the most frequent pair into a new token, repeat;
  4. encoding: in each pre-token, merge the adjacent pair whose merge was learned earliest
     (lowest rank), leftmost first, until no adjacent pair is a learned merge.

Token strings in files use GPT-2's printable stand-in for each byte (space is "Ġ", newline
"Ċ"): `bytes_to_token_str` / `token_str_to_bytes`.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Merge = tuple[bytes, bytes]


# ---------------------------------------------------------------------- bytes as printable strings

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes map to themselves,
    the other 68 (controls, space, ...) to chr(256), chr(257), ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(keep))
    return dict(sorted(table.items()))


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_token_str(b: bytes) -> str:
    """Printable form of a token's bytes, as in GPT-2's vocab.json (b" the" -> "Ġthe")."""
    return "".join(BYTE_TO_CHAR[x] for x in b)


def token_str_to_bytes(s: str) -> bytes:
    """Inverse of bytes_to_token_str; ValueError for a character outside GPT-2's byte map."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError as e:
        raise ValueError(f"token string {s!r} has character {e.args[0]!r}, which is not in the byte-level alphabet") from None


# ---------------------------------------------------------------------- rules both versions share

def special_regex(specials: Iterable[str]):
    """Alternation of the special tokens, longest first, so that at any position the longest
    special token that matches wins ("<|endoftext|>" over "<|end"); None when there are none."""
    specials = sorted(set(specials), key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("|".join(regex.escape(s) for s in specials))


_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def surrogate_error(text: str, where: str = "text") -> ValueError:
    """The error for a text with a lone surrogate ("\\ud800"): it has no UTF-8 encoding."""
    m = _SURROGATE.search(text)
    pos = m.start() if m else -1
    ch = f"U+{ord(m.group()):04X}" if m else "a surrogate"
    return ValueError(f"{where} has a lone surrogate {ch} at index {pos}: it has no UTF-8 encoding, so it cannot be "
                      f"tokenized (fix the text, e.g. text.encode('utf-8', 'replace').decode('utf-8'))")


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def pretokens(text: str, special_tokens: Iterable[str] = (), pattern: str = GPT2_PATTERN) -> list[str]:
    """Steps 1 and 2: the pre-tokens of the text outside its special tokens."""
    split = special_regex(special_tokens)
    parts = split.split(text) if split is not None else [text]
    return [piece for part in parts for piece in regex.findall(pattern, part)]


# ---------------------------------------------------------------------- training and encoding

def train(texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (), min_frequency: int = 1,
          pattern: str = GPT2_PATTERN) -> list[Merge]:
    """The merges, in the order learned, until the vocabulary (specials + 256 bytes + merge
    results) has vocab_size tokens or the best pair occurs fewer than min_frequency times.

    Pairs are counted inside pre-tokens only, overlapping occurrences included ("aaa" has two
    "aa"). Equal counts go to the lexicographically greatest (bytes_a, bytes_b), so the result
    does not depend on the order of the texts. Two merges that make the same bytes (("ab", "c")
    and ("a", "bc")) make one token between them.
    """
    special_tokens = list(special_tokens)
    words: Counter = Counter()   # pre-token as a tuple of tokens (bytes) -> occurrences
    for text in texts:
        for piece in pretokens(text, special_tokens, pattern):
            words[tuple(bytes([x]) for x in piece.encode("utf-8"))] += 1

    merges: list[Merge] = []
    tokens = {bytes([b]) for b in range(256)}
    while len(tokens) + len(special_tokens) < vocab_size:
        pairs: Counter = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        tokens.add(best[0] + best[1])
        merged: Counter = Counter()   # summed: two words can become one ((ab, c) and (a, bc) -> abc)
        for word, freq in words.items():
            merged[_merge_pair(word, best)] += freq
        words = merged
    return merges


def _merge_pair(word: tuple[bytes, ...], pair: Merge) -> tuple[bytes, ...]:
    """Every occurrence of `pair` in `word` merged, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def encode(text: str, merges: list[Merge], pattern: str = GPT2_PATTERN) -> list[bytes]:
    """The tokens (as bytes) of `text` with no special tokens recognised: in each pre-token,
    merge the lowest-rank adjacent pair, leftmost first, until none is a learned merge."""
    rank = {pair: r for r, pair in enumerate(merges)}
    tokens: list[bytes] = []
    for piece in pretokens(text, (), pattern):
        parts = [bytes([x]) for x in piece.encode("utf-8")]
        while len(parts) > 1:
            r, i = min((rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if r == len(rank):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        tokens += parts
    return tokens
