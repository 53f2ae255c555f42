"""BERT for sequence classification (and regression): the pretrained encoder, a new head.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden) and
C the number of labels:

    input_ids, token_type_ids (B, T)
      -> encoder_forward (embeddings, L encoder layers, pooler)          pooled (B, H)
      -> pooled_d = dropout(pooled, config.dropout)                       (B, H)
      -> logits = pooled_d @ cls.w + cls.b                                (B, C)
    C > 1:  loss = mean cross-entropy of the logits against class ids y (B,)
    C == 1: regression, loss = mean squared error of logits[:, 0] against targets y (B,)

This is Devlin et al. 2019, section 4.1 (GLUE): "the final hidden vector C of the [CLS]
token ... classification layer weights W (K x H) ... standard classification loss
log(softmax(C W^T))"; the [CLS] vector goes through the pooler first, as in the released
code and in transformers.BertForSequenceClassification, whose dropout on the pooled output
is classifier_dropout when set, else hidden_dropout_prob (minibert's config.dropout), and
whose loss for num_labels == 1 is MSE (problem_type "regression").

Parameters: the encoder's (encoder.encoder_param_shapes) plus "cls.w" (H, C) and "cls.b"
(C,). The classifier is drawn from its own seeded stream, N(0, initializer_range) weights
and zero bias, so the same seed gives the same head whichever encoder it sits on.

The encoder comes from the caller, who reads it where it lives: a minibert pretraining run
(rundir.read_pretrained_encoder) or a Hugging Face directory (interop.load_hf_encoder_params).

    config, encoder, _ = rundir.read_pretrained_encoder("runs/pretrain")
    model = BertForSequenceClassification.from_encoder(config, encoder, num_labels=10)
    loss, grads = model.loss_and_grads({"input_ids": ..., "attention_mask": ..., "labels": y})
"""
from typing import NamedTuple

import numpy as np  # host side only: input validation and seeded initialisation

from minibert import backend
from minibert.layers import dropout_backward, dropout_forward, linear_backward, linear_forward
from minibert.losses import cross_entropy_backward, cross_entropy_forward, mse_backward, mse_forward
from minibert.encoder import (
    BertBase, EncoderCache, check_grads, encoder_backward, encoder_forward, encoder_param_shapes, init_params,
    to_device_batch, with_pooler,
)
from minibert.model import validate_batch


# ----------------------------------------------------------------------------------------
# parameters


def classifier_param_shapes(c, num_labels):
    shapes = encoder_param_shapes(c)
    shapes.update({"cls.w": (c.hidden_size, num_labels), "cls.b": (num_labels,)})
    return shapes


def init_classifier(c, num_labels, seed):
    """A fresh head: cls.w ~ N(0, initializer_range), cls.b = 0, from the stream [seed, 1]
    (its own stream, so it does not depend on whether the encoder was drawn too)."""
    shapes = {"cls.w": (c.hidden_size, num_labels), "cls.b": (num_labels,)}
    return init_params(shapes, c, [int(seed), 1])


def _check_num_labels(num_labels):
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer (1 means regression), got {num_labels!r}")


# ----------------------------------------------------------------------------------------
# the model


class ClassifierCache(NamedTuple):
    """What BertForSequenceClassification.backward needs, in forward order."""
    c_enc: EncoderCache
    c_drop: object  # dropout on the pooled output
    c_cls: tuple  # the classifier's linear layer
    c_loss: object  # the loss's cache, None when the batch had no labels
    batch_size: int  # B


class BertForSequenceClassification(BertBase):
    """BERT encoder + pooler, dropout, linear classifier over num_labels classes
    (num_labels == 1: regression with MSE). `params` is a dict name -> backend array."""

    def __init__(self, config, num_labels, seed=0, params=None):
        _check_num_labels(num_labels)
        self.num_labels = int(num_labels)
        if params is None:
            params = init_params(encoder_param_shapes(config), config, seed)
            params.update(init_classifier(config, self.num_labels, seed))
        super().__init__(config, params, classifier_param_shapes(config, self.num_labels), seed)

    @property
    def is_regression(self):
        return self.num_labels == 1

    # -- construction from a pretrained encoder --------------------------------------

    @classmethod
    def from_encoder(cls, config, encoder_params, num_labels, seed=0):
        """The given encoder params (emb.*, layers.*, pool.*) and a fresh seeded head. An
        encoder without a pooler (from BertForMaskedLM) gets a fresh one, N(0,
        initializer_range) from the stream [seed, 2], as transformers draws a missing pooler.
        Any head of the checkpoint the encoder came from is left behind by the reader
        (rundir.read_pretrained_encoder, interop.load_hf_encoder_params)."""
        _check_num_labels(num_labels)
        params = with_pooler(config, encoder_params, seed)
        params.update(init_classifier(config, int(num_labels), seed))
        return cls(config, num_labels, seed=seed, params=params)

    # -- forward / backward -----------------------------------------------------------

    def validate_labels(self, batch, B):
        """labels (B,) as a host array: class ids in [0, C), or finite floats for C == 1."""
        y = np.asarray(backend.to_host(batch["labels"]))
        if y.shape != (B,):
            raise ValueError(f"batch['labels'] has shape {y.shape}, expected {(B,)} (one label per sequence)")
        if self.is_regression:
            if y.dtype.kind not in "iuf":
                raise ValueError(f"regression labels must be numbers, got dtype {y.dtype}")
            y = y.astype(self.config.dtype)
            if not np.isfinite(y).all():
                raise ValueError("regression labels must be finite")
            return y
        if y.dtype.kind not in "iu":
            raise ValueError(f"class labels must be integer ids, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= self.num_labels:
            bad = y[(y < 0) | (y >= self.num_labels)][0]
            raise ValueError(f"label {bad} is outside the classes [0, {self.num_labels})")
        return y

    def forward(self, batch, train=True, rng=None):
        """Logits (and, when batch has "labels", the loss) for a batch, and the cache.

        batch: dict of host arrays: input_ids (B, T), optional token_type_ids and
        attention_mask (B, T), optional labels (B,) (class ids; floats for regression).
        train: dropout on when True; rng: the backend Generator for the dropout masks.
        Returns (out, cache); out holds device arrays: logits (B, C), preds (B,) (class
        ids, or the predicted values for regression), and with labels: loss (),
        correct () (classification only) and count B.
        """
        c, p = self.config, self.params
        hb = validate_batch(batch, c, require_labels=False)
        B = hb["input_ids"].shape[0]
        has_labels = "labels" in batch
        if has_labels:
            hb["labels"] = self.validate_labels(batch, B)
        db = to_device_batch(hb)
        rng = self.dropout_rng(train, rng)
        (_, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                             recompute=self.recompute and train)
        pooled_d, c_drop = dropout_forward(pooled, c.dropout, rng)  # (B, H)
        logits, c_cls = linear_forward(pooled_d, p["cls.w"], p["cls.b"])  # (B, C)
        preds = logits[:, 0] if self.is_regression else logits.argmax(axis=1)  # (B,)
        out = {"logits": logits, "preds": preds, "count": B}
        c_loss = None
        if has_labels:
            if self.is_regression:
                out["loss"], c_loss = mse_forward(logits[:, 0], db["labels"])
            else:
                out["loss"], c_loss = cross_entropy_forward(logits, db["labels"])
                out["correct"] = (preds == db["labels"]).sum()
        return out, ClassifierCache(c_enc, c_drop, c_cls, c_loss, B)

    def backward(self, cache, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param: a dict with params' keys and
        shapes (dloss: 1, or fp16's loss scale, a 0-d device array)."""
        c_enc, c_drop, c_cls, c_loss, B = cache  # see ClassifierCache
        if c_loss is None:
            raise ValueError("backward needs a loss: the batch given to forward had no 'labels'")
        g = {}
        if self.is_regression:
            # forward: loss = mse(logits[:, 0], y)
            (dpred,) = mse_backward(dloss, c_loss)  # (B,)
            dlogits = dpred.reshape(B, 1)  # (B, 1)
        else:
            # forward: loss = cross_entropy(logits, y)
            (dlogits,) = cross_entropy_backward(dloss, c_loss)  # (B, C)
        # forward: logits = pooled_d @ cls.w + cls.b
        dpooled_d, g["cls.w"], g["cls.b"] = linear_backward(dlogits, c_cls)  # (B, H)
        # forward: pooled_d = dropout(pooled)
        (dpooled,) = dropout_backward(dpooled_d, c_drop)  # (B, H)
        # only the pooled [CLS] feeds the head: no gradient arrives at the sequence output
        g.update(encoder_backward(None, dpooled, c_enc))
        check_grads(self.params, g)
        return g

