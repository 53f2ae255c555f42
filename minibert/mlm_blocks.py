"""MLM alone on packed blocks: RoBERTa's FULL-SENTENCES input, with no next-sentence task.

A sibling of instances.py for the objective --objective mlm (corpus -> token_cache -> instances
or mlm_blocks). BERT trains two tasks on pairs [CLS] A [SEP] B [SEP]: masked LM and next-sentence
prediction (NSP). RoBERTa (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining
Approach", section 4.2 and table 2) found that dropping NSP does not hurt and helps downstream,
when each input is FULL-SENTENCES: whole sentences read one after another from the corpus, packed
until the input is full, running on into the next document with one extra separator token at the
boundary. There is no pair, so there is no NSP label and every token type is 0; the model sees
long contiguous text, the only signal is the masked LM. Hugging Face's run_mlm.py ("group_texts")
makes the same blocks without regard to sentences.

    TokenizedCorpus --BlockData.epoch(e)--> BlockEpoch: [CLS] sentences ... [SEP] sentences [SEP], masked
                    --BlockData.batches--> (next_position, batch dict of host int64 arrays)

Dimension letters as in instances.py: N blocks in an epoch, B batch, T sequence length
(max_seq_len for an epoch, the longest row for a batch), D documents, M tokens of an epoch's
stream (the corpus tokens in the epoch's document order, with the [SEP]s between documents).

The blocks of epoch e (pack_blocks): the documents in a shuffled order (a function of (seed,
e)); their sentences packed in order into blocks of at most C = max_seq_len - 2 tokens, a [SEP]
between two documents that share a block; a sentence that does not fit in what is left of a
block starts the next one (so a block ends on a sentence boundary), and a sentence longer than
C fills whole blocks, its rest starting the next. Each block is [CLS] ... [SEP]. Masks are drawn
with instances.mask_tokens (and whole words with word_start), afresh every epoch (dynamic
masking, as RoBERTa). A data position is (epoch, index of the next batch), as in instances.py;
batches come in block order, the last partial batch of an epoch dropped.
"""
from array import array

import numpy as np

from minibert.instance_view import document_of, format_rows, spelled_rows
from minibert.instances import EVAL_STREAM, corpus_word_starts, length_grouped_batches, mask_tokens, special_token_ids
from minibert.model import IGNORE_INDEX

SEP_IN_STREAM = -1  # a stream entry that is a [SEP] between two documents, not a corpus token


def pack_blocks(sentence_offsets, doc_offsets, doc_order, block_len):
    """FULL-SENTENCES packing of the documents doc_order (D,) into blocks of block_len tokens.

    sentence_offsets (S + 1,), doc_offsets (D + 1,) as in TokenizedCorpus. Returns (stream (M,)
    int64, block_offsets (N + 1,) int64): stream lists the corpus token positions of the epoch
    in order, SEP_IN_STREAM for a [SEP] between two documents of one block; block i is
    stream[block_offsets[i]:block_offsets[i + 1]], at most block_len entries ([CLS] and the
    closing [SEP] are not in the stream).
    """
    off = np.asarray(sentence_offsets).tolist()
    doc = np.asarray(doc_offsets).tolist()
    pieces = array("q")  # (start, length) pairs; start SEP_IN_STREAM is one [SEP]
    ends = array("q")  # the stream length at each block's end
    pos = used = 0  # stream length so far, entries in the open block
    for d in np.asarray(doc_order).tolist():
        for s in range(doc[d], doc[d + 1]):
            a, L = off[s], off[s + 1] - off[s]
            sep = int(s == doc[d] and used > 0)  # a new document inside an open block
            if used + sep + L <= block_len:
                if sep:
                    pieces.extend((SEP_IN_STREAM, 1))
                pieces.extend((a, L))
                pos, used = pos + sep + L, used + sep + L
                continue
            if used > 0:  # the sentence does not fit: it starts the next block
                ends.append(pos)
            while L > block_len:  # longer than a block: whole blocks of it first
                pieces.extend((a, block_len))
                pos, a, L = pos + block_len, a + block_len, L - block_len
                ends.append(pos)
            if L:
                pieces.extend((a, L))
            pos, used = pos + L, L
    if used > 0:
        ends.append(pos)
    spans = np.frombuffer(pieces, np.int64).reshape(-1, 2) if len(pieces) else np.zeros((0, 2), np.int64)  # (P, 2)
    starts, lens = spans[:, 0], spans[:, 1]  # (P,), (P,)
    piece = np.repeat(np.arange(len(lens)), lens)  # (M,) the piece each stream entry comes from
    within = np.arange(piece.size) - np.repeat(np.cumsum(lens) - lens, lens)  # (M,) offset in its piece
    stream = np.where(starts[piece] == SEP_IN_STREAM, SEP_IN_STREAM, starts[piece] + within)  # (M,)
    ends = np.frombuffer(ends, np.int64) if len(ends) else np.zeros(0, np.int64)  # (N,)
    block_offsets = np.concatenate([[0], ends]).astype(np.int64)  # (N + 1,)
    return stream, block_offsets


class BlockEpoch:
    """All blocks of one epoch, padded to max_seq_len T (a compact, read-only view):

        input_ids      (N, T) int32  masked: [CLS] ... [SEP], padded with [PAD]
        labels         (N, T) int32  original id where masked, -100 elsewhere
        lengths        (N,)   int32  real tokens: the block's stream entries + 2
        stream         (M,)   int64  corpus token positions in order, SEP_IN_STREAM between documents
        block_offsets  (N + 1,) int64  block i is stream[block_offsets[i]:block_offsets[i + 1]]
        doc_order      (D,)   int64  the documents in the order the blocks read them
    """

    def __init__(self, input_ids, labels, lengths, stream, block_offsets, doc_order, pad_id):
        self.pad_id = pad_id
        self.input_ids, self.labels, self.lengths = input_ids, labels, lengths
        self.stream, self.block_offsets, self.doc_order = stream, block_offsets, doc_order

    def __len__(self):
        return len(self.lengths)

    def batch(self, rows, pad_to=None):
        """A batch dict of host int64 arrays of these rows (a slice or index array), padded with
        [PAD] to the longest (or to pad_to): input_ids, token_type_ids (all 0: one segment),
        attention_mask (1 = real token), labels (-100 at padding), all (B, T)."""
        rows = np.arange(len(self))[rows]
        longest = int(self.lengths[rows].max())
        T = longest if pad_to is None else pad_to
        if longest > T:
            raise ValueError(f"a block of length {longest} does not fit pad_to={pad_to}")
        W = min(T, self.input_ids.shape[1])
        B = len(rows)
        ids = np.full((B, T), self.pad_id, np.int64)  # (B, T)
        ids[:, :W] = self.input_ids[rows, :W]
        labels = np.full((B, T), IGNORE_INDEX, np.int64)  # (B, T)
        labels[:, :W] = self.labels[rows, :W]
        am = (np.arange(T)[None, :] < self.lengths[rows][:, None]).astype(np.int64)  # (B, T)
        return {"input_ids": ids, "token_type_ids": np.zeros((B, T), np.int64), "attention_mask": am,
                "labels": labels}


class BlockData:
    """Masked-LM blocks of a TokenizedCorpus (FULL-SENTENCES), one deterministic set per (seed,
    epoch), with the interface of instances.PretrainingData that training uses: epoch(e),
    num_instances(epoch), batches(batch_size, start, pad_to), eval_batches(batch_size, n).

    whole_word_mask: mask whole words (instances.mask_tokens with word_start).
    position: (epoch, index of the next batch); batches(batch_size, start=position) yields
    (next_position, batch) forever, each epoch's last partial batch dropped.
    """

    def __init__(self, corpus, tokenizer, max_seq_len=128, max_predictions=20, masked_lm_prob=0.15, seed=0,
                 whole_word_mask=False):
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 ([CLS] a [SEP]), got {max_seq_len}")
        self.corpus, self.max_seq_len, self.max_predictions = corpus, max_seq_len, max_predictions
        self.masked_lm_prob, self.seed, self.whole_word_mask = masked_lm_prob, seed, whole_word_mask
        (self.pad_id, self.cls_id, self.sep_id, self.mask_id), self.special_ids = special_token_ids(tokenizer)
        self.replace_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), self.special_ids)  # never a special
        self.word_start = corpus_word_starts(corpus, tokenizer) if whole_word_mask else None  # (num_tokens,)
        self._epochs = {}

    def epoch(self, epoch, stream=0):
        """BlockEpoch of an epoch (the last two built are kept)."""
        key = (int(epoch), stream)
        if key not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = self._build_epoch(*key)
        return self._epochs[key]

    def num_instances(self, epoch=0):
        return len(self.epoch(epoch))

    def _build_epoch(self, epoch, stream):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, stream]))
        T = self.max_seq_len
        doc_order = rng.permutation(self.corpus.num_documents)  # (D,)
        entries, block_offsets = pack_blocks(self.corpus.sentence_offsets, self.corpus.doc_offsets, doc_order, T - 2)
        is_sep = entries == SEP_IN_STREAM  # (M,)
        src_token = np.where(is_sep, 0, entries)  # (M,)
        entry_ids = np.where(is_sep, self.sep_id, np.asarray(self.corpus.tokens)[src_token]).astype(np.int64)  # (M,)
        N = len(block_offsets) - 1
        lengths = np.diff(block_offsets) + 2  # (N,)
        t = np.arange(T)[None, :]  # (1, T)
        inner = (t >= 1) & (t < lengths[:, None] - 1)  # (N, T) between [CLS] and the closing [SEP]
        src = np.where(inner, block_offsets[:-1, None] + t - 1, 0)  # (N, T) stream entry at each position
        ids = np.where(inner, entry_ids[src] if entries.size else 0, self.pad_id)  # (N, T)
        ids[:, 0] = self.cls_id
        ids[np.arange(N), lengths - 1] = self.sep_id
        special = ~inner | np.isin(ids, self.special_ids)  # (N, T)
        ws = None
        if self.word_start is not None:
            ws = inner & ~is_sep[src] & self.word_start[src_token[src]]  # (N, T)
        masked, labels = mask_tokens(ids, special, rng, mask_id=self.mask_id, replace_ids=self.replace_ids,
                                     masked_lm_prob=self.masked_lm_prob, max_predictions=self.max_predictions,
                                     word_start=ws)
        ep = BlockEpoch(masked.astype(np.int32), labels.astype(np.int32), lengths.astype(np.int32), entries,
                        block_offsets, doc_order, self.pad_id)
        for arr in (ep.input_ids, ep.labels, ep.lengths, ep.stream, ep.block_offsets, ep.doc_order):
            arr.flags.writeable = False
        return ep

    def batches(self, batch_size, start=(0, 0), pad_to=None):
        """Yield (next_position, batch) forever from position start = (epoch, batch index),
        batch i of an epoch being its blocks [i * batch_size, (i + 1) * batch_size). Saving
        next_position and calling batches(batch_size, start=saved) later continues exactly."""
        epoch, index = (int(v) for v in start)
        while True:
            ep = self.epoch(epoch)
            n_batches = len(ep) // batch_size
            if n_batches == 0:
                raise ValueError(f"epoch {epoch} has {len(ep)} blocks, fewer than batch_size={batch_size}")
            order = length_grouped_batches(ep.lengths, batch_size, 0, None)  # (n_batches, B) in order
            while index < n_batches:
                batch = ep.batch(order[index], pad_to)
                index += 1
                yield ((epoch, index) if index < n_batches else (epoch + 1, 0)), batch
            epoch, index = epoch + 1, 0

    def eval_batches(self, batch_size, num_batches=None, pad_to=None):
        """The same list of batches on every call: the first num_batches * batch_size blocks
        of a fixed eval stream of this seed (never a training epoch), the last possibly partial."""
        ep = self.epoch(0, stream=EVAL_STREAM)
        n = len(ep) if num_batches is None else min(len(ep), num_batches * batch_size)
        return [ep.batch(np.arange(i, min(i + batch_size, n)), pad_to) for i in range(0, n, batch_size)]


# ----------------------------------------------------------------------------------------
# one block, spelled out for a reader (scripts/show_instance.py --objective mlm)

def block_original(data, row, epoch=0):
    """(L,) int64 the ids of block `row` of `epoch` before masking: [CLS], its stream, [SEP]."""
    ep = data.epoch(epoch)
    entries = np.asarray(ep.stream[ep.block_offsets[row]:ep.block_offsets[row + 1]])  # (L - 2,)
    inner = np.where(entries == SEP_IN_STREAM, data.sep_id,
                     np.asarray(data.corpus.tokens)[np.maximum(entries, 0)]).astype(np.int64)  # (L - 2,)
    return np.concatenate([[data.cls_id], inner, [data.sep_id]]).astype(np.int64)  # (L,)


def block_rows(data, row, epoch=0):
    """The positions of block `row` of `epoch` as dicts (instance_view.spelled_rows), segment 0."""
    ep = data.epoch(epoch)
    entries = np.asarray(ep.stream[ep.block_offsets[row]:ep.block_offsets[row + 1]])  # (L - 2,)
    src = np.r_[-1, np.where(entries == SEP_IN_STREAM, -1, entries), -1]  # (L,)
    L = int(ep.lengths[row])
    return spelled_rows(data, ep.input_ids[row, :L], block_original(data, row, epoch), ep.labels[row, :L],
                        np.zeros(L, np.int64), src)


def format_block(data, tokenizer, row, epoch=0):
    """Block `row` of `epoch` as text: the documents it reads (in order, with how many tokens of
    each), and one line per position (instance_view.format_rows)."""
    ep = data.epoch(epoch)
    rows = block_rows(data, row, epoch)
    entries = np.asarray(ep.stream[ep.block_offsets[row]:ep.block_offsets[row + 1]])  # (L - 2,)
    parts = np.split(entries, np.flatnonzero(entries == SEP_IN_STREAM))  # pieces, each after the first led by [SEP]
    parts = [p[p != SEP_IN_STREAM] for p in parts]
    docs = " [SEP] ".join(f"{len(p)} tokens of document {document_of(data.corpus, int(p[0]))}" for p in parts if len(p))
    lines = [f"block {row} of epoch {epoch}: {len(rows)} tokens, padded to {data.max_seq_len} in a batch",
             f"  [CLS] {docs} [SEP]; token types all 0, no next-sentence label",
             *format_rows(data, tokenizer, rows)]
    return "\n".join(lines)
