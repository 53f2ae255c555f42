"""BERT for token classification (tagging: named entities, parts of speech): one label per token.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden) and
C the number of labels:

    input_ids, token_type_ids (B, T)
      -> encoder_forward (embeddings, L encoder layers; no pooler)       seq (B, T, H)
      -> seq_d = dropout(seq, config.dropout)                             (B, T, H)
      -> logits = seq_d @ cls.w + cls.b, at every position                (B, T, C)
    loss = mean cross-entropy of logits against labels (B, T) over the positions whose
           label is not IGNORE_INDEX (-100): the P labelled positions

This is Devlin et al. 2019, section 5.3 (CoNLL-2003 NER): "we feed the final hidden
representation T_i of each token i into a classification layer over the NER label set";
which tokens carry a label (the first piece of each word, say) is the data's choice, told
by -100 elsewhere. As in transformers.BertForTokenClassification: no pooler, dropout on the
sequence output (classifier_dropout when set, else hidden_dropout_prob: minibert's
config.dropout), CrossEntropyLoss over logits.view(-1, C) with its ignore_index -100. A
label at a padded position counts, as it does there; the data should put -100 at padding.
With no labelled position at all, transformers' loss is NaN (a mean over nothing) and its
gradient zero; minibert's loss is 0 with the same zero gradient, as its MLM loss is with
no masked position (losses.cross_entropy_ignore_forward).

Parameters: the encoder's without pooler (encoder.encoder_param_shapes(c, pooler=False))
plus "cls.w" (H, C) and "cls.b" (C,) (transformers' classifier.weight, .bias), drawn as the
sequence classifier's head is: N(0, initializer_range) and zero from the stream [seed, 1].

    config, encoder, _ = rundir.read_pretrained_encoder("runs/pretrain")
    model = BertForTokenClassification.from_encoder(config, encoder, num_labels=9)
    loss, grads = model.loss_and_grads({"input_ids": ..., "attention_mask": ..., "labels": tags})
"""
from typing import NamedTuple

import numpy as np  # host side only: input validation and seeded initialisation

from minibert import backend
from minibert.classifier import init_classifier
from minibert.encoder import (
    BertBase, EncoderCache, check_grads, encoder_backward, encoder_forward, encoder_param_shapes, init_params,
    to_device_batch, without_pooler,
)
from minibert.layers import dropout_backward, dropout_forward, linear_backward, linear_forward
from minibert.losses import cross_entropy_ignore_backward, cross_entropy_ignore_forward
from minibert.model import IGNORE_INDEX, validate_batch


def token_classifier_param_shapes(c, num_labels):
    shapes = encoder_param_shapes(c, pooler=False)
    shapes.update({"cls.w": (c.hidden_size, num_labels), "cls.b": (num_labels,)})
    return shapes


def _check_num_labels(num_labels):
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")


class TokenClassifierCache(NamedTuple):
    """What BertForTokenClassification.backward needs, in forward order."""
    c_enc: EncoderCache
    c_drop: object  # dropout on the sequence output
    c_cls: tuple  # the classifier's linear layer
    c_loss: object  # the loss's cache, None when the batch had no labels
    logits_shape: tuple  # (B, T, C)


class BertForTokenClassification(BertBase):
    """BERT encoder (no pooler), dropout, a linear layer over num_labels tags at every
    position; cross-entropy over the positions not labelled IGNORE_INDEX."""

    def __init__(self, config, num_labels, seed=0, params=None):
        _check_num_labels(num_labels)
        self.num_labels = int(num_labels)
        if params is None:
            params = init_params(encoder_param_shapes(config, pooler=False), config, seed)
            params.update(init_classifier(config, self.num_labels, seed))
        super().__init__(config, params, token_classifier_param_shapes(config, self.num_labels), seed)

    @classmethod
    def from_encoder(cls, config, encoder_params, num_labels, seed=0):
        """The given encoder params (any pooler among them is left out) and a fresh seeded head."""
        _check_num_labels(num_labels)
        params = without_pooler(config, encoder_params)
        params.update(init_classifier(config, int(num_labels), seed))
        return cls(config, num_labels, seed=seed, params=params)

    def validate_labels(self, batch, B, T):
        """labels (B, T) as a host array: tag ids in [0, C), or IGNORE_INDEX."""
        y = np.asarray(backend.to_host(batch["labels"]))
        if y.shape != (B, T):
            raise ValueError(f"batch['labels'] has shape {y.shape}, expected {(B, T)} (one label per token)")
        if y.dtype.kind not in "iu":
            raise ValueError(f"token labels must be integer ids, got dtype {y.dtype}")
        ok = (y == IGNORE_INDEX) | ((y >= 0) & (y < self.num_labels))
        if not ok.all():
            raise ValueError(f"label {y[~ok][0]} is neither {IGNORE_INDEX} nor a class in [0, {self.num_labels})")
        return y

    def forward(self, batch, train=True, rng=None):
        """Logits (and, with "labels", the loss) for a batch, and the cache.

        batch: dict of host arrays: input_ids (B, T), optional token_type_ids and
        attention_mask (B, T), optional labels (B, T) (tag ids, IGNORE_INDEX where none).
        Returns (out, cache); out holds device arrays: logits (B, T, C), preds (B, T), and
        with labels: loss (), correct () and count P (the labelled positions)."""
        c, p = self.config, self.params
        hb = validate_batch(batch, c, require_labels=False)
        B, T = hb["input_ids"].shape
        has_labels = "labels" in batch
        if has_labels:
            hb["labels"] = self.validate_labels(batch, B, T)
        db = to_device_batch(hb)
        rng = self.dropout_rng(train, rng)
        (seq, _), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                          recompute=self.recompute and train)
        seq_d, c_drop = dropout_forward(seq, c.dropout, rng)  # (B, T, H)
        logits, c_cls = linear_forward(seq_d, p["cls.w"], p["cls.b"])  # (B, T, C)
        preds = logits.argmax(axis=-1)  # (B, T)
        out = {"logits": logits, "preds": preds}
        c_loss = None
        if has_labels:
            labels = db["labels"].reshape(-1)  # (N,)
            out["loss"], c_loss = cross_entropy_ignore_forward(logits.reshape(-1, self.num_labels), labels,
                                                              IGNORE_INDEX)
            labelled = labels != IGNORE_INDEX  # (N,)
            out["correct"] = ((preds.reshape(-1) == labels) & labelled).sum()
            out["count"] = int(labelled.sum())
        return out, TokenClassifierCache(c_enc, c_drop, c_cls, c_loss, tuple(logits.shape))

    def backward(self, cache, dlogits=None, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param (dloss: 1, or fp16's loss
        scale), or, given dlogits (B, T, C), of sum(logits * dlogits) (an upstream gradient
        from elsewhere: distillation, a test)."""
        c_enc, c_drop, c_cls, c_loss, logits_shape = cache  # see TokenClassifierCache
        if dlogits is None:
            if c_loss is None:
                raise ValueError("backward needs a loss or dlogits: the batch given to forward had no 'labels'")
            # forward: loss = cross_entropy_ignore(logits.reshape(N, C), labels.reshape(N))
            (dflat,) = cross_entropy_ignore_backward(dloss, c_loss)  # (N, C)
            dlogits = dflat.reshape(logits_shape)  # (B, T, C)
        g = {}
        # forward: logits = seq_d @ cls.w + cls.b, at every position
        dseq_d, g["cls.w"], g["cls.b"] = linear_backward(dlogits, c_cls)  # (B, T, H)
        # forward: seq_d = dropout(seq)
        (dseq,) = dropout_backward(dseq_d, c_drop)  # (B, T, H)
        # no pooler: the whole gradient enters at the sequence output
        g.update(encoder_backward(dseq, None, c_enc))
        check_grads(self.params, g)
        return g
