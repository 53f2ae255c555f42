"""BERT for extractive question answering (SQuAD): the answer is a span of the input,
given by a start and an end position.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden):

    input_ids, token_type_ids (B, T)   question as segment A, passage window as segment B
      -> encoder_forward (embeddings, L encoder layers; no pooler)       seq (B, T, H)
      -> logits = seq @ qa.w + qa.b                                       (B, T, 2)
      -> start_logits = logits[..., 0], end_logits = logits[..., 1]       (B, T) each
    loss = (start_loss + end_loss) / 2, each the mean cross-entropy over the rows whose
           position is inside the window, of a softmax over the T positions

This is Devlin et al. 2019, section 4.2 (SQuAD v1.1): "a start vector S and an end vector E
... The probability of word i being the start of the answer span is a softmax over all of
the words in the paragraph ... The training objective is the sum of the log-likelihoods of
the correct start and end positions"; qa.w's two columns are S and E. As in
transformers.BertForQuestionAnswering (qa_outputs, num_labels 2): no pooler, no dropout on
the sequence output, the softmax over all T positions (padding included: the trained head
learns to score padding low; span decoding masks it), and the positions treated exactly as
there: each clamped to [0, T], so a negative one becomes 0 (the [CLS] token: it counts, as
the "no answer in this window" target) and one at or past T becomes T, the ignored index:
that row adds nothing to its loss, which is the mean over the rows left. A batch with no
start (or no end) left gives transformers a NaN loss with zero gradient from that half;
minibert takes that half as 0 with the same zero gradient (losses.cross_entropy_ignore_forward).

Parameters: the encoder's without pooler plus "qa.w" (H, 2) and "qa.b" (2,) (transformers'
qa_outputs.weight (2, H), .bias), N(0, initializer_range) and zero from the stream [seed, 1].

    model = BertForQuestionAnswering.from_encoder(config, encoder)
    loss, grads = model.loss_and_grads({"input_ids": ..., "token_type_ids": ..., "attention_mask": ...,
                                        "start_positions": s, "end_positions": e})
"""
from typing import NamedTuple

import numpy as np  # host side only: input validation

from minibert import backend
from minibert.encoder import (
    BertBase, EncoderCache, check_grads, encoder_backward, encoder_forward, encoder_param_shapes, init_params,
    to_device_batch, without_pooler,
)
from minibert.layers import linear_backward, linear_forward
from minibert.losses import cross_entropy_ignore_backward, cross_entropy_ignore_forward
from minibert.model import validate_batch

POSITION_KEYS = ("start_positions", "end_positions")  # the labels, under transformers' names


def qa_head_shapes(c):
    return {"qa.w": (c.hidden_size, 2), "qa.b": (2,)}


def question_answering_param_shapes(c):
    shapes = encoder_param_shapes(c, pooler=False)
    shapes.update(qa_head_shapes(c))
    return shapes


def clamp_positions(positions, T):
    """transformers' rule: clamp to [0, T]; T, the ignored index, then marks a position
    outside the window. Host arrays (B,) in and out."""
    return np.clip(positions, 0, T)


class QACache(NamedTuple):
    """What BertForQuestionAnswering.backward needs, in forward order."""
    c_enc: EncoderCache
    c_qa: tuple  # the linear layer giving both logits
    c_start: object  # the start loss's cache, None when the batch had no positions
    c_end: object  # the end loss's cache


class BertForQuestionAnswering(BertBase):
    """BERT encoder (no pooler) and a linear layer H -> 2 at every position: start and end
    logits; the loss is the mean of the start and end cross-entropies."""

    def __init__(self, config, seed=0, params=None):
        if params is None:
            params = init_params(encoder_param_shapes(config, pooler=False), config, seed)
            params.update(init_params(qa_head_shapes(config), config, [int(seed), 1]))
        super().__init__(config, params, question_answering_param_shapes(config), seed)

    @classmethod
    def from_encoder(cls, config, encoder_params, seed=0):
        """The given encoder params (any pooler among them is left out) and a fresh seeded head."""
        params = without_pooler(config, encoder_params)
        params.update(init_params(qa_head_shapes(config), config, [int(seed), 1]))
        return cls(config, seed=seed, params=params)

    def validate_positions(self, batch, B, T):
        """start_positions, end_positions (B,) integers, clamped as transformers clamps them."""
        missing = [k for k in POSITION_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch has {'only one of ' if len(missing) == 1 else 'neither of '}"
                             f"start_positions and end_positions: give both, or neither for logits only")
        out = {}
        for k in POSITION_KEYS:
            a = np.asarray(backend.to_host(batch[k]))
            if a.shape != (B,):
                raise ValueError(f"batch[{k!r}] has shape {a.shape}, expected {(B,)} (one position per sequence)")
            if a.dtype.kind not in "iu":
                raise ValueError(f"batch[{k!r}] must hold integer positions, got dtype {a.dtype}")
            out[k] = clamp_positions(a.astype(np.int64), T)
        return out

    def forward(self, batch, train=True, rng=None):
        """Start and end logits (and, with the positions, the loss) for a batch, and the cache.

        batch: dict of host arrays: input_ids (B, T), optional token_type_ids and
        attention_mask (B, T), optional start_positions and end_positions (B,).
        Returns (out, cache); out holds device arrays: start_logits, end_logits (B, T), and
        with positions: loss (), count (rows whose start or end is inside the window)."""
        c, p = self.config, self.params
        hb = validate_batch(batch, c, require_labels=False)
        B, T = hb["input_ids"].shape
        has_labels = any(k in batch for k in POSITION_KEYS)
        if has_labels:
            hb.update(self.validate_positions(batch, B, T))
        db = to_device_batch(hb)
        rng = self.dropout_rng(train, rng)
        (seq, _), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                          recompute=self.recompute and train)
        logits, c_qa = linear_forward(seq, p["qa.w"], p["qa.b"])  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each, views
        out = {"start_logits": start_logits, "end_logits": end_logits}
        c_start = c_end = None
        if has_labels:
            # position T is the ignored index: softmax over the T positions, rows outside dropped
            start_loss, c_start = cross_entropy_ignore_forward(start_logits, db["start_positions"], T)  # ()
            end_loss, c_end = cross_entropy_ignore_forward(end_logits, db["end_positions"], T)  # ()
            out["loss"] = (start_loss + end_loss) / 2  # ()
            out["start_loss"], out["end_loss"] = start_loss, end_loss
            out["count"] = int(((hb["start_positions"] < T) | (hb["end_positions"] < T)).sum())
        return out, QACache(c_enc, c_qa, c_start, c_end)

    def backward(self, cache, dstart_logits=None, dend_logits=None, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param (dloss: 1, or fp16's loss
        scale), or, given dstart_logits and
        dend_logits (B, T), of sum(start_logits * dstart_logits + end_logits * dend_logits)."""
        c_enc, c_qa, c_start, c_end = cache  # see QACache
        if (dstart_logits is None) != (dend_logits is None):
            raise ValueError("give both dstart_logits and dend_logits, or neither (the loss's)")
        if dstart_logits is None:
            if c_start is None:
                raise ValueError("backward needs a loss or upstream gradients: the batch given to forward had no "
                                 "start_positions and end_positions")
            # forward: loss = (start_loss + end_loss) / 2, so each loss gets upstream dloss / 2
            (dstart_logits,) = cross_entropy_ignore_backward(0.5 * dloss, c_start)  # (B, T)
            (dend_logits,) = cross_entropy_ignore_backward(0.5 * dloss, c_end)  # (B, T)
        xp = backend.xp
        # forward: start_logits, end_logits = logits[..., 0], logits[..., 1]: the split's
        # gradient puts each back in its column
        dlogits = xp.stack([dstart_logits, dend_logits], axis=-1)  # (B, T, 2)
        g = {}
        # forward: logits = seq @ qa.w + qa.b
        dseq, g["qa.w"], g["qa.b"] = linear_backward(dlogits, c_qa)  # (B, T, H)
        # no pooler: the whole gradient enters at the sequence output
        g.update(encoder_backward(dseq, None, c_enc))
        check_grads(self.params, g)
        return g
