"""The BERT encoder every model shares: its parameters, its forward and hand-written
backward, and the scaffolding of a model (BertBase) that the task models build on.

Data flow, with the shape letters of minibert/layers.py (B batch, T tokens, H hidden):

    input_ids, token_type_ids (B, T)
      -> embeddings: word + position + token type, LayerNorm, dropout     (B, T, H)
      -> L post-LN encoder layers (self-attention, feed-forward)          (B, T, H)
         or, config.norm "pre": L pre-LN layers, then a final LayerNorm   (B, T, H)
      -> pooler: tanh(dense(h[:, 0]))                                     (B, H)

This is BERT's encoder (Devlin et al. 2019, section 3: the Transformer encoder of Vaswani
et al. 2017 with learned positions and token types), as in transformers' BertModel.
The pre-LN variant (Xiong et al. 2020: layer norm inside each residual branch, one more
after the last layer, "final_ln.*") has no transformers class.
The models on top of it, each with its heads, are in model.py (BertForPreTraining,
BertForMaskedLM, BertModel), classifier.py (BertForSequenceClassification),
token_classifier.py, question_answering.py and multiple_choice.py.

Parameters live in a flat dict name -> array; gradients come back as a dict with the same
keys and shapes. The word embedding's gradient from the input lookup is returned here; a
model with a tied MLM decoder adds the decoder's part in its backward.
"""
from typing import NamedTuple

import numpy as np  # host side only: seeded initialisation and parameter checks

from minibert import backend, philox
from minibert.layers import (
    ENCODER_LAYER_PARAMS, ENCODER_LAYERS, MASK_VALUE, dropout_backward, dropout_forward, embedding_backward,
    embedding_forward, layernorm_backward, layernorm_forward, pooler_backward, pooler_forward,
)


# ----------------------------------------------------------------------------------------
# parameters


def encoder_param_shapes(c, pooler=True):
    """name -> shape for the embeddings, the encoder layers, the final layer norm of a
    pre-LN encoder (c.norm "pre" only) and (pooler=True) the pooler."""
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
    if c.norm == "pre":  # a post-LN model has no such params: its names and draws are BERT's
        shapes.update({"final_ln.w": (H,), "final_ln.b": (H,)})
    if pooler:
        shapes.update({"pool.w": (H, H), "pool.b": (H,)})
    return shapes

def init_params(shapes, c, seed):
    """BERT's initialisation: weights ~ N(0, initializer_range), biases 0, LayerNorm w 1.

    Drawn on the host with NumPy so that a seed gives the same model on every backend.
    A LayerNorm is named ln*.w / ln*.b or *_ln.w / *_ln.b (final_ln); it draws nothing, so
    adding one (a pre-LN encoder's final_ln) leaves every other param's draw as it was.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        part = name.split(".")[-2]
        if part.startswith("ln") or part.endswith("_ln"):
            a = np.ones(shape) if leaf == "w" else np.zeros(shape)  # LayerNorm weight / bias
        elif len(shape) == 1:
            a = np.zeros(shape)  # biases
        else:
            a = rng.normal(0.0, c.initializer_range, size=shape)
        params[name] = backend.to_device(a, dtype=c.dtype)
    return params


def with_pooler(c, encoder_params, seed):
    """A new dict of the encoder params with a pooler: the given one, or (an encoder read
    from a BertForMaskedLM has none) a fresh one, N(0, initializer_range) from the stream
    [seed, 2], as transformers draws a missing pooler. Checked against the config."""
    params = dict(encoder_params)
    if "pool.w" not in params:
        H = c.hidden_size
        params.update(init_params({"pool.w": (H, H), "pool.b": (H,)}, c, [int(seed), 2]))
    check_params(params, encoder_param_shapes(c), c.dtype)
    return params


def without_pooler(c, encoder_params):
    """A new dict of the encoder params less any pooler (a head on the sequence output has
    no use for it; transformers drops it too), checked against the config."""
    params = {k: v for k, v in encoder_params.items() if not k.startswith("pool.")}
    check_params(params, encoder_param_shapes(c, pooler=False), c.dtype)
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
# the encoder shared by every BERT model: embeddings -> layers -> pooler


class EncoderCache(NamedTuple):
    """Each stage's cache, in forward order: what encoder_backward needs."""
    c_emb: tuple  # embedding lookup
    c_eln: tuple  # embedding LayerNorm
    c_edrop: object  # embedding dropout
    c_layers: list  # one layer cache per layer; c_layers[l].c_attn.probs holds layer l's attention
    c_final: tuple  # the final LayerNorm of a pre-LN encoder (None for post-LN)
    c_pool: tuple  # pooler (None for a model without one)
    norm: str  # config.norm: which layer backward (layers.ENCODER_LAYERS) undoes c_layers


class KeptInput(NamedTuple):
    """What a recomputed layer keeps instead of its cache (encoder_forward(recompute=True)):
    its input and what its forward needs to run again, bit for bit, in encoder_backward."""
    x: object  # (B, T, H) the layer's input
    attn_bias: object  # (B, 1, 1, T) the padding bias every layer adds
    p: dict  # the layer's params (references, not copies)
    args: tuple  # num_heads, eps, hidden_act, dropout, attention_dropout
    rng: object  # a fork of the dropout stream at the layer's first draw (None: no dropout)


def encoder_forward(params, c, input_ids, token_type_ids, attention_mask, rng=None, recompute=False):
    """Device arrays in; returns (sequence_output (B, T, H), pooled (B, H)), cache.

    recompute=True (activation recomputation, Chen et al. 2016) keeps each layer's input
    (a KeptInput) instead of its cache, and encoder_backward runs the layer's forward again
    just before its backward: a layer's cache holds the (B, A, T, T) attention probabilities
    and the (B, T, I) feed-forward activations, the largest arrays of a step, so only one
    layer's cache is alive at a time, for one more forward per layer. The forward is
    deterministic and dropout is keyed by the draw number (philox.SequenceStreams), so a
    fork of the stream at the layer's first draw redraws its masks: the gradients are bit
    for bit those of recompute=False.

    rng None means no dropout (evaluation). Without "pool.w" in params (BertForMaskedLM)
    there is no pooler and pooled is None. c.norm picks the layer (layers.ENCODER_LAYERS);
    "pre" adds the final LayerNorm, whose output is the sequence output and the pooler's input."""
    dtype = params["emb.word"].dtype
    B, T = input_ids.shape
    # padded keys get MASK_VALUE added to their scores in every head and every query row
    attn_bias = ((1.0 - attention_mask.astype(dtype)) * MASK_VALUE).reshape(B, 1, 1, T)  # (B, 1, 1, T)
    emb, c_emb = embedding_forward(input_ids, token_type_ids, params["emb.word"], params["emb.pos"],
                                   params["emb.type"])  # (B, T, H)
    emb_ln, c_eln = layernorm_forward(emb, params["emb.ln.w"], params["emb.ln.b"], c.layer_norm_eps)  # (B, T, H)
    x, c_edrop = dropout_forward(emb_ln, c.dropout, rng)  # (B, T, H) the input of layer 0
    layer_forward = ENCODER_LAYERS[c.norm][0]
    c_layers = []
    for l in range(c.num_layers):
        p = {k: params[f"layers.{l}.{k}"] for k in ENCODER_LAYER_PARAMS}
        args = (c.num_heads, c.layer_norm_eps, c.hidden_act, c.dropout, c.attention_dropout)
        kept = KeptInput(x, attn_bias, p, args, rng_at(rng)) if recompute else None
        # x is the hidden state, layer l's input before and its output after
        x, cl = layer_forward(x, attn_bias, p, *args, rng)  # (B, T, H)
        c_layers.append(cl if kept is None else kept)
        # recompute: the cache dies here, not when the next layer's forward returns (the name
        # would keep it alive through that forward: two layers' caches at the forward's peak)
        del cl
    c_final = None
    if c.norm == "pre":
        # a pre-LN stack's output is a residual sum that no layer norm has touched (its scale
        # grows with depth): normalise it once, so the pooler and heads see what post-LN gives them
        x, c_final = layernorm_forward(x, params["final_ln.w"], params["final_ln.b"], c.layer_norm_eps)  # (B, T, H)
    pooled, c_pool = None, None
    if "pool.w" in params:
        pooled, c_pool = pooler_forward(x, params["pool.w"], params["pool.b"])  # (B, H)
    return (x, pooled), EncoderCache(c_emb, c_eln, c_edrop, c_layers, c_final, c_pool, c.norm)


def encoder_backward(dseq, dpooled, cache, on_ready=None):
    """Gradients of the encoder params from d(sequence_output) and d(pooled); either may be
    None (no gradient arrives there), not both. A model without a pooler passes dpooled None.

    on_ready(grads), when given, is called with each group of gradients as soon as it is
    final (the pooler, a pre-LN encoder's final LayerNorm, then each layer from the top
    down, then the embedding LayerNorm and the position and type tables), so a caller can
    start summing them over processes while the backward continues below (distributed.py).
    The word embedding is left to the model, which adds the MLM decoder's part first."""
    c_emb, c_eln, c_edrop, c_layers, c_final, c_pool, norm = cache  # see EncoderCache
    g = {}
    if dpooled is not None:
        # forward: pooled = pooler(x); x also flows to the sequence output
        dx, g["pool.w"], g["pool.b"] = pooler_backward(dpooled, c_pool)  # (B, T, H)
        report_ready(on_ready, g, ["pool.w", "pool.b"])
        if dseq is not None:
            dx += dseq
    else:
        dx = dseq  # (B, T, H) never written into: each backward returns fresh arrays
    if c_final is not None:
        # forward: x = final_LN(x), the last layer's output normalised (pre-LN only)
        dx, g["final_ln.w"], g["final_ln.b"] = layernorm_backward(dx, c_final)  # (B, T, H)
        report_ready(on_ready, g, ["final_ln.w", "final_ln.b"])
    layer_forward, layer_backward = ENCODER_LAYERS[norm]
    for l in reversed(range(len(c_layers))):
        cl = c_layers[l]
        if isinstance(cl, KeptInput):
            # recompute: layer l's forward again from its kept input, the same masks redrawn
            # from a fresh fork (the kept one stays unread, so a second backward still works);
            # its cache lives only until the backward below returns
            cl = layer_forward(cl.x, cl.attn_bias, cl.p, *cl.args, rng_at(cl.rng))[1]  # its output is not needed
        # forward: x = encoder_layer(x); dx is the gradient of the hidden state
        dx, gl = layer_backward(dx, cl)  # (B, T, H)
        del cl
        g.update({f"layers.{l}.{k}": v for k, v in gl.items()})
        report_ready(on_ready, g, [f"layers.{l}.{k}" for k in gl])
    # forward: x = dropout(emb_ln)
    (demb_ln,) = dropout_backward(dx, c_edrop)  # (B, T, H)
    # forward: emb_ln = LN(emb)
    demb, g["emb.ln.w"], g["emb.ln.b"] = layernorm_backward(demb_ln, c_eln)  # (B, T, H)
    # forward: emb = word[ids] + pos[:T] + type[type_ids]
    g["emb.word"], g["emb.pos"], g["emb.type"] = embedding_backward(demb, c_emb)
    report_ready(on_ready, g, ["emb.ln.w", "emb.ln.b", "emb.pos", "emb.type"])
    return g


def rng_at(rng):
    """A fork of the dropout stream at its next draw (None stays None: no dropout). Only a
    counter-based stream can redraw its masks, so recomputation refuses any other."""
    if rng is None:
        return None
    if not isinstance(rng, philox.SequenceStreams):
        raise TypeError(f"recompute needs a philox.SequenceStreams dropout stream to redraw the masks, got {type(rng)}")
    return rng.fork()


def report_ready(on_ready, g, names):
    """Hand the final gradients `names` of g to on_ready (None: nobody is listening)."""
    if on_ready is not None:
        on_ready({k: g[k] for k in names})


def to_device_batch(b):
    xp = backend.xp
    return {k: xp.asarray(v) for k, v in b.items()}


# ----------------------------------------------------------------------------------------
# what every BERT model shares


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
        # True: each forward keeps only the encoder layers' inputs and the backward reruns
        # them (encoder_forward's recompute): less memory, one more forward, the same grads
        self.recompute = False

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def dropout_rng(self, train, rng=None):
        """The random stream of a forward's dropout masks: None when there is no dropout
        (evaluation or zero rates), rng when given, else the model's own: philox.rng keyed
        by (seed, number of such forwards so far), one counter-based stream per sequence."""
        c = self.config
        if not train or (c.dropout == 0.0 and c.attention_dropout == 0.0):
            return None
        if rng is None:
            self._dropout_calls += 1
            rng = philox.rng((self.seed, self._dropout_calls))
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
