"""Helpers shared by test_corpus, test_token_cache and test_instances: synthetic documents,
a byte-level BPE tokenizer trained on them, and binomial bounds for statistical checks.

Statistical checks use 5-sigma binomial bounds, so a correct implementation fails them with
probability below 1e-6 and a biased one fails them reliably.
"""
import random

import numpy as np

from minibert.corpus import Document
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

_WORDS = ("alpha beta gamma delta epsilon zeta theta iota kappa lambda sigma omega river stone "
          "cloud field light shadow north south east west quick slow bright dark small large "
          "module class function value return list dict string number parser buffer stream").split()


def synthetic_documents(n_docs=120, seed=0, max_sentences=12):
    """Documents of capitalised pseudo-English sentences, 1..max_sentences each."""
    r = random.Random(seed)
    docs = []
    for d in range(n_docs):
        sents = []
        for _ in range(r.randint(1, max_sentences)):
            words = [r.choice(_WORDS) for _ in range(r.randint(3, 14))]
            sents.append(" ".join(words).capitalize() + r.choice(".!?"))
        docs.append(Document(tuple(sents), f"synthetic.d{d % 7}", f"synthetic#{d}"))
    return docs


def train_tokenizer(docs, vocab_size):
    """A BPETokenizer with SPECIAL_TOKENS, trained on the sentences of docs."""
    return BPETokenizer.train_from_iterator([s for d in docs for s in d.sentences], vocab_size,
                                            special_tokens=SPECIAL_TOKENS, progress=False)


def special_ids(tok):
    return {tok.token_to_id(s) for s in SPECIAL_TOKENS}


def five_sigma(n, p):
    """Bounds on a Binomial(n, p) count that a correct draw leaves with probability < 1e-6."""
    s = 5 * np.sqrt(n * p * (1 - p))
    return n * p - s, n * p + s

