"""BERT for pretraining (MLM + NSP): config, parameters, forward and hand-written backward.

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

Parameters live in `model.params`, a flat dict name -> array; gradients come back as a
dict with the same keys and shapes. The word embedding is used twice (input lookup and MLM
decoder); its gradient is the sum of both contributions, added in `pretraining_backward`.
"""
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np  # host side only: input validation and seeded initialisation

from minibert import backend
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


def encoder_param_shapes(c):
    """name -> shape for the embeddings, the encoder layers and the pooler."""
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
    shapes.update({"pool.w": (H, H), "pool.b": (H,)})
    return shapes


def pretraining_param_shapes(c):
    H = c.hidden_size
    shapes = encoder_param_shapes(c)
    shapes.update({"mlm.w": (H, H), "mlm.b": (H,), "mlm.ln.w": (H,), "mlm.ln.b": (H,),
                   "mlm.bias": (c.vocab_size,), "nsp.w": (H, 2), "nsp.b": (2,)})
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


def validate_batch(batch, c, require_labels=True):
    """Raise ValueError naming the problem; return the batch as host NumPy arrays."""
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
        out["labels"], out["next_sentence_label"] = get("labels"), get("next_sentence_label")
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
        nsp = out["next_sentence_label"]
        if nsp.shape != (B,):
            raise ValueError(f"batch['next_sentence_label'] has shape {nsp.shape}, expected {(B,)}")
        if not np.isin(nsp, (0, 1)).all():
            raise ValueError("next_sentence_label must be 0 (B follows A) or 1 (random B)")
    return out


# ----------------------------------------------------------------------------------------
# the encoder shared by every BERT model: embeddings -> layers -> pooler


class EncoderCache(NamedTuple):
    """Each stage's cache, in forward order: what encoder_backward needs."""
    c_emb: tuple  # embedding lookup
    c_eln: tuple  # embedding LayerNorm
    c_edrop: object  # embedding dropout
    c_layers: list  # one EncoderLayerCache per layer
    c_pool: tuple  # pooler


def encoder_forward(params, c, input_ids, token_type_ids, attention_mask, rng=None):
    """Device arrays in; returns (sequence_output (B, T, H), pooled (B, H)), cache.

    rng None means no dropout (evaluation)."""
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
    pooled, c_pool = pooler_forward(x, params["pool.w"], params["pool.b"])  # (B, H)
    return (x, pooled), EncoderCache(c_emb, c_eln, c_edrop, c_layers, c_pool)


def encoder_backward(dseq, dpooled, cache):
    """Gradients of the encoder params from d(sequence_output) (or None) and d(pooled)."""
    c_emb, c_eln, c_edrop, c_layers, c_pool = cache  # see EncoderCache
    g = {}
    # forward: pooled = pooler(x); x also flows to the sequence output
    dx, g["pool.w"], g["pool.b"] = pooler_backward(dpooled, c_pool)  # (B, T, H)
    if dseq is not None:
        dx += dseq
    for l in reversed(range(len(c_layers))):
        # forward: x = encoder_layer(x); dx is the gradient of the hidden state
        dx, gl = encoder_layer_backward(dx, c_layers[l])  # (B, T, H)
        g.update({f"layers.{l}.{k}": v for k, v in gl.items()})
    # forward: x = dropout(emb_ln)
    (demb_ln,) = dropout_backward(dx, c_edrop)  # (B, T, H)
    # forward: emb_ln = LN(emb)
    demb, g["emb.ln.w"], g["emb.ln.b"] = layernorm_backward(demb_ln, c_eln)  # (B, T, H)
    # forward: emb = word[ids] + pos[:T] + type[type_ids]
    g["emb.word"], g["emb.pos"], g["emb.type"] = embedding_backward(demb, c_emb)
    return g


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
        """The Generator for a forward's dropout masks: None when there is no dropout
        (evaluation or zero rates), rng when given, else the model's own stream: a fresh
        Generator from (seed, number of such forwards so far)."""
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
# BERT for pretraining


class PretrainingCache(NamedTuple):
    """What BertForPreTraining.backward needs, in forward order."""
    c_enc: EncoderCache
    seq_shape: tuple  # (B, T, H)
    pos: object  # (P,) flat indices of the labelled positions
    mlm_hidden: object  # (P, H) the decoder's input, for the tied word embedding's gradient
    c_mlm_fc: tuple
    c_mlm_act: tuple
    c_mlm_ln: tuple
    c_mlm_ce: tuple
    c_nsp: tuple
    c_nsp_ce: tuple


class BertForPreTraining(BertBase):
    """BERT with the MLM and NSP heads. `params` is a dict name -> array on the backend."""

    def __init__(self, config, seed=0, params=None):
        shapes = pretraining_param_shapes(config)
        super().__init__(config, init_params(shapes, config, seed) if params is None else params, shapes, seed)

    def forward(self, batch, train=True, rng=None):
        """Loss, logits and accuracies for a batch, and the cache for `backward`.

        batch: dict of host arrays with Hugging Face's keys (see validate_batch).
        train: dropout on (as the config says) when True; rng: the backend Generator that
        draws the dropout masks (None: a fresh stream from the model's seed).
        Returns (out, cache); out holds device scalars/arrays: loss, mlm_loss, nsp_loss,
        mlm_logits (P, V), nsp_logits (B, 2), mlm_preds, mlm_labels, nsp_preds,
        mlm_correct, mlm_count, nsp_correct, nsp_count.
        """
        c, p = self.config, self.params
        hb = validate_batch(batch, c)
        # gather the labelled positions on the host: most positions carry no label
        labels = hb["labels"].reshape(-1)  # (N,)
        pos = np.flatnonzero(labels != IGNORE_INDEX)  # (P,)
        db = to_device_batch({"input_ids": hb["input_ids"], "token_type_ids": hb["token_type_ids"],
                              "attention_mask": hb["attention_mask"], "pos": pos, "mlm_labels": labels[pos],
                              "nsp_labels": hb["next_sentence_label"]})
        rng = self.dropout_rng(train, rng)
        (seq, pooled), c_enc = encoder_forward(p, c, db["input_ids"], db["token_type_ids"], db["attention_mask"], rng)
        B, T, H = seq.shape

        # MLM head, only at the P labelled positions:
        # mlm_hidden = LN(gelu(seq_mlm @ mlm.w + mlm.b)), logits = mlm_hidden @ word^T + bias
        seq_mlm = seq.reshape(B * T, H)[db["pos"]]  # (P, H)
        mlm_fc, c_mlm_fc = linear_forward(seq_mlm, p["mlm.w"], p["mlm.b"])  # (P, H)
        mlm_act, c_mlm_act = gelu_forward(mlm_fc, gelu_approximation(c.hidden_act))  # (P, H)
        mlm_hidden, c_mlm_ln = layernorm_forward(mlm_act, p["mlm.ln.w"], p["mlm.ln.b"], c.layer_norm_eps)  # (P, H)
        # decoder tied to the input word embeddings
        mlm_logits = mlm_hidden @ p["emb.word"].T + p["mlm.bias"]  # (P, V)
        mlm_loss, c_mlm_ce = cross_entropy_forward(mlm_logits, db["mlm_labels"])

        # NSP head on the pooled [CLS]
        nsp_logits, c_nsp = linear_forward(pooled, p["nsp.w"], p["nsp.b"])  # (B, 2)
        nsp_loss, c_nsp_ce = cross_entropy_forward(nsp_logits, db["nsp_labels"])

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
        cache = PretrainingCache(c_enc, (B, T, H), db["pos"], mlm_hidden, c_mlm_fc, c_mlm_act, c_mlm_ln, c_mlm_ce,
                                 c_nsp, c_nsp_ce)
        return out, cache

    def backward(self, cache):
        """Gradients of out["loss"] w.r.t. every param: a dict with params' keys and shapes."""
        xp = backend.xp
        p = self.params
        (B, T, H), pos, mlm_hidden = cache.seq_shape, cache.pos, cache.mlm_hidden
        g = {}
        # forward: loss = mlm_loss + nsp_loss, so each receives gradient 1
        (dnsp_logits,) = cross_entropy_backward(1.0, cache.c_nsp_ce)  # (B, 2)
        dpooled, g["nsp.w"], g["nsp.b"] = linear_backward(dnsp_logits, cache.c_nsp)  # (B, H)
        (dmlm_logits,) = cross_entropy_backward(1.0, cache.c_mlm_ce)  # (P, V)
        # forward: mlm_logits = mlm_hidden @ word^T + bias, so dmlm_hidden = dlogits @ word,
        # dword (decoder part) = dlogits^T @ mlm_hidden, dbias = sum over positions
        dmlm_hidden = dmlm_logits @ p["emb.word"]  # (P, H)
        dword_decoder = dmlm_logits.T @ mlm_hidden  # (V, H)
        g["mlm.bias"] = dmlm_logits.sum(axis=0)  # (V,)
        # forward: mlm_hidden = LN(mlm_act)
        dmlm_act, g["mlm.ln.w"], g["mlm.ln.b"] = layernorm_backward(dmlm_hidden, cache.c_mlm_ln)  # (P, H)
        # forward: mlm_act = gelu(mlm_fc)
        (dmlm_fc,) = gelu_backward(dmlm_act, cache.c_mlm_act)  # (P, H)
        # forward: mlm_fc = seq_mlm @ mlm.w + mlm.b
        dseq_mlm, g["mlm.w"], g["mlm.b"] = linear_backward(dmlm_fc, cache.c_mlm_fc)  # (P, H)
        # forward: seq_mlm = seq.reshape(N, H)[pos]; positions are distinct, so assignment routes it
        dseq = xp.zeros((B * T, H), dtype=dseq_mlm.dtype)  # (N, H)
        dseq[pos] = dseq_mlm
        g.update(encoder_backward(dseq.reshape(B, T, H), dpooled, cache.c_enc))
        # the tied word embedding: input lookup + MLM decoder, summed here and only here
        g["emb.word"] += dword_decoder
        check_grads(p, g)
        return g
