"""BERT for multiple choice (SWAG): each of C candidate continuations is paired with the
context, scored alone, and the scores compete in one softmax.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden) and
C the number of choices (the batch's own: the model has no parameter per choice):

    input_ids, token_type_ids, attention_mask (B, C, T)
      -> flattened to (B*C, T): every choice is a sequence of its own
      -> encoder_forward (embeddings, L encoder layers, pooler)          pooled (B*C, H)
      -> pooled_d = dropout(pooled, config.dropout)                       (B*C, H)
      -> scores = pooled_d @ cls.w + cls.b                                (B*C, 1)
      -> logits = scores.reshape(B, C)                                    (B, C)
    loss = mean cross-entropy of the logits against the right choice y (B,)

This is Devlin et al. 2019, section 4.4 (SWAG): "we construct four input sequences, each
containing the concatenation of the given sentence (sentence A) and a possible continuation
(sentence B). The only task-specific parameters introduced is a vector whose dot product
with the [CLS] token representation C denotes a score for each choice which is normalized
with a softmax layer"; as in transformers.BertForMultipleChoice, [CLS] goes through the
pooler and dropout first, and the vector has a bias.

Parameters: the encoder's with pooler plus "cls.w" (H, 1) and "cls.b" (1,) (transformers'
classifier.weight (1, H), .bias), drawn as the sequence classifier's head is. An encoder
without a pooler gets a fresh one (encoder.with_pooler).

    model = BertForMultipleChoice.from_encoder(config, encoder)
    loss, grads = model.loss_and_grads({"input_ids": ids_bct, "attention_mask": mask_bct, "labels": y})
"""
from typing import NamedTuple

import numpy as np  # host side only: input validation

from minibert import backend
from minibert.classifier import init_classifier
from minibert.encoder import (
    BertBase, EncoderCache, check_grads, encoder_backward, encoder_forward, encoder_param_shapes, init_params,
    to_device_batch, with_pooler,
)
from minibert.layers import dropout_backward, dropout_forward, linear_backward, linear_forward
from minibert.losses import cross_entropy_backward, cross_entropy_forward
from minibert.model import validate_batch

INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


def multiple_choice_param_shapes(c):
    shapes = encoder_param_shapes(c)
    shapes.update({"cls.w": (c.hidden_size, 1), "cls.b": (1,)})
    return shapes


def flatten_choices(batch):
    """(B, C, T) inputs as (B*C, T) sequences, and (B, C). Host arrays; labels left out."""
    if "input_ids" not in batch:
        raise ValueError(f"batch is missing 'input_ids' (keys given: {sorted(batch)})")
    ids = np.asarray(backend.to_host(batch["input_ids"]))
    if ids.ndim != 3 or min(ids.shape) < 1:
        raise ValueError(f"batch['input_ids'] must have shape (B, C, T) with B, C, T >= 1, got {ids.shape}")
    B, C, T = ids.shape
    flat = {}
    for k in INPUT_KEYS:
        if k in batch:
            a = np.asarray(backend.to_host(batch[k]))
            if a.shape != (B, C, T):
                raise ValueError(f"batch[{k!r}] has shape {a.shape}, input_ids has {(B, C, T)}")
            flat[k] = a.reshape(B * C, T)
    return flat, (B, C)


class MultipleChoiceCache(NamedTuple):
    """What BertForMultipleChoice.backward needs, in forward order."""
    c_enc: EncoderCache
    c_drop: object  # dropout on the pooled output
    c_cls: tuple  # the scoring linear layer
    c_loss: object  # the loss's cache, None when the batch had no labels
    choices: tuple  # (B, C)


class BertForMultipleChoice(BertBase):
    """BERT encoder + pooler, dropout, one linear score per choice, softmax over the choices."""

    def __init__(self, config, seed=0, params=None):
        if params is None:
            params = init_params(encoder_param_shapes(config), config, seed)
            params.update(init_classifier(config, 1, seed))
        super().__init__(config, params, multiple_choice_param_shapes(config), seed)

    @classmethod
    def from_encoder(cls, config, encoder_params, seed=0):
        """The given encoder params (a fresh pooler if they have none) and a fresh seeded head."""
        params = with_pooler(config, encoder_params, seed)
        params.update(init_classifier(config, 1, seed))
        return cls(config, seed=seed, params=params)

    def validate_labels(self, batch, B, C):
        """labels (B,) as a host array: the index of the right choice, in [0, C)."""
        y = np.asarray(backend.to_host(batch["labels"]))
        if y.shape != (B,):
            raise ValueError(f"batch['labels'] has shape {y.shape}, expected {(B,)} (one answer per question)")
        if y.dtype.kind not in "iu":
            raise ValueError(f"choice labels must be integer indices, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= C:
            raise ValueError(f"label {y[(y < 0) | (y >= C)][0]} is outside the choices [0, {C})")
        return y

    def forward(self, batch, train=True, rng=None):
        """Logits over the choices (and, with "labels", the loss) for a batch, and the cache.

        batch: dict of host arrays: input_ids (B, C, T), optional token_type_ids and
        attention_mask (B, C, T), optional labels (B,) (the right choice).
        Returns (out, cache); out holds device arrays: logits (B, C), preds (B,), and with
        labels: loss (), correct () and count B."""
        c, p = self.config, self.params
        flat, (B, C) = flatten_choices(batch)
        hb = validate_batch(flat, c, require_labels=False)  # (B*C, T) each
        has_labels = "labels" in batch
        if has_labels:
            hb["labels"] = self.validate_labels(batch, B, C)
        db = to_device_batch(hb)
        rng = self.dropout_rng(train, rng)
        (_, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                             recompute=self.recompute and train)
        pooled_d, c_drop = dropout_forward(pooled, c.dropout, rng)  # (B*C, H)
        scores, c_cls = linear_forward(pooled_d, p["cls.w"], p["cls.b"])  # (B*C, 1)
        logits = scores.reshape(B, C)  # (B, C) row b holds question b's choices in order
        preds = logits.argmax(axis=1)  # (B,)
        out = {"logits": logits, "preds": preds, "count": B}
        c_loss = None
        if has_labels:
            out["loss"], c_loss = cross_entropy_forward(logits, db["labels"])
            out["correct"] = (preds == db["labels"]).sum()
        return out, MultipleChoiceCache(c_enc, c_drop, c_cls, c_loss, (B, C))

    def backward(self, cache, dlogits=None, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param (dloss: 1, or fp16's loss
        scale), or, given dlogits (B, C), of sum(logits * dlogits)."""
        c_enc, c_drop, c_cls, c_loss, (B, C) = cache  # see MultipleChoiceCache
        if dlogits is None:
            if c_loss is None:
                raise ValueError("backward needs a loss or dlogits: the batch given to forward had no 'labels'")
            # forward: loss = cross_entropy(logits, y), the softmax across each row's C choices
            (dlogits,) = cross_entropy_backward(dloss, c_loss)  # (B, C)
        # forward: logits = scores.reshape(B, C): a reshape moves no number, so neither does its gradient
        dscores = dlogits.reshape(B * C, 1)  # (B*C, 1)
        g = {}
        # forward: scores = pooled_d @ cls.w + cls.b
        dpooled_d, g["cls.w"], g["cls.b"] = linear_backward(dscores, c_cls)  # (B*C, H)
        # forward: pooled_d = dropout(pooled)
        (dpooled,) = dropout_backward(dpooled_d, c_drop)  # (B*C, H)
        # only the pooled [CLS] of each choice feeds the head
        g.update(encoder_backward(None, dpooled, c_enc))
        check_grads(self.params, g)
        return g
