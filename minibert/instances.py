"""Pretraining instances: NSP pairs, truncation, MLM masking, epochs and batches.

The last step of the pretraining pipeline (corpus -> token_cache -> instances), following
Google's original ``create_pretraining_data.py`` (Devlin et al. 2019, "BERT: Pre-training of
Deep Bidirectional Transformers", section 3.1 and appendix A.1):

    TokenizedCorpus --PretrainingData.epoch(e)--> EpochInstances: [CLS] A [SEP] B [SEP], masked
                    --PretrainingData.batches--> (next_position, batch dict of host int64 arrays)

Dimension letters: N instances in an epoch, B batch, T sequence length (max_seq_len for an
epoch, the longest row for a batch), P max predictions per sequence, S sentences, D documents.

Pretraining instances (PretrainingData.epoch) for each document, exactly as the original:
a target length of max_seq_len - 3 tokens, or with probability short_seq_prob a uniform one in
[2, max_seq_len - 3] (drawn once per document, as the original does); whole sentences are
packed into a chunk until it reaches the target; A is the chunk's first a_end sentences
(a_end uniform in [1, len(chunk) - 1]); B is the rest (label 0), or with probability 1/2, and
always for a one-sentence chunk, sentences from a random other document starting at a random
sentence (label 1), in which case the unused rest of the chunk is put back for the next chunk.
truncate_seq_pair then removes tokens from the longer segment (B on a tie), each from its front
or back with probability 1/2. One optional change, on by default (PretrainingData's
balance_nsp): a chunk that could go either way takes the 1/2 coin only while random labels are
not ahead in the epoch, because on short documents the forced one-sentence randoms would
otherwise make ~72% of the stdlib corpus's labels "random"; balance_nsp=False is the original.
Because a sentence range of one document is a contiguous range of the flat token array
(token_cache.py), every segment, before and after truncation, is a (start, length) span.

Masking (mask_tokens): k = min(P, max(1, round(masked_lm_prob * n))) positions (masked_lm_prob
0.15 by default) chosen uniformly without replacement among the n non-special tokens of a
sequence (the original counts [CLS]/[SEP] in n; here they are never candidates, so they do not
count); each chosen token becomes [MASK] with probability 0.8, a uniformly random non-special
token 0.1, unchanged 0.1. labels hold the original id there and -100 everywhere else.

Whole-word masking (whole_word_mask=True; Google's later --do_whole_word_mask): a word is a
token that starts one (word_starts: no "##" under WordPiece, a leading space under byte-level
BPE; every sentence and segment start) and the tokens after it that do not. Words are visited
in random order and taken whole while the chosen tokens stay within the same k (a word that
would pass k is skipped); the 80/10/10 choice is drawn once per word, so a word is all [MASK],
all random or all kept (the original draws it per token). The model can then no longer fill
"emb ##ed ##ding" from its own unmasked pieces.

Differences from the original, all deliberate: k counts non-special tokens only; a random
replacement is never a special token; truncate_seq_pair's per-token front/back coins are drawn
as one binomial per segment (same distribution, vectorised); instead of dupe_factor static
copies, every epoch redraws pairs and masks; balance_nsp (above).

Everything random in epoch e is a function of (seed, e): masks are redrawn every epoch (dynamic
masking, as in RoBERTa) and pairs are re-drawn too. A data position is the pair
(epoch, index of the next batch), a JSON-friendly value a checkpoint stores and batches() resumes.
"""
import random
from array import array

import numpy as np

from minibert.model import IGNORE_INDEX
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.wordpiece import WordPieceTokenizer

WHITESPACE_BYTES = b" \t\n\r\x0b\x0c"  # a byte-level BPE token starting with one of these starts a word


def word_starts(tokenizer):
    """(V,) bool: True where a token id starts a word, for whole-word masking.

    WordPiece: every token but a continuation piece ("##ing"). Byte-level BPE (GPT-2's
    pre-tokenizer keeps a word's leading space on its first piece): a token whose bytes start
    with a whitespace byte (" the", "\\n"). Special tokens are words of their own. A word's
    first token that has no leading space (the first word of a sentence under BPE) is found
    from the context instead: PretrainingData also marks every sentence start, and
    mask_tokens every segment start.
    """
    V = tokenizer.vocab_size
    if isinstance(tokenizer, WordPieceTokenizer):
        starts = np.array([not t.startswith("##") for t in tokenizer.vocab], bool)  # (V,)
    elif isinstance(tokenizer, BPETokenizer):
        vocab = tokenizer.vocab
        starts = np.array([vocab[i][:1] != b"" and vocab[i][:1] in WHITESPACE_BYTES for i in range(V)], bool)  # (V,)
    else:
        raise TypeError(f"word_starts knows WordPieceTokenizer and BPETokenizer, not {type(tokenizer).__name__}")
    starts[list(tokenizer.special_tokens.values())] = True
    return starts


def corpus_word_starts(corpus, tokenizer):
    """(num_tokens,) bool: word_starts of each token of a TokenizedCorpus, and True at every
    sentence's first token (a sentence is encoded on its own, so under BPE its first word has
    no leading space)."""
    starts = word_starts(tokenizer)[np.asarray(corpus.tokens)]  # (num_tokens,)
    starts[np.asarray(corpus.sentence_offsets)[:-1]] = True
    return starts


def mask_tokens(ids, special_mask, rng, *, mask_id, replace_ids, masked_lm_prob=0.15, max_predictions=20,
                word_start=None):
    """Masked-LM corruption of each row of ids (a pure function of its inputs and rng's state).

    ids (N, T) or (T,) integer; special_mask same shape, True where a position may never be
    predicted ([CLS], [SEP], padding). In each row k = min(max_predictions, max(1,
    round(masked_lm_prob * n))) of its n candidates are chosen uniformly (k = 0 when n = 0);
    each chosen one becomes mask_id (80%), a uniform draw from replace_ids (10%) or stays (10%).
    Returns (masked_ids, labels) with ids' shape; labels (int64) is the original id where a
    position was chosen and -100 elsewhere.

    word_start (ids' shape, bool) turns on whole-word masking (whole_word_mask_tokens); None
    is token-level masking, exactly as it has always been drawn.
    """
    ids = np.asarray(ids)
    one_row = ids.ndim == 1
    ids2 = ids.reshape(1, -1) if one_row else ids  # (N, T)
    cand = ~np.asarray(special_mask, bool).reshape(ids2.shape)  # (N, T)
    N, T = ids2.shape
    n = cand.sum(axis=1)  # (N,)
    # np.rint rounds half to even, as Python's round() in the original does
    k = np.minimum(max_predictions, np.maximum(1, np.rint(n * masked_lm_prob).astype(np.int64)))  # (N,)
    k = np.where(n > 0, k, 0)
    if word_start is not None:
        ws = np.asarray(word_start, bool).reshape(ids2.shape)  # (N, T)
        masked, labels = whole_word_mask_tokens(ids2, cand, ws, k, rng, mask_id=mask_id, replace_ids=replace_ids)
        return (masked[0], labels[0]) if one_row else (masked, labels)
    P = min(max_predictions, T)
    masked, labels = ids2.copy(), np.full(ids2.shape, IGNORE_INDEX, np.int64)  # (N, T), (N, T)
    if P <= 0 or N == 0:
        return (masked[0], labels[0]) if one_row else (masked, labels)
    # the k smallest of iid uniform keys are a uniform k-subset; non-candidates sort last
    keys = rng.random((N, T))  # (N, T)
    keys[~cand] = np.inf
    top = np.argpartition(keys, P - 1, axis=1)[:, :P] if P < T else np.tile(np.arange(T), (N, 1))  # (N, P)
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), axis=1), 1)  # (N, P), by key
    rows, cols = np.nonzero(np.arange(P)[None, :] < k[:, None])  # chosen (row, rank) pairs
    pos = top[rows, cols]  # (M,) positions in the row
    labels[rows, pos] = ids2[rows, pos]
    u = rng.random(rows.size)  # (M,)
    to_mask, to_random = u < 0.8, (u >= 0.8) & (u < 0.9)
    masked[rows[to_mask], pos[to_mask]] = mask_id
    replace_ids = np.asarray(replace_ids)
    masked[rows[to_random], pos[to_random]] = replace_ids[rng.integers(0, replace_ids.size, int(to_random.sum()))]
    return (masked[0], labels[0]) if one_row else (masked, labels)


def word_ids(cand, word_start):
    """(word, first) for candidate positions: word (N, T) int64 numbers each whole word of the
    flattened rows 0, 1, 2, ... in order (-1 at non-candidates); first (N, T) bool marks a word's
    first token. A word is a candidate that starts a word (word_start), or that follows a
    non-candidate (a segment's first token after [CLS]/[SEP], or a cut), plus the candidates
    after it that do not start a word."""
    N, T = cand.shape
    prev = np.zeros((N, T), bool)  # (N, T) is the position before a candidate too
    prev[:, 1:] = cand[:, :-1]
    first = cand & (word_start | ~prev)  # (N, T)
    word = np.cumsum(first.ravel()).reshape(N, T) - 1  # (N, T) a token's word is the last start at or before it
    return np.where(cand, word, -1), first


def whole_word_mask_tokens(ids, cand, word_start, k, rng, *, mask_id, replace_ids):
    """Whole-word masking of ids (N, T): mask_tokens' work when it is given word_start.

    The words of a row (word_ids) are visited in a uniformly random order (an iid uniform key
    per word); a word is chosen while the row's chosen tokens stay within k (N,), and a word
    that would pass k is skipped, so later shorter ones may still fit: the rule of Google's
    create_pretraining_data.py with do_whole_word_mask. Every chosen word gets one 80/10/10
    draw: all its tokens become mask_id, or all become uniform draws from replace_ids, or all
    stay. Returns (masked_ids, labels), both (N, T).
    """
    N, T = ids.shape
    masked, labels = ids.copy(), np.full((N, T), IGNORE_INDEX, np.int64)  # (N, T), (N, T)
    word, first = word_ids(cand, word_start)  # (N, T), (N, T)
    nw = int(first.sum())
    if nw == 0:
        return masked, labels
    word_row = np.nonzero(first)[0]  # (nw,) rows in order, as word numbers run
    word_len = np.bincount(word[cand], minlength=nw)  # (nw,)
    keys = rng.random(nw)  # (nw,)
    order = np.lexsort((keys, word_row))  # (nw,) words by row, then by key within the row
    row_start = np.searchsorted(word_row, np.arange(N))  # (N,) first word number of each row
    rank = np.arange(nw) - row_start[word_row[order]]  # (nw,) a word's place in its row's order
    W = int(rank.max()) + 1
    lens = np.zeros((N, W), np.int64)  # (N, W) word lengths in visiting order, 0 past a row's words
    lens[word_row[order], rank] = word_len[order]
    taken = np.zeros((N, W), bool)  # (N, W)
    count = np.zeros(N, np.int64)  # (N,) chosen tokens so far
    for j in range(W):  # one visit per rank, all rows at once: the greedy rule is sequential in j only
        fits = (lens[:, j] > 0) & (count + lens[:, j] <= k)  # (N,)
        taken[:, j] = fits
        count += np.where(fits, lens[:, j], 0)
    chosen_word = np.zeros(nw, bool)  # (nw,)
    chosen_word[order] = taken[word_row[order], rank]
    chosen = cand & chosen_word[np.maximum(word, 0)]  # (N, T)
    labels[chosen] = ids[chosen]
    u = rng.random(nw)  # (nw,) one 80/10/10 draw per word (unchosen words' draws go unused)
    tok_u = u[np.maximum(word, 0)]  # (N, T) each token reads its word's draw
    to_mask, to_random = chosen & (tok_u < 0.8), chosen & (tok_u >= 0.8) & (tok_u < 0.9)  # (N, T)
    masked[to_mask] = mask_id
    replace_ids = np.asarray(replace_ids)
    masked[to_random] = replace_ids[rng.integers(0, replace_ids.size, int(to_random.sum()))]
    return masked, labels


def truncation_counts(len_a, len_b, max_num_tokens):
    """How many tokens truncate_seq_pair removes from A and from B (vectorised, exact).

    The original loop removes one token at a time from the longer segment (B on a tie) until
    len_a + len_b <= max_num_tokens: first the longer is cut down to the shorter's length,
    then the two alternate starting with B. Only front-or-back is random, so the counts are not.
    """
    la, lb = np.asarray(len_a, np.int64), np.asarray(len_b, np.int64)
    excess = np.maximum(la + lb - max_num_tokens, 0)
    ra = np.minimum(excess, np.maximum(la - lb, 0))
    excess = excess - ra
    rb = np.minimum(excess, np.maximum(lb - la, 0))
    excess = excess - rb
    return ra + excess // 2, rb + (excess + 1) // 2


def create_pairs(sentence_offsets, doc_offsets, max_num_tokens, short_seq_prob, rng, balance_nsp=False):
    """The sentence-level part of create_instances_from_document, for every document in order.

    sentence_offsets (S + 1,), doc_offsets (D + 1,) as in TokenizedCorpus; rng a random.Random.
    balance_nsp=False is the original: a chunk of two or more sentences gets a random B with
    probability 1/2, a one-sentence chunk always does. On corpora of short documents (the
    stdlib docstrings: 40% have one sentence) that makes ~72% of labels "random". With
    balance_nsp=True a chunk that has a choice takes the coin only while random labels are
    not ahead in this epoch, and a true continuation otherwise, so the labels come out near
    1/2 whenever the forced ones are under half.
    Returns int64 arrays (a_start, a_len, b_start, b_len, is_random), each (N,), spans of the
    flat token array before truncation.
    """
    off = np.asarray(sentence_offsets).tolist()
    doc = np.asarray(doc_offsets).tolist()
    D = len(doc) - 1
    out = array("q")
    n_random = n_true = 0
    for d in range(D):
        s_begin, s_end = doc[d], doc[d + 1]
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_num_tokens)
        chunk, i = s_begin, s_begin  # the chunk is sentences chunk..i
        while i < s_end:
            if i == s_end - 1 or off[i + 1] - off[chunk] >= target:
                n_chunk = i + 1 - chunk
                a_end = 1 if n_chunk == 1 else rng.randint(1, n_chunk - 1)
                a0, a1 = off[chunk], off[chunk + a_end]
                if n_chunk == 1:
                    is_random = True
                elif balance_nsp and n_random > n_true:
                    is_random = False
                else:
                    is_random = rng.random() < 0.5
                n_random, n_true = n_random + is_random, n_true + (not is_random)
                if is_random:
                    target_b = target - (a1 - a0)
                    for _ in range(10):
                        r = rng.randint(0, D - 1)
                        if r != d:
                            break
                    j = rs = rng.randint(doc[r], doc[r + 1] - 1)
                    while j < doc[r + 1]:
                        j += 1
                        if off[j] - off[rs] >= target_b:
                            break
                    out.extend((a0, a1 - a0, off[rs], off[j] - off[rs], 1))
                    i -= n_chunk - a_end  # put the unused rest of the chunk back
                else:
                    out.extend((a0, a1 - a0, a1, off[i + 1] - a1, 0))
                chunk = i + 1
            i += 1
    spans = np.frombuffer(out, np.int64).reshape(-1, 5) if len(out) else np.zeros((0, 5), np.int64)  # (N, 5)
    return tuple(spans[:, c].copy() for c in range(5))


def special_token_ids(tokenizer):
    """((pad_id, cls_id, sep_id, mask_id), special_ids): the ids of SPECIAL_TOKENS, and (K,) int64
    every id never predicted nor drawn as a random replacement (those four and the tokenizer's
    other special tokens). ValueError when the tokenizer lacks one of SPECIAL_TOKENS."""
    ids, missing = {}, []
    for s in SPECIAL_TOKENS:
        try:
            ids[s] = tokenizer.token_to_id(s)
        except KeyError:
            ids[s] = None
        if ids[s] is None:
            missing.append(s)
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}; train it with special_tokens=SPECIAL_TOKENS")
    special = set(ids.values()) | set(getattr(tokenizer, "special_tokens", {}).values())
    return tuple(ids[s] for s in SPECIAL_TOKENS), np.array(sorted(special), np.int64)  # (K,)


class EpochInstances:
    """All instances of one epoch, padded to max_seq_len T (a compact, read-only view):

        input_ids     (N, T) int32  masked, padded with [PAD]
        labels        (N, T) int32  original id where masked, -100 elsewhere
        lengths       (N,)   int32  real tokens: len(A) + len(B) + 3
        a_lengths     (N,)   int32  len(A) after truncation
        next_sentence_label (N,) int8
        spans         (N, 4) int64  (a_start, a_len, b_start, b_len) in the corpus token array
    """

    def __init__(self, input_ids, labels, lengths, a_lengths, next_sentence_label, spans, pad_id):
        self.pad_id = pad_id
        self.input_ids, self.labels = input_ids, labels
        self.lengths, self.a_lengths = lengths, a_lengths
        self.next_sentence_label, self.spans = next_sentence_label, spans

    def __len__(self):
        return len(self.lengths)

    def token_type_ids(self, rows):
        """(len(rows), T) 0 through the first [SEP], 1 over B and its [SEP], 0 at padding."""
        t = np.arange(self.input_ids.shape[1])[None, :]  # (1, T)
        a, L = self.a_lengths[rows][:, None], self.lengths[rows][:, None]
        return ((t >= a + 2) & (t < L)).astype(np.int64)  # (B, T)

    def batch(self, rows, pad_to=None):
        """A batch dict of host int64 arrays of these rows (a slice or index array), padded with
        [PAD] to the longest (or to pad_to): input_ids, token_type_ids, attention_mask (1 = real
        token), labels (-100 at padding), all (B, T); next_sentence_label (B,)."""
        rows = np.arange(len(self))[rows]
        T = int(self.lengths[rows].max()) if pad_to is None else pad_to
        if int(self.lengths[rows].max()) > T:
            raise ValueError(f"an instance of length {int(self.lengths[rows].max())} does not fit pad_to={pad_to}")
        W = min(T, self.input_ids.shape[1])
        B = len(rows)
        ids = np.full((B, T), self.pad_id, np.int64)  # (B, T)
        ids[:, :W] = self.input_ids[rows, :W]
        labels = np.full((B, T), IGNORE_INDEX, np.int64)  # (B, T)
        labels[:, :W] = self.labels[rows, :W]
        tt = np.zeros((B, T), np.int64)  # (B, T)
        tt[:, :W] = self.token_type_ids(rows)[:, :W]
        am = (np.arange(T)[None, :] < self.lengths[rows][:, None]).astype(np.int64)  # (B, T)
        return {"input_ids": ids, "token_type_ids": tt, "attention_mask": am, "labels": labels,
                "next_sentence_label": self.next_sentence_label[rows].astype(np.int64)}  # (B,)


EVAL_STREAM = 1  # eval instances come from their own random stream, never a training epoch's
ORDER_STREAM = 2  # the order of an epoch's length-grouped batches: its own stream, so grouping changes no instance


def length_grouped_batches(lengths, batch_size, window, rng):
    """The rows of each batch of one epoch, (n_batches, batch_size), n_batches = N // batch_size.

    window <= 1: rows in order, batch i = rows [i * batch_size, (i + 1) * batch_size), the
    epoch's last partial batch dropped. window = W > 1: the same rows, but within each run of W
    batches (W * batch_size consecutive rows of the shuffled epoch) sorted by length before
    they are cut into batches, so a batch holds instances of similar length and is padded far
    less; then all the batches are shuffled, so lengths do not arrive in order (what Hugging
    Face's group_by_length does). Ties keep their order (a stable sort): a pure function of
    (lengths, batch_size, window) and rng's state.
    """
    n_batches = len(lengths) // batch_size
    rows = np.arange(n_batches * batch_size)  # (n_batches * B,) the last partial batch dropped
    if window <= 1:
        return rows.reshape(n_batches, batch_size)
    kept = np.asarray(lengths)[:rows.size]  # (n_batches * B,)
    span = window * batch_size
    for s in range(0, rows.size, span):  # a last, shorter window is sorted too
        rows[s:s + span] = s + np.argsort(kept[s:s + span], kind="stable")
    batches = rows.reshape(n_batches, batch_size)  # (n_batches, B)
    return batches[rng.permutation(n_batches)]


class PretrainingData:
    """MLM + NSP instances of a TokenizedCorpus, one deterministic set per (seed, epoch).

    balance_nsp: keep next-sentence labels near 1/2 on short documents (see create_pairs);
    False reproduces the original exactly.
    position: (epoch, index of the next batch) -- two ints, stored as a JSON list in checkpoints.
    batches(batch_size, start=position) yields (next_position, batch) forever; each epoch's last
    partial batch is dropped.
    length_window: 0 (or 1) gives batches in the epoch's order; W > 1 groups by length within
    windows of W batches and shuffles the batches (length_grouped_batches): the same instances,
    far less padding. The order is a function of (seed, epoch), so resuming stays exact.
    """

    def __init__(self, corpus, tokenizer, max_seq_len=128, max_predictions=20, short_seq_prob=0.1,
                 masked_lm_prob=0.15, seed=0, balance_nsp=True, chunk_rows=8192, length_window=0,
                 whole_word_mask=False):
        if max_seq_len < 5:
            raise ValueError(f"max_seq_len must be at least 5 ([CLS] a [SEP] b [SEP]), got {max_seq_len}")
        self.corpus, self.max_seq_len, self.max_predictions = corpus, max_seq_len, max_predictions
        self.short_seq_prob, self.masked_lm_prob, self.seed = short_seq_prob, masked_lm_prob, seed
        self.balance_nsp, self.chunk_rows, self.length_window = balance_nsp, chunk_rows, length_window
        (self.pad_id, self.cls_id, self.sep_id, self.mask_id), self.special_ids = special_token_ids(tokenizer)
        self.replace_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), self.special_ids)  # never a special
        self.whole_word_mask = whole_word_mask
        self.word_start = corpus_word_starts(corpus, tokenizer) if whole_word_mask else None  # (num_tokens,)
        self._epochs = {}

    def _rngs(self, epoch, stream=0):
        """(random.Random for the pair walk, numpy Generator for truncation, shuffling, masks)."""
        seq = np.random.SeedSequence([self.seed, epoch, stream])
        a, b = seq.generate_state(2, np.uint64)
        return random.Random(int(a)), np.random.default_rng(int(b))

    def epoch(self, epoch, stream=0):
        """EpochInstances of an epoch (the last two built are kept)."""
        key = (int(epoch), stream)
        if key not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = self._build_epoch(*key)
        return self._epochs[key]

    def num_instances(self, epoch=0):
        return len(self.epoch(epoch))

    def _build_epoch(self, epoch, stream):
        py_rng, rng = self._rngs(epoch, stream)
        T, M = self.max_seq_len, self.max_seq_len - 3
        a0, la, b0, lb, nsp = create_pairs(self.corpus.sentence_offsets, self.corpus.doc_offsets, M,
                                           self.short_seq_prob, py_rng, self.balance_nsp)
        ra, rb = truncation_counts(la, lb, M)  # (N,), (N,)
        fa, fb = rng.binomial(ra, 0.5), rng.binomial(rb, 0.5)  # tokens cut from each front
        a0, la, b0, lb = a0 + fa, la - ra, b0 + fb, lb - rb
        perm = rng.permutation(len(a0))  # shuffle instances, as the original does
        a0, la, b0, lb, nsp = a0[perm], la[perm], b0[perm], lb[perm], nsp[perm]
        N = len(a0)
        input_ids = np.empty((N, T), np.int32)  # (N, T)
        labels = np.empty((N, T), np.int32)  # (N, T)
        t = np.arange(T)[None, :]  # (1, T)
        tokens = self.corpus.tokens
        for s in range(0, N, self.chunk_rows):  # chunks bound the (rows, T) int64 temporaries
            sl = slice(s, s + self.chunk_rows)
            ca, cla, cb, clb = a0[sl, None], la[sl, None], b0[sl, None], lb[sl, None]
            in_a = (t >= 1) & (t <= cla)  # (n, T)
            in_b = (t >= cla + 2) & (t < cla + 2 + clb)  # (n, T)
            src = np.where(in_a, ca + t - 1, np.where(in_b, cb + t - cla - 2, 0))  # (n, T)
            ids = np.where(in_a | in_b, tokens[src], self.pad_id).astype(np.int64)  # (n, T)
            rows = np.arange(ids.shape[0])
            ids[:, 0] = self.cls_id
            ids[rows, cla[:, 0] + 1] = self.sep_id
            ids[rows, cla[:, 0] + clb[:, 0] + 2] = self.sep_id
            special = ~(in_a | in_b) | np.isin(ids, self.special_ids)  # (n, T)
            ws = None if self.word_start is None else (in_a | in_b) & self.word_start[src]  # (n, T)
            m, lab = mask_tokens(ids, special, rng, mask_id=self.mask_id, replace_ids=self.replace_ids,
                                 masked_lm_prob=self.masked_lm_prob, max_predictions=self.max_predictions,
                                 word_start=ws)
            input_ids[sl], labels[sl] = m, lab
        ep = EpochInstances(input_ids, labels, (la + lb + 3).astype(np.int32), la.astype(np.int32),
                            nsp.astype(np.int8), np.stack([a0, la, b0, lb], axis=1), self.pad_id)
        for arr in (ep.input_ids, ep.labels, ep.lengths, ep.a_lengths, ep.next_sentence_label, ep.spans):
            arr.flags.writeable = False
        return ep

    def batches(self, batch_size, start=(0, 0), pad_to=None):
        """Yield (next_position, batch) forever from position start = (epoch, batch index).

        Saving next_position and later calling batches(batch_size, start=saved) continues with
        exactly the batch that would have come next (the same batch_size is required).
        """
        epoch, index = (int(v) for v in start)
        while True:
            ep = self.epoch(epoch)
            n_batches = len(ep) // batch_size
            if n_batches == 0:
                raise ValueError(f"epoch {epoch} has {len(ep)} instances, fewer than batch_size={batch_size}")
            order = self.batch_rows(epoch, batch_size)  # (n_batches, B)
            while index < n_batches:
                batch = ep.batch(order[index], pad_to)
                index += 1
                yield ((epoch, index) if index < n_batches else (epoch + 1, 0)), batch
            epoch, index = epoch + 1, 0

    def batch_rows(self, epoch, batch_size):
        """(n_batches, batch_size) rows of each batch of a training epoch, in the order batches()
        yields them (length_grouped_batches with this data's length_window)."""
        order_rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), ORDER_STREAM]))
        return length_grouped_batches(self.epoch(epoch).lengths, batch_size, self.length_window, order_rng)

    def eval_batches(self, batch_size, num_batches=None, pad_to=None):
        """The same list of batches on every call: the first num_batches * batch_size
        instances of a fixed eval stream of this seed (independent of training epochs), the
        last batch possibly partial; num_batches=None takes all of them. Within that set the
        instances are batched shortest first, so each batch pads to little more than its own
        length (the figures are sums over the set's positions: the batching does not change them)."""
        ep = self.epoch(0, stream=EVAL_STREAM)
        n = len(ep) if num_batches is None else min(len(ep), num_batches * batch_size)
        rows = np.argsort(np.asarray(ep.lengths[:n]), kind="stable")  # (n,) shortest first
        return [ep.batch(rows[i:i + batch_size], pad_to) for i in range(0, n, batch_size)]
