"""One pretraining instance spelled out for a reader: each position's segment, input and
label, and which 80/10/10 choice a labelled position got (scripts/show_instance.py,
docs/pretraining.md). The instances themselves are made in instances.py.
"""
import numpy as np

from minibert.instances import word_ids
from minibert.model import IGNORE_INDEX

# how a labelled position's input came about; a random draw that happens to pick the original
# token (1 in ~V) reads as "kept": the input alone cannot tell the two apart
MASK_CHOICES = {"mask": "[MASK] (80%)", "random": "random token (10%)", "kept": "kept (10%)"}


def spelled_rows(data, inputs, originals, labels, segments, src):
    """Positions of one row as dicts (instance_rows, mlm_blocks.block_rows): pos, segment, input
    id, original id, label (-100 when not predicted), the 80/10/10 choice of a labelled position
    (MASK_CHOICES' keys), and word: under whole-word masking the number (1, 2, ...) of the word
    a labelled position belongs to, so the positions of one word read as one; None otherwise.
    src (L,) is each position's index in the corpus token array, -1 where [CLS]/[SEP] stand."""
    src = np.asarray(src)
    labelled = np.asarray(labels) != IGNORE_INDEX  # (L,)
    word = np.full(len(src), -1)  # (L,)
    if getattr(data, "word_start", None) is not None:
        cand = (src >= 0) & ~np.isin(originals, data.special_ids)  # (L,)
        ws = cand & data.word_start[np.maximum(src, 0)]  # (L,)
        word = word_ids(cand[None], ws[None])[0][0]  # (L,)
    numbers = {w: n + 1 for n, w in enumerate(dict.fromkeys(word[labelled & (word >= 0)].tolist()))}
    rows = []
    for t in range(len(src)):
        inp, orig, label = int(inputs[t]), int(originals[t]), int(labels[t])
        choice = None
        if label != IGNORE_INDEX:
            choice = "mask" if inp == data.mask_id else ("kept" if inp == orig else "random")
        rows.append(dict(pos=t, segment=int(segments[t]), input=inp, original=orig, label=label, choice=choice,
                         word=numbers.get(int(word[t])) if label != IGNORE_INDEX else None))
    return rows


def instance_rows(data, row, epoch=0):
    """The positions of instance `row` of `epoch` as dicts (spelled_rows): segment 0 for
    [CLS] A [SEP], 1 for B [SEP]."""
    ep = data.epoch(epoch)
    a0, la, b0, lb = (int(v) for v in ep.spans[row])
    tokens = data.corpus.tokens
    original = [data.cls_id, *tokens[a0:a0 + la], data.sep_id, *tokens[b0:b0 + lb], data.sep_id]  # (L,)
    src = np.r_[-1, np.arange(a0, a0 + la), -1, np.arange(b0, b0 + lb), -1]  # (L,)
    L = int(ep.lengths[row])
    segment = ep.token_type_ids(np.array([row]))[0]  # (T,)
    return spelled_rows(data, ep.input_ids[row, :L], original, ep.labels[row, :L], segment[:L], src)


def document_of(corpus, token_index):
    """Index of the document holding flat token position token_index."""
    first_token = np.asarray(corpus.sentence_offsets)[np.asarray(corpus.doc_offsets)]  # (D + 1,)
    return int(np.searchsorted(first_token, token_index, side="right")) - 1


def format_rows(data, tokenizer, rows):
    """The counts line, a blank line and one line per position of spelled_rows' dicts: its
    segment, the input token, and for a labelled position the label (the original token), the
    80/10/10 choice and, under whole-word masking, its word's number."""
    show = lambda i: repr(tokenizer.decode([i]))  # noqa: E731 (a token with its leading space visible)
    n_words = len({r["word"] for r in rows if r["word"]})
    whole = f", {n_words} whole words" if getattr(data, "word_start", None) is not None else ""
    lines = [f"  {sum(r['label'] != IGNORE_INDEX for r in rows)} of "
             f"{sum(r['original'] not in data.special_ids for r in rows)} non-special tokens labelled{whole} "
             f"({data.masked_lm_prob:.0%}, at most max_predictions={data.max_predictions})",
             "",
             f"  {'pos':>3}  seg  {'input':<18} {'label (original)':<18} choice"]
    for r in rows:
        label = show(r["label"]) if r["choice"] else str(IGNORE_INDEX)
        choice = MASK_CHOICES[r["choice"]] if r["choice"] else ""
        word = f"  word {r['word']}" if r["word"] else ""
        lines.append(f"  {r['pos']:>3}  {r['segment']:>3}  {show(r['input']):<18} {label:<18} "
                     f"{choice:<18}{word}".rstrip())
    return lines


def format_instance(data, tokenizer, row, epoch=0):
    """Instance `row` of `epoch` as text: where A and B come from, the NSP label, and one line
    per position (format_rows)."""
    ep = data.epoch(epoch)
    rows = instance_rows(data, row, epoch)
    a0, la, b0, lb = (int(v) for v in ep.spans[row])
    nsp = int(ep.next_sentence_label[row])
    lines = [f"instance {row} of epoch {epoch}: {len(rows)} tokens, padded to {data.max_seq_len} in a batch",
             f"  A: {la} tokens of document {document_of(data.corpus, a0)}; "
             f"B: {lb} tokens of document {document_of(data.corpus, b0)}",
             f"  next_sentence_label {nsp} ({'B is a random segment of another document' if nsp else 'B follows A'})",
             *format_rows(data, tokenizer, rows)]
    return "\n".join(lines)
