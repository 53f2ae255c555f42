"""A tiny stand-in tokenizer for the task-data tests (test_tag_data, test_qa_data,
test_choice_data): the interface those modules use, and nothing else.

    encode(text, allowed_special)               -> ids
    encode_with_offsets(text, allowed_special)  -> (ids, offsets), offsets (start, end)
                                                   character spans in text, end exclusive
    token_to_id("[CLS]")                        -> id of a special token

Words split into pieces of at most `piece` characters (so a word has several sub-tokens)
and punctuation marks are tokens of their own. With space_in_offsets a token's span takes
in the white space before it, as a byte-level BPE token "Ġword" does; without, it starts at
the word, as WordPiece's offsets do. Ids are handed out in order of first sight, after the
four special tokens.
"""
import re

from minibert.tokenizer import SPECIAL_TOKENS

_TOKEN = re.compile(r"\w+|[^\w\s]")


class FakeTokenizer:
    def __init__(self, piece=3, space_in_offsets=False):
        self.piece = piece
        self.space_in_offsets = space_in_offsets
        self.vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}

    def token_to_id(self, token):
        return self.vocab[token]

    def _id(self, s):
        return self.vocab.setdefault(s, len(self.vocab))

    def encode_with_offsets(self, text, allowed_special="all"):
        ids, offsets, prev_end = [], [], 0
        for m in _TOKEN.finditer(text):
            word, start = m.group(), m.start()
            for k in range(0, len(word), self.piece):
                a, b = start + k, start + min(k + self.piece, len(word))
                s = prev_end if (self.space_in_offsets and k == 0) else a
                ids.append(self._id(word[k:k + self.piece] if k == 0 else "##" + word[k:k + self.piece]))
                offsets.append((s, b))
            prev_end = m.end()
        return ids, offsets

    def encode(self, text, allowed_special="all"):
        return self.encode_with_offsets(text, allowed_special)[0]
