"""Hugging Face interop: read and write `transformers` BERT checkpoints, no torch needed.

A checkpoint directory holds config.json and model.safetensors, as written by
`transformers.BertForPreTraining.save_pretrained` (or `BertModel.save_pretrained` for the
encoder alone). Tensors are read and written with safetensors.numpy; nothing is unpickled.

Parameter mapping, minibert name -> Hugging Face name (l is the layer index, and the HF
encoder layer prefix is bert.encoder.layer.{l}). minibert's linear weights are (in, out),
used as x @ w; torch's nn.Linear weights are (out, in), used as x @ W^T: every linear
weight (marked T) is transposed on the way across. Embedding tables are (rows, H) on both.

    emb.word  (V, H)           bert.embeddings.word_embeddings.weight
    emb.pos   (max_position, H) bert.embeddings.position_embeddings.weight
    emb.type  (type_vocab, H)  bert.embeddings.token_type_embeddings.weight
    emb.ln.w / emb.ln.b        bert.embeddings.LayerNorm.weight / .bias
    layers.l.attn.w_qkv (H, 3H)  [query.weight^T | key.weight^T | value.weight^T]   (T, fused)
    layers.l.attn.b_qkv (3H,)    [query.bias | key.bias | value.bias]   under attention.self.
    layers.l.attn.w_o, b_o     attention.output.dense.weight (T), .bias
    layers.l.ln1.w, ln1.b      attention.output.LayerNorm.weight, .bias
    layers.l.ffn.w_fc, b_fc    intermediate.dense.weight (T), .bias
    layers.l.ffn.w_proj, b_proj  output.dense.weight (T), .bias
    layers.l.ln2.w, ln2.b      output.LayerNorm.weight, .bias
    pool.w, pool.b             bert.pooler.dense.weight (T), .bias
    mlm.w, mlm.b               cls.predictions.transform.dense.weight (T), .bias
    mlm.ln.w, mlm.ln.b         cls.predictions.transform.LayerNorm.weight, .bias
    mlm.bias  (V,)             cls.predictions.bias
    nsp.w (H, 2), nsp.b        cls.seq_relationship.weight (T), .bias

The MLM decoder is tied: HF's cls.predictions.decoder.weight *is* the word embedding and
cls.predictions.decoder.bias *is* cls.predictions.bias. transformers 5.x leaves both out
of the files it saves and re-ties them on load, so `save_hf` writes neither. Older
checkpoints may carry them; `load_hf` accepts them when they equal what they are tied to
and refuses an untied decoder, which minibert cannot represent.

Also read: the legacy LayerNorm.gamma / LayerNorm.beta names (TF-converted checkpoints),
encoder keys without the "bert." prefix (a BertModel directory), and sharded checkpoints
(model.safetensors.index.json). A config minibert cannot run (a decoder, relative
positions, an activation other than exact or tanh GELU) raises ValueError, as does a
missing, unexpected or misshapen weight.

The config fields map one to one: num_hidden_layers <-> num_layers, num_attention_heads
<-> num_heads, max_position_embeddings <-> max_position, hidden_dropout_prob <-> dropout,
attention_probs_dropout_prob <-> attention_dropout; hidden_act "gelu" is exact on both
sides, HF's "gelu_new" and "gelu_pytorch_tanh" are minibert's "gelu_tanh".

Not mapped, because minibert has no equivalent: HF's `pad_token_id` makes the word
embedding row of the pad token receive no gradient from the input lookup (nn.Embedding's
padding_idx); minibert treats every row alike.
"""
import json
import os

import numpy as np  # host side only: checkpoints are host arrays
import safetensors.numpy

from minibert import backend
from minibert.atomic import atomic_write
from minibert.model import BertConfig, BertForPreTraining, encoder_param_shapes, pretraining_param_shapes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# HF hidden_act -> minibert hidden_act. HF's gelu_python is the same exact erf GELU.
_ACT_FROM_HF = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# minibert hidden_act -> HF hidden_act (HF's own names pass through unchanged)
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_pytorch_tanh"}

# HF config field -> minibert config field, and the HF default used when config.json omits it
# (transformers fills the same defaults, so an omitted field means the same on both sides)
_CONFIG_FIELDS = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "max_position_embeddings": ("max_position", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "hidden_dropout_prob": ("dropout", 0.1),
    "attention_probs_dropout_prob": ("attention_dropout", 0.1),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "initializer_range": ("initializer_range", 0.02),
}

# tensors in HF files that hold no parameter: buffers older transformers versions saved
_IGNORED_KEYS = ("bert.embeddings.position_ids",)
_DECODER_W, _DECODER_B = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
_WORD, _MLM_BIAS = "bert.embeddings.word_embeddings.weight", "cls.predictions.bias"


# ----------------------------------------------------------------------------------------
# the name map


def _name_map(num_layers, heads=True):
    """minibert name -> (HF name or a list of three fused HF names, transpose?)."""
    m = {
        "emb.word": (_WORD, False),
        "emb.pos": ("bert.embeddings.position_embeddings.weight", False),
        "emb.type": ("bert.embeddings.token_type_embeddings.weight", False),
        "emb.ln.w": ("bert.embeddings.LayerNorm.weight", False),
        "emb.ln.b": ("bert.embeddings.LayerNorm.bias", False),
    }
    for l in range(num_layers):
        hf = f"bert.encoder.layer.{l}."
        qkv = [f"{hf}attention.self.{n}" for n in ("query", "key", "value")]
        m.update({
            f"layers.{l}.attn.w_qkv": ([q + ".weight" for q in qkv], True),
            f"layers.{l}.attn.b_qkv": ([q + ".bias" for q in qkv], False),
            f"layers.{l}.attn.w_o": (hf + "attention.output.dense.weight", True),
            f"layers.{l}.attn.b_o": (hf + "attention.output.dense.bias", False),
            f"layers.{l}.ln1.w": (hf + "attention.output.LayerNorm.weight", False),
            f"layers.{l}.ln1.b": (hf + "attention.output.LayerNorm.bias", False),
            f"layers.{l}.ffn.w_fc": (hf + "intermediate.dense.weight", True),
            f"layers.{l}.ffn.b_fc": (hf + "intermediate.dense.bias", False),
            f"layers.{l}.ffn.w_proj": (hf + "output.dense.weight", True),
            f"layers.{l}.ffn.b_proj": (hf + "output.dense.bias", False),
            f"layers.{l}.ln2.w": (hf + "output.LayerNorm.weight", False),
            f"layers.{l}.ln2.b": (hf + "output.LayerNorm.bias", False),
        })
    m.update({"pool.w": ("bert.pooler.dense.weight", True), "pool.b": ("bert.pooler.dense.bias", False)})
    if heads:
        m.update({
            "mlm.w": ("cls.predictions.transform.dense.weight", True),
            "mlm.b": ("cls.predictions.transform.dense.bias", False),
            "mlm.ln.w": ("cls.predictions.transform.LayerNorm.weight", False),
            "mlm.ln.b": ("cls.predictions.transform.LayerNorm.bias", False),
            "mlm.bias": (_MLM_BIAS, False),
            "nsp.w": ("cls.seq_relationship.weight", True),
            "nsp.b": ("cls.seq_relationship.bias", False),
        })
    return m


def _hf_names(hf):
    return hf if isinstance(hf, list) else [hf]


# ----------------------------------------------------------------------------------------
# state dicts


def to_hf_state_dict(model, tensors=None):
    """HF name -> host NumPy array in HF layout, for model.params or any dict keyed like
    them (grads, optimizer moments). The arrays are fresh copies. Keys absent from `tensors` are absent from the result;
    a key minibert does not know raises ValueError."""
    tensors = model.params if tensors is None else tensors
    names = _name_map(model.config.num_layers)
    out = {}
    for k, a in tensors.items():
        if k not in names:
            raise ValueError(f"no Hugging Face name for minibert tensor {k!r}")
        hf, transpose = names[k]
        a = np.asarray(backend.to_host(a))
        if isinstance(hf, list):  # fused q, k, v: split the output axis into three
            parts = np.split(a, 3, axis=-1)  # (H, H) or (H,) each
            for name, part in zip(hf, parts):
                out[name] = np.array(part.T if transpose else part, order="C")  # a copy, never a view
        else:
            out[hf] = np.array(a.T if transpose else a, order="C")
    return out


def _canonical_state(state):
    """Normalise HF key spellings: legacy gamma/beta, a missing "bert." prefix, old buffers,
    and tied decoder copies (checked against what they are tied to, then dropped)."""
    out = {}
    for k, a in state.items():
        name = k
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        if name.startswith(("embeddings.", "encoder.", "pooler.")):  # a bare BertModel
            name = "bert." + name
        if name in _IGNORED_KEYS:
            continue
        if name in out:
            raise ValueError(f"checkpoint holds {name!r} twice (as {k!r} and under another spelling)")
        out[name] = a
    if _DECODER_B in out:
        b = out.pop(_DECODER_B)
        if _MLM_BIAS not in out:  # some checkpoints keep only the decoder's copy
            out[_MLM_BIAS] = b
        elif not np.array_equal(b, out[_MLM_BIAS]):
            raise ValueError(f"{_DECODER_B} differs from {_MLM_BIAS}: minibert ties them and cannot load an untied bias")
    if _DECODER_W in out:
        w = out.pop(_DECODER_W)
        if _WORD in out and not np.array_equal(w, out[_WORD]):
            raise ValueError(f"{_DECODER_W} differs from {_WORD}: minibert ties the MLM decoder to the "
                             "word embeddings and cannot load an untied decoder")
    return out


def from_hf_state_dict(state, config, heads=True):
    """minibert params (device arrays of config.dtype) from an HF state dict (name -> array).

    heads=True: a BertForPreTraining state; every key must be used. heads=False: the
    encoder params only (emb.*, layers.*, pool.*); keys outside "bert." (any task head)
    are ignored, unknown keys inside it still raise. Raises ValueError naming missing,
    unexpected or misshapen weights."""
    state = _canonical_state({k: np.asarray(backend.to_host(v)) for k, v in state.items()})
    names = _name_map(config.num_layers, heads)
    shapes = pretraining_param_shapes(config) if heads else encoder_param_shapes(config)
    assert names.keys() == shapes.keys()

    wanted = [n for hf, _ in names.values() for n in _hf_names(hf)]
    # without heads, whatever sits outside "bert." (a task head) is not ours to check
    given = state if heads else [n for n in state if n.startswith("bert.")]
    backend.check_keys(given, wanted, "checkpoint weights do not match minibert's BERT")

    params = {}
    for k, (hf, transpose) in names.items():
        shape = shapes[k]
        if isinstance(hf, list):  # fused q, k, v: each HF tensor is a third of the output axis
            part_shape = shape[:-1] + (shape[-1] // 3,)
            want = part_shape[::-1] if transpose else part_shape
            parts = []
            for n in hf:
                _check_shape(n, state[n], want)
                parts.append(state[n].T if transpose else state[n])
            a = np.concatenate(parts, axis=-1)  # (H, 3H) or (3H,)
        else:
            want = shape[::-1] if transpose else shape
            _check_shape(hf, state[hf], want)
            a = state[hf].T if transpose else state[hf]
        if a.dtype.kind != "f":
            raise ValueError(f"weight for {k!r} has dtype {a.dtype}, expected floating point")
        # a copy: params must not alias the caller's arrays (e.g. torch tensors' memory)
        params[k] = backend.to_device(np.array(a, dtype=config.dtype, order="C"))
    return params


def _check_shape(name, a, want):
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"weight {name!r} has shape {tuple(a.shape)}, the config expects {tuple(want)}")


# ----------------------------------------------------------------------------------------
# configs


def config_from_hf(d, dtype="float32"):
    """A minibert BertConfig from an HF config dict; ValueError where minibert cannot follow."""
    if d.get("model_type", "bert") != "bert":
        raise ValueError(f"model_type {d['model_type']!r} is not 'bert'")
    pet = d.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise ValueError(f"position_embedding_type {pet!r} is not supported: minibert has absolute positions only")
    for flag in ("is_decoder", "add_cross_attention"):
        if d.get(flag, False):
            raise ValueError(f"{flag}=True is not supported: minibert is a bidirectional encoder")
    act = d.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACT_FROM_HF:
        raise ValueError(f"hidden_act {act!r} is not supported: minibert has {sorted(_ACT_FROM_HF)}")
    kw = {mb: d.get(hf, default) for hf, (mb, default) in _CONFIG_FIELDS.items()}
    for f in ("dropout", "attention_dropout", "layer_norm_eps", "initializer_range"):
        kw[f] = float(kw[f])
    try:
        return BertConfig(**kw, hidden_act=_ACT_FROM_HF[act], dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be represented in minibert: {e}") from None


def config_to_hf(c, architectures=("BertForPreTraining",)):
    """The config.json dict transformers expects for a minibert BertConfig."""
    d = {"architectures": list(architectures), "model_type": "bert"}
    d.update({hf: getattr(c, mb) for hf, (mb, _) in _CONFIG_FIELDS.items()})
    d.update({
        "hidden_act": _ACT_TO_HF[c.hidden_act],
        "pad_token_id": 0,
        "tie_word_embeddings": True,  # the MLM decoder is the word embedding
        "is_decoder": False,
        "add_cross_attention": False,
        "dtype": c.dtype,
    })
    return d


# ----------------------------------------------------------------------------------------
# directories


def _read_config(path, dtype):
    """(the HF config dict, the minibert BertConfig) from path/config.json."""
    fn = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(fn):
        raise ValueError(f"{path!r} has no {CONFIG_NAME}")
    with open(fn) as f:
        d = json.load(f)
    try:
        return d, config_from_hf(d, dtype)
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None


def _read_weights(path):
    """name -> host array from model.safetensors or the shards its index lists."""
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    else:
        raise ValueError(f"{path!r} has no {WEIGHTS_NAME} (minibert reads safetensors only, never pickled "
                         "pytorch_model.bin; convert with transformers' save_pretrained(safe_serialization=True))")
    state = {}
    for fn in files:
        try:
            state.update(safetensors.numpy.load_file(fn))
        except Exception as e:  # e.g. bfloat16, which NumPy has no dtype for
            raise ValueError(f"cannot read {fn!r} with safetensors.numpy: {e}") from None
    return state


def load_hf_encoder_params(path, dtype="float32"):
    """(BertConfig, encoder params: emb.*, layers.*, pool.*) from any HF BERT directory:
    BertModel, BertForPreTraining, or a task model whose encoder sits under "bert."."""
    _, config = _read_config(path, dtype)
    try:
        params = from_hf_state_dict(_read_weights(path), config, heads=False)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return config, params


def load_hf(path, dtype="float32"):
    """A minibert BertForPreTraining from a transformers BertForPreTraining directory."""
    hf_config, config = _read_config(path, dtype)
    state = _read_weights(path)
    if not hf_config.get("tie_word_embeddings", True) and _DECODER_W not in state:
        raise ValueError(f"{path}: tie_word_embeddings is false and there is no {_DECODER_W}; "
                         "minibert ties the MLM decoder to the word embeddings")
    try:
        params = from_hf_state_dict(state, config, heads=True)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return BertForPreTraining(config, params=params)


def save_hf(model, path):
    """Write config.json and model.safetensors that transformers.BertForPreTraining
    .from_pretrained(path) loads with no missing or unexpected weights. The tied decoder
    weight and bias are left out, as transformers itself saves them. Each file is written
    atomically (atomic.atomic_write), the weights first."""
    os.makedirs(path, exist_ok=True)
    state = to_hf_state_dict(model)
    # transformers checks the format tag
    atomic_write(os.path.join(path, WEIGHTS_NAME), safetensors.numpy.save(state, metadata={"format": "pt"}))
    config = json.dumps(config_to_hf(model.config), indent=2, sort_keys=True) + "\n"
    atomic_write(os.path.join(path, CONFIG_NAME), config)
