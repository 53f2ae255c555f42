"""BERT for pretraining (MLM + NSP, or MLM alone): config, parameters, forward and hand-written backward.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden,
A heads, V vocabulary, P masked positions):

    input_ids, token_type_ids (B, T)
      -> embeddings: word + position + token type, LayerNorm, dropout     (B, T, H)
      -> L post-LN encoder layers (self-attention, feed-forward)          (B, T, H)
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
The fine-tuning model, BertForSequenceClassification, is in classifier.py.

Parameters live in `model.params`, a flat dict name -> array; gradients come back as a
dict with the same keys and shapes. The word embedding is used twice (input lookup and MLM
decoder); its gradient is the sum of both contributions, added in each model's backward.
"""
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np  # host side only: input validation and seeded initialisation

from minibert import backend, kernels
from minibert.layers import (
    ENCODER_LAYER_PARAMS, MASK_VALUE, dropout_backward, dropout_forward, embedding_backward,
    embedding_forward, encoder_layer_backward, encoder_layer_forward, gelu_approximation,
    gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, linear_backward,
    linear_forward, pooler_backward, pooler_forward,
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
# parameters


def encoder_param_shapes(c, pooler=True):
    """name -> shape for the embeddings, the encoder layers and (pooler=True) the pooler."""
    H, I = c.hidden_size, c.intermediate_size
    shapes = {
        "emb.word": (c.vocab_size, H), "emb.pos": (c.max_position, H), "emb.type": (c.type_vocab_size, H),
        "emb.ln.w": (H,), "emb.ln.b": (H,),
    }
    layer = {"attn.w_qkv": (H, 3 * H), "attn.b_qkv": (3 * H,), "attn.w_o": (H, H), "attn.b_o": (H,),
             "ln1.w": (H,), "ln1.b": (H,), "ffn.w_fc": (H, I), "ffn.b_fc": (I,),
             "ffn.w_proj": (I, H), "ffn.b_proj": (H,), "ln2.w": (H,), "ln2.b": (H,)}
    assert tuple(layer) == ENCODER_LAYER_PARAMS
    for l in range(c.num_layers):
        shapes.update({f"layers.{l}.{k}": s for k, s in layer.items()})
    if pooler:
        shapes.update({"pool.w": (H, H), "pool.b": (H,)})
    return shapes


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


def init_params(shapes, c, seed):
    """BERT's initialisation: weights ~ N(0, initializer_range), biases 0, LayerNorm w 1.

    Drawn on the host with NumPy so that a seed gives the same model on every backend.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if name.split(".")[-2].startswith("ln"):
            a = np.ones(shape) if leaf == "w" else np.zeros(shape)  # LayerNorm weight / bias
        elif len(shape) == 1:
            a = np.zeros(shape)  # biases
        else:
            a = rng.normal(0.0, c.initializer_range, size=shape)
        params[name] = backend.to_device(a, dtype=c.dtype)
    return params


def check_params(params, shapes, dtype):
    backend.check_keys(params, shapes, "params do not match the config")
    for k, s in shapes.items():
        if tuple(params[k].shape) != s:
            raise ValueError(f"param {k!r} has shape {tuple(params[k].shape)}, the config expects {s}")
        if params[k].dtype != np.dtype(dtype):
            raise ValueError(f"param {k!r} has dtype {params[k].dtype}, the config expects {dtype}")


def check_grads(params, grads):
    """Gradients mirror params: same keys, same shapes (asserted once per step)."""
    assert grads.keys() == params.keys(), sorted(set(grads) ^ set(params))
    for k, g in grads.items():
        assert g.shape == params[k].shape, (k, g.shape, params[k].shape)


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
# the encoder shared by every BERT model: embeddings -> layers -> pooler


class EncoderCache(NamedTuple):
    """Each stage's cache, in forward order: what encoder_backward needs."""
    c_emb: tuple  # embedding lookup
    c_eln: tuple  # embedding LayerNorm
    c_edrop: object  # embedding dropout
    c_layers: list  # one EncoderLayerCache per layer; c_layers[l].c_attn.probs holds layer l's attention
    c_pool: tuple  # pooler (None for a model without one)


def encoder_forward(params, c, input_ids, token_type_ids, attention_mask, rng=None):
    """Device arrays in; returns (sequence_output (B, T, H), pooled (B, H)), cache.

    rng None means no dropout (evaluation). Without "pool.w" in params (BertForMaskedLM)
    there is no pooler and pooled is None."""
    dtype = params["emb.word"].dtype
    B, T = input_ids.shape
    # padded keys get MASK_VALUE added to their scores in every head and every query row
    attn_bias = ((1.0 - attention_mask.astype(dtype)) * MASK_VALUE).reshape(B, 1, 1, T)  # (B, 1, 1, T)
    emb, c_emb = embedding_forward(input_ids, token_type_ids, params["emb.word"], params["emb.pos"],
                                   params["emb.type"])  # (B, T, H)
    emb_ln, c_eln = layernorm_forward(emb, params["emb.ln.w"], params["emb.ln.b"], c.layer_norm_eps)  # (B, T, H)
    x, c_edrop = dropout_forward(emb_ln, c.dropout, rng)  # (B, T, H) the input of layer 0
    c_layers = []
    for l in range(c.num_layers):
        p = {k: params[f"layers.{l}.{k}"] for k in ENCODER_LAYER_PARAMS}
        # x is the hidden state, layer l's input before and its output after
        x, cl = encoder_layer_forward(x, attn_bias, p, c.num_heads, c.layer_norm_eps, c.hidden_act,
                                      c.dropout, c.attention_dropout, rng)  # (B, T, H)
        c_layers.append(cl)
    pooled, c_pool = None, None
    if "pool.w" in params:
        pooled, c_pool = pooler_forward(x, params["pool.w"], params["pool.b"])  # (B, H)
    return (x, pooled), EncoderCache(c_emb, c_eln, c_edrop, c_layers, c_pool)


def encoder_backward(dseq, dpooled, cache, on_ready=None):
    """Gradients of the encoder params from d(sequence_output) and d(pooled); either may be
    None (no gradient arrives there), not both. A model without a pooler passes dpooled None.

    on_ready(grads), when given, is called with each group of gradients as soon as it is
    final (the pooler, then each layer from the top down, then the embedding LayerNorm and
    the position and type tables), so a caller can start summing them over processes while
    the backward continues below (distributed.py). The word embedding is left to the model,
    which adds the MLM decoder's part first."""
    c_emb, c_eln, c_edrop, c_layers, c_pool = cache  # see EncoderCache
    g = {}
    if dpooled is not None:
        # forward: pooled = pooler(x); x also flows to the sequence output
        dx, g["pool.w"], g["pool.b"] = pooler_backward(dpooled, c_pool)  # (B, T, H)
        _ready(on_ready, g, ["pool.w", "pool.b"])
        if dseq is not None:
            dx += dseq
    else:
        dx = dseq  # (B, T, H) never written into: each backward returns fresh arrays
    for l in reversed(range(len(c_layers))):
        # forward: x = encoder_layer(x); dx is the gradient of the hidden state
        dx, gl = encoder_layer_backward(dx, c_layers[l])  # (B, T, H)
        g.update({f"layers.{l}.{k}": v for k, v in gl.items()})
        _ready(on_ready, g, [f"layers.{l}.{k}" for k in gl])
    # forward: x = dropout(emb_ln)
    (demb_ln,) = dropout_backward(dx, c_edrop)  # (B, T, H)
    # forward: emb_ln = LN(emb)
    demb, g["emb.ln.w"], g["emb.ln.b"] = layernorm_backward(demb_ln, c_eln)  # (B, T, H)
    # forward: emb = word[ids] + pos[:T] + type[type_ids]
    g["emb.word"], g["emb.pos"], g["emb.type"] = embedding_backward(demb, c_emb)
    _ready(on_ready, g, ["emb.ln.w", "emb.ln.b", "emb.pos", "emb.type"])
    return g


def _ready(on_ready, g, names):
    """Hand the final gradients `names` of g to on_ready (None: nobody is listening)."""
    if on_ready is not None:
        on_ready({k: g[k] for k in names})


def to_device_batch(b):
    xp = backend.xp
    return {k: xp.asarray(v) for k, v in b.items()}


# ----------------------------------------------------------------------------------------
# what both BERT models share


class BertBase:
    """The scaffolding of a BERT model: config, checked params, the dropout stream, and
    loss_and_grads / predict on top of a subclass's forward and backward.

    A subclass passes its params (drawn or given) and their expected shapes, and defines
    forward(batch, train, rng) -> (out, cache) and backward(cache) -> grads.
    """

    def __init__(self, config, params, shapes, seed=0):
        self.config = config
        self.seed = seed
        self.params = params
        check_params(self.params, shapes, config.dtype)
        self._dropout_calls = 0  # forwards that drew masks from the model's own stream

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def dropout_rng(self, train, rng=None):
        """The random stream of a forward's dropout masks: None when there is no dropout
        (evaluation or zero rates), rng when given, else the model's own: backend.rng keyed
        by (seed, number of such forwards so far), one counter-based stream per sequence."""
        c = self.config
        if not train or (c.dropout == 0.0 and c.attention_dropout == 0.0):
            return None
        if rng is None:
            self._dropout_calls += 1
            rng = backend.rng((self.seed, self._dropout_calls))
        return rng

    def loss_and_grads(self, batch, train=True, rng=None):
        """(loss as a Python float, grads dict) for a labelled batch; see forward."""
        out, cache = self.forward(batch, train=train, rng=rng)
        if "loss" not in out:
            raise ValueError("loss_and_grads needs batch['labels']")
        return float(out["loss"]), self.backward(cache)

    def predict(self, batch):
        """Evaluation-mode forward (no dropout); the same `out` dict as forward."""
        return self.forward(batch, train=False)[0]


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
        (seq, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng)
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

    def backward(self, cache, on_ready=None):
        """Gradients of out["loss"] w.r.t. every param: a dict with params' keys and shapes.
        on_ready: called with each group of gradients once final (see encoder_backward)."""
        p = self.params
        g = {}
        # forward: loss = mlm_loss + nsp_loss, so each receives gradient 1
        (dnsp_logits,) = cross_entropy_backward(1.0, cache.c_nsp_ce)  # (B, 2)
        dpooled, g["nsp.w"], g["nsp.b"] = linear_backward(dnsp_logits, cache.c_nsp)  # (B, H)
        _ready(on_ready, g, ["nsp.w", "nsp.b"])
        (dmlm_logits,) = cross_entropy_backward(1.0, cache.c_mlm_ce)  # (P, V)
        dseq, g_mlm, dword_decoder = mlm_head_backward(dmlm_logits, cache.c_mlm, p["emb.word"])  # (B, T, H)
        g.update(g_mlm)
        _ready(on_ready, g, list(g_mlm))
        g.update(encoder_backward(dseq, dpooled, cache.c_enc, on_ready))
        # the tied word embedding: input lookup + MLM decoder, summed here and only here
        g["emb.word"] += dword_decoder
        _ready(on_ready, g, ["emb.word"])
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
        (seq, _), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng)
        mlm_logits, c_mlm = mlm_head_forward(p, c, seq, db["pos"])  # (P, V)
        mlm_loss, c_mlm_ce = cross_entropy_forward(mlm_logits, db["mlm_labels"], (global_counts or (None,))[0])
        mlm_preds = mlm_logits.argmax(axis=1)  # (P,)
        out = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_logits": mlm_logits, "mlm_preds": mlm_preds,
               "mlm_labels": db["mlm_labels"], "mlm_positions": db["pos"],
               "mlm_correct": (mlm_preds == db["mlm_labels"]).sum(), "mlm_count": len(pos)}
        return out, MaskedLMCache(c_enc, c_mlm, c_mlm_ce)

    def backward(self, cache, on_ready=None):
        """Gradients of out["loss"] w.r.t. every param: a dict with params' keys and shapes.
        on_ready: called with each group of gradients once final (see encoder_backward)."""
        p = self.params
        # forward: loss = mlm_loss
        (dmlm_logits,) = cross_entropy_backward(1.0, cache.c_mlm_ce)  # (P, V)
        dseq, g, dword_decoder = mlm_head_backward(dmlm_logits, cache.c_mlm, p["emb.word"])  # (B, T, H)
        _ready(on_ready, g, list(g))
        g.update(encoder_backward(dseq, None, cache.c_enc, on_ready))
        # the tied word embedding: input lookup + MLM decoder, summed here and only here
        g["emb.word"] += dword_decoder
        _ready(on_ready, g, ["emb.word"])
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
        (seq, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng)
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
