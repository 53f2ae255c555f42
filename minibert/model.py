"""BERT for pretraining (MLM + NSP, or MLM alone): config, batches, heads, forward and hand-written backward.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden,
A heads, V vocabulary, P masked positions):

    input_ids, token_type_ids (B, T)
      -> embeddings: word + position + token type, LayerNorm, dropout     (B, T, H)
      -> L post-LN encoder layers (self-attention, feed-forward)          (B, T, H)
         (norm="pre": L pre-LN layers, then a final LayerNorm)
      -> pooler: tanh(dense(h[:, 0]))                                     (B, H)
    MLM head at the P labelled positions only (gathered first):
         dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + bias  (P, V)
    NSP head on the pooled [CLS]: dense to 2 classes                       (B, 2)
    loss = mean CE over the P labelled positions + mean CE over the B pairs

Three models share the encoder (each matches the `transformers` class of the same name):
    BertForPreTraining  encoder, pooler, MLM head, NSP head; loss = MLM + NSP
    BertForMaskedLM     encoder and MLM head, no pooler, no NSP; loss = MLM alone, and
                        batches need no next_sentence_label (Liu et al. 2019 found NSP unneeded)
    BertModel           encoder and pooler only: features, no loss (backward takes their gradients)
The encoder itself (parameters, forward, backward, the BertBase scaffolding) is in
encoder.py; the fine-tuning model, BertForSequenceClassification, is in classifier.py.

Parameters live in `model.params`, a flat dict name -> array; gradients come back as a
dict with the same keys and shapes. The word embedding is used twice (input lookup and MLM
decoder); its gradient is the sum of both contributions, added in each model's backward.
"""
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np  # host side only: input validation

from minibert import backend, kernels
from minibert.encoder import (
    BertBase, EncoderCache, check_grads, encoder_backward, encoder_forward, encoder_param_shapes, init_params,
    report_ready, to_device_batch,
)
from minibert.layers import (
    ENCODER_LAYERS, gelu_approximation, gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
    linear_backward, linear_forward,
)
from minibert.losses import cross_entropy_backward, cross_entropy_forward

IGNORE_INDEX = -100  # label of positions that carry no MLM target (Hugging Face's value)


PRESETS = {  # the shapes of Turc et al. 2019's small BERTs (tiny, mini, small) and BERT-base
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}


@dataclass
class BertConfig:
    vocab_size: int = 8192
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # exact erf GELU as BERT; "gelu_tanh" for the approximation
    initializer_range: float = 0.02
    dtype: str = "float32"  # "float64" for gradient checks
    # "post": BERT's layer norm after each residual sum; "pre": layer norm at the start of
    # each branch plus one after the last layer (Xiong et al. 2020). Configs saved before
    # this field existed are post-LN (from_dict's default)
    norm: str = "post"

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                  "max_position", "type_vocab_size"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"BertConfig.{f} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for f in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ValueError(f"BertConfig.{f} must be in [0, 1), got {getattr(self, f)}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"BertConfig.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        gelu_approximation(self.hidden_act)  # raises on an unknown activation
        if self.norm not in ENCODER_LAYERS:
            raise ValueError(f"BertConfig.norm must be 'post' (layer norm after each residual sum, as BERT) or "
                             f"'pre' (layer norm inside the residual, before attention and the FFN), got {self.norm!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BertConfig fields: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------
# parameters: the encoder's (encoder.encoder_param_shapes) and the heads'


def mlm_head_shapes(c):
    H = c.hidden_size
    return {"mlm.w": (H, H), "mlm.b": (H,), "mlm.ln.w": (H,), "mlm.ln.b": (H,), "mlm.bias": (c.vocab_size,)}


def pretraining_param_shapes(c):
    """BertForPreTraining: encoder, pooler, MLM head, NSP head."""
    H = c.hidden_size
    shapes = encoder_param_shapes(c)
    shapes.update(mlm_head_shapes(c))
    shapes.update({"nsp.w": (H, 2), "nsp.b": (2,)})
    return shapes


def masked_lm_param_shapes(c):
    """BertForMaskedLM: encoder and MLM head; no pooler, as transformers' (add_pooling_layer=False)."""
    shapes = encoder_param_shapes(c, pooler=False)
    shapes.update(mlm_head_shapes(c))
    return shapes


# ----------------------------------------------------------------------------------------
# input validation (host side, before any arithmetic)


def validate_batch(batch, c, require_labels=True, nsp=True):
    """Raise ValueError naming the problem; return the batch as host NumPy arrays.

    require_labels: MLM labels must be given, and next_sentence_label too when nsp is True."""
    def get(key):
        if key not in batch:
            raise ValueError(f"batch is missing {key!r} (keys given: {sorted(batch)})")
        a = np.asarray(backend.to_host(batch[key]))
        if a.dtype.kind not in "iu":
            raise ValueError(f"batch[{key!r}] must hold integers, got dtype {a.dtype}")
        return a

    ids = get("input_ids")
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"batch['input_ids'] must have shape (B, T) with B, T >= 1, got {ids.shape}")
    B, T = ids.shape
    if T > c.max_position:
        raise ValueError(f"sequence length {T} exceeds max_position {c.max_position}")
    out = {"input_ids": ids}
    out["token_type_ids"] = get("token_type_ids") if "token_type_ids" in batch else np.zeros_like(ids)
    out["attention_mask"] = get("attention_mask") if "attention_mask" in batch else np.ones_like(ids)
    keys = ["token_type_ids", "attention_mask"]
    if require_labels:
        out["labels"] = get("labels")
        if nsp:
            out["next_sentence_label"] = get("next_sentence_label")
        keys.append("labels")
    for k in keys:
        if out[k].shape != (B, T):
            raise ValueError(f"batch[{k!r}] has shape {out[k].shape}, input_ids has {(B, T)}")
    if ids.min() < 0 or ids.max() >= c.vocab_size:
        bad = ids[(ids < 0) | (ids >= c.vocab_size)][0]
        raise ValueError(f"token id {bad} in input_ids is outside the vocabulary [0, {c.vocab_size})")
    tt = out["token_type_ids"]
    if tt.min() < 0 or tt.max() >= c.type_vocab_size:
        raise ValueError(f"token_type_ids must be in [0, {c.type_vocab_size}), got values {np.unique(tt)[:5]}")
    am = out["attention_mask"]
    if not np.isin(am, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if require_labels:
        lab = out["labels"]
        ok = (lab == IGNORE_INDEX) | ((lab >= 0) & (lab < c.vocab_size))
        if not ok.all():
            raise ValueError(f"labels must be {IGNORE_INDEX} or a token id in [0, {c.vocab_size}), got {lab[~ok][0]}")
    if require_labels and nsp:
        nsl = out["next_sentence_label"]
        if nsl.shape != (B,):
            raise ValueError(f"batch['next_sentence_label'] has shape {nsl.shape}, expected {(B,)}")
        if not np.isin(nsl, (0, 1)).all():
            raise ValueError("next_sentence_label must be 0 (B follows A) or 1 (random B)")
    return out


# ----------------------------------------------------------------------------------------
# the MLM head, shared by BertForPreTraining and BertForMaskedLM


class MLMHeadCache(NamedTuple):
    """What mlm_head_backward needs, in forward order."""
    seq_shape: tuple  # (B, T, H)
    pos: object  # (P,) flat indices of the labelled positions
    mlm_hidden: object  # (P, H) the decoder's input, for the tied word embedding's gradient
    c_mlm_fc: tuple
    c_mlm_act: tuple
    c_mlm_ln: tuple


def mlm_head_forward(p, c, seq, pos):
    """MLM logits (P, V) at the P flat positions `pos` of the sequence output seq (B, T, H):
    mlm_hidden = LN(gelu(seq_mlm @ mlm.w + mlm.b)), logits = mlm_hidden @ word^T + bias."""
    B, T, H = seq.shape
    seq_mlm = seq.reshape(B * T, H)[pos]  # (P, H)
    mlm_fc, c_mlm_fc = linear_forward(seq_mlm, p["mlm.w"], p["mlm.b"])  # (P, H)
    mlm_act, c_mlm_act = gelu_forward(mlm_fc, gelu_approximation(c.hidden_act))  # (P, H)
    mlm_hidden, c_mlm_ln = layernorm_forward(mlm_act, p["mlm.ln.w"], p["mlm.ln.b"], c.layer_norm_eps)  # (P, H)
    # decoder tied to the input word embeddings
    mlm_logits = backend.matmul(mlm_hidden, p["emb.word"].T, p["mlm.bias"])  # (P, V) + bias
    return mlm_logits, MLMHeadCache((B, T, H), pos, mlm_hidden, c_mlm_fc, c_mlm_act, c_mlm_ln)


def mlm_head_backward(dmlm_logits, cache, w_word):
    """(dseq (B, T, H), grads of mlm.*, dword_decoder (V, H)): the decoder's part of the
    tied word embedding's gradient, which the caller adds to the input lookup's part."""
    xp = backend.xp
    (B, T, H), pos, mlm_hidden = cache.seq_shape, cache.pos, cache.mlm_hidden
    g = {}
    # forward: mlm_logits = mlm_hidden @ word^T + bias, so dmlm_hidden = dlogits @ word,
    # dword (decoder part) = dlogits^T @ mlm_hidden, dbias = sum over positions
    dmlm_hidden, dword_decoder = backend.matmul_pair(dmlm_logits, w_word, dmlm_logits.T, mlm_hidden)  # (P, H), (V, H)
    g["mlm.bias"] = kernels.sum_rows(dmlm_logits)  # (V,) dmlm_logits.sum(axis=0)
    # forward: mlm_hidden = LN(mlm_act)
    dmlm_act, g["mlm.ln.w"], g["mlm.ln.b"] = layernorm_backward(dmlm_hidden, cache.c_mlm_ln)  # (P, H)
    # forward: mlm_act = gelu(mlm_fc)
    (dmlm_fc,) = gelu_backward(dmlm_act, cache.c_mlm_act)  # (P, H)
    # forward: mlm_fc = seq_mlm @ mlm.w + mlm.b
    dseq_mlm, g["mlm.w"], g["mlm.b"] = linear_backward(dmlm_fc, cache.c_mlm_fc)  # (P, H)
    # forward: seq_mlm = seq.reshape(N, H)[pos]; positions are distinct, so assignment routes it
    dseq = xp.zeros((B * T, H), dtype=dseq_mlm.dtype)  # (N, H)
    dseq[pos] = dseq_mlm
    return dseq.reshape(B, T, H), g, dword_decoder


def labelled_positions(hb):
    """(P,) flat indices of the positions that carry an MLM label, and their labels (P,),
    gathered on the host: most positions carry none."""
    labels = hb["labels"].reshape(-1)  # (N,)
    pos = np.flatnonzero(labels != IGNORE_INDEX)  # (P,)
    return pos, labels[pos]


# ----------------------------------------------------------------------------------------
# BERT for pretraining


class PretrainingCache(NamedTuple):
    """What BertForPreTraining.backward needs, in forward order."""
    c_enc: EncoderCache
    c_mlm: MLMHeadCache
    c_mlm_ce: tuple
    c_nsp: tuple
    c_nsp_ce: tuple


class BertForPreTraining(BertBase):
    """BERT with the MLM and NSP heads. `params` is a dict name -> array on the backend."""

    has_nsp = True  # trained with MLM + NSP: batches carry next_sentence_label

    def __init__(self, config, seed=0, params=None):
        shapes = pretraining_param_shapes(config)
        super().__init__(config, init_params(shapes, config, seed) if params is None else params, shapes, seed)

    def forward(self, batch, train=True, rng=None, global_counts=None):
        """Loss, logits and accuracies for a batch, and the cache for `backward`.

        batch: dict of host arrays with Hugging Face's keys (see validate_batch).
        train: dropout on (as the config says) when True; rng: the backend Generator that
        draws the dropout masks (None: a fresh stream from the model's seed).
        global_counts: (labelled positions, pairs) of the global batch that this batch is a
        slice of, when the batch is split over processes: the losses are then sums divided by
        these, so the processes' losses and gradients add up to the global batch's means.
        Returns (out, cache); out holds device scalars/arrays: loss, mlm_loss, nsp_loss,
        mlm_logits (P, V), nsp_logits (B, 2), mlm_preds, mlm_labels, nsp_preds,
        mlm_correct, mlm_count, nsp_correct, nsp_count.
        """
        c, p = self.config, self.params
        hb = validate_batch(batch, c)
        pos, mlm_labels = labelled_positions(hb)
        db = to_device_batch({"input_ids": hb["input_ids"], "token_type_ids": hb["token_type_ids"],
                              "attention_mask": hb["attention_mask"], "pos": pos, "mlm_labels": mlm_labels,
                              "nsp_labels": hb["next_sentence_label"]})
        rng = self.dropout_rng(train, rng)
        (seq, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                               recompute=self.recompute and train)
        B = seq.shape[0]

        # MLM head, only at the P labelled positions
        mlm_logits, c_mlm = mlm_head_forward(p, c, seq, db["pos"])  # (P, V)
        mlm_norm, nsp_norm = global_counts or (None, None)  # None: this batch's own counts
        mlm_loss, c_mlm_ce = cross_entropy_forward(mlm_logits, db["mlm_labels"], mlm_norm)

        # NSP head on the pooled [CLS]
        nsp_logits, c_nsp = linear_forward(pooled, p["nsp.w"], p["nsp.b"])  # (B, 2)
        nsp_loss, c_nsp_ce = cross_entropy_forward(nsp_logits, db["nsp_labels"], nsp_norm)

        mlm_preds = mlm_logits.argmax(axis=1)  # (P,)
        nsp_preds = nsp_logits.argmax(axis=1)  # (B,)
        out = {
            "loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_logits": mlm_logits, "nsp_logits": nsp_logits,
            "mlm_preds": mlm_preds, "mlm_labels": db["mlm_labels"], "mlm_positions": db["pos"],
            "nsp_preds": nsp_preds,
            "mlm_correct": (mlm_preds == db["mlm_labels"]).sum(), "mlm_count": len(pos),
            "nsp_correct": (nsp_preds == db["nsp_labels"]).sum(), "nsp_count": B,
        }
        return out, PretrainingCache(c_enc, c_mlm, c_mlm_ce, c_nsp, c_nsp_ce)

    def backward(self, cache, on_ready=None, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param: a dict with params' keys and
        shapes. on_ready: called with each group of gradients once final (see
        encoder.encoder_backward). dloss: the loss's own gradient, 1, or fp16's loss scale
        (a 0-d device array; mixed_precision.py)."""
        p = self.params
        g = {}
        # forward: loss = mlm_loss + nsp_loss, so each receives the loss's gradient dloss
        (dnsp_logits,) = cross_entropy_backward(dloss, cache.c_nsp_ce)  # (B, 2)
        dpooled, g["nsp.w"], g["nsp.b"] = linear_backward(dnsp_logits, cache.c_nsp)  # (B, H)
        report_ready(on_ready, g, ["nsp.w", "nsp.b"])
        (dmlm_logits,) = cross_entropy_backward(dloss, cache.c_mlm_ce)  # (P, V)
        dseq, g_mlm, dword_decoder = mlm_head_backward(dmlm_logits, cache.c_mlm, p["emb.word"])  # (B, T, H)
        g.update(g_mlm)
        report_ready(on_ready, g, list(g_mlm))
        g.update(encoder_backward(dseq, dpooled, cache.c_enc, on_ready))
        # the tied word embedding: input lookup + MLM decoder, summed here and only here
        g["emb.word"] += dword_decoder
        report_ready(on_ready, g, ["emb.word"])
        check_grads(p, g)
        return g


# ----------------------------------------------------------------------------------------
# BERT for masked language modelling alone


class MaskedLMCache(NamedTuple):
    """What BertForMaskedLM.backward needs, in forward order."""
    c_enc: EncoderCache
    c_mlm: MLMHeadCache
    c_mlm_ce: tuple


class BertForMaskedLM(BertBase):
    """BERT with the MLM head only (transformers' BertForMaskedLM: no pooler, no NSP head).
    The loss is the MLM loss alone; a batch's next_sentence_label, if any, is ignored."""

    has_nsp = False

    def __init__(self, config, seed=0, params=None):
        shapes = masked_lm_param_shapes(config)
        super().__init__(config, init_params(shapes, config, seed) if params is None else params, shapes, seed)

    def forward(self, batch, train=True, rng=None, global_counts=None):
        """As BertForPreTraining.forward without NSP (global_counts: its first count is used): out holds loss (= mlm_loss), mlm_loss,
        mlm_logits (P, V), mlm_preds, mlm_labels, mlm_positions, mlm_correct, mlm_count."""
        c, p = self.config, self.params
        hb = validate_batch(batch, c, nsp=False)
        pos, mlm_labels = labelled_positions(hb)
        db = to_device_batch({"input_ids": hb["input_ids"], "token_type_ids": hb["token_type_ids"],
                              "attention_mask": hb["attention_mask"], "pos": pos, "mlm_labels": mlm_labels})
        rng = self.dropout_rng(train, rng)
        (seq, _), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                          recompute=self.recompute and train)
        mlm_logits, c_mlm = mlm_head_forward(p, c, seq, db["pos"])  # (P, V)
        mlm_loss, c_mlm_ce = cross_entropy_forward(mlm_logits, db["mlm_labels"], (global_counts or (None,))[0])
        mlm_preds = mlm_logits.argmax(axis=1)  # (P,)
        out = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_logits": mlm_logits, "mlm_preds": mlm_preds,
               "mlm_labels": db["mlm_labels"], "mlm_positions": db["pos"],
               "mlm_correct": (mlm_preds == db["mlm_labels"]).sum(), "mlm_count": len(pos)}
        return out, MaskedLMCache(c_enc, c_mlm, c_mlm_ce)

    def backward(self, cache, on_ready=None, dloss=1.0):
        """Gradients of dloss * out["loss"] w.r.t. every param, as BertForPreTraining.backward."""
        p = self.params
        # forward: loss = mlm_loss
        (dmlm_logits,) = cross_entropy_backward(dloss, cache.c_mlm_ce)  # (P, V)
        dseq, g, dword_decoder = mlm_head_backward(dmlm_logits, cache.c_mlm, p["emb.word"])  # (B, T, H)
        report_ready(on_ready, g, list(g))
        g.update(encoder_backward(dseq, None, cache.c_enc, on_ready))
        # the tied word embedding: input lookup + MLM decoder, summed here and only here
        g["emb.word"] += dword_decoder
        report_ready(on_ready, g, ["emb.word"])
        check_grads(p, g)
        return g


# ----------------------------------------------------------------------------------------
# the bare encoder: features, no head


class BertModel(BertBase):
    """The encoder and pooler alone (transformers' BertModel): forward gives the sequence
    output (B, T, H) and the pooled [CLS] (B, H); it has no loss, so backward takes the
    gradients of whatever loss the caller computes from them. Asked for a head's output
    (loss_and_grads, fill-mask), it says it has none."""

    has_nsp = False

    def __init__(self, config, seed=0, params=None):
        shapes = encoder_param_shapes(config)
        super().__init__(config, init_params(shapes, config, seed) if params is None else params, shapes, seed)

    def forward(self, batch, train=True, rng=None):
        """out: sequence_output (B, T, H), pooled_output (B, H); batch labels are ignored."""
        c, p = self.config, self.params
        hb = validate_batch(batch, c, require_labels=False)
        db = to_device_batch({k: hb[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        rng = self.dropout_rng(train, rng)
        (seq, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng,
                                               recompute=self.recompute and train)
        return {"sequence_output": seq, "pooled_output": pooled}, c_enc

    def backward(self, cache, dseq=None, dpooled=None):
        """Gradients of every param from d(sequence_output) (B, T, H) and d(pooled_output) (B, H)."""
        if dseq is None and dpooled is None:
            raise ValueError("BertModel has no loss of its own: give backward the gradient of the sequence "
                             "output, of the pooled output, or both")
        g = encoder_backward(dseq, dpooled, cache)
        if dpooled is None:  # the pooler took no part in the loss
            xp = backend.xp
            g["pool.w"], g["pool.b"] = xp.zeros_like(self.params["pool.w"]), xp.zeros_like(self.params["pool.b"])
        check_grads(self.params, g)
        return g

    def loss_and_grads(self, batch, train=True, rng=None):
        raise ValueError("BertModel is the encoder alone (no MLM, NSP or classification head): it has no loss. "
                         "Use forward/backward with your own loss, or load a checkpoint that has a head")


# the pretraining models a run directory may hold, by the "model_class" of a checkpoint's
# meta (absent in runs older than BertForMaskedLM: BertForPreTraining)
PRETRAINING_MODELS = {"BertForPreTraining": (BertForPreTraining, pretraining_param_shapes),
                      "BertForMaskedLM": (BertForMaskedLM, masked_lm_param_shapes)}


def pretraining_model(meta):
    """(model class, its param-shapes function) of a pretraining checkpoint's meta."""
    name = meta.get("model_class", "BertForPreTraining")
    if name not in PRETRAINING_MODELS:
        raise ValueError(f"unknown pretraining model_class {name!r}: expected one of {sorted(PRETRAINING_MODELS)}")
    return PRETRAINING_MODELS[name]
