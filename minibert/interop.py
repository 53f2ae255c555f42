"""Hugging Face interop: read and write `transformers` BERT checkpoints, no torch needed.

A checkpoint directory holds config.json and model.safetensors, as `save_pretrained` of
transformers writes them. Tensors are read and written with safetensors.numpy; nothing is
unpickled: a directory with only pytorch_model.bin (a pickle, which can run any code when
loaded) is refused with the one-line conversion to safetensors.

Checkpoint kinds (HF_KINDS), named by the transformers class, each read into the minibert
class of the same name, and each written back so that class loads it with no missing or
unexpected weights:

    BertForPreTraining             encoder, pooler, MLM head, NSP head   model.BertForPreTraining
    BertForMaskedLM                encoder, MLM head (no pooler, no NSP) model.BertForMaskedLM
    BertModel                      encoder, pooler; keys without "bert." model.BertModel
    BertForSequenceClassification  encoder, pooler, classifier (C, H)    classifier.BertForSequenceClassification

`load_hf_model(path)` tells the kind from the weights in the files, not from config.json's
"architectures" (bert-base-uncased says BertForMaskedLM and carries the NSP head and pooler
too: it loads as BertForPreTraining). Asked for a kind whose head the files lack, it says
which head is missing; a richer checkpoint loads as a poorer kind (its extra heads dropped,
as transformers does with a warning). `load_hf(path)` is the BertForPreTraining loader.

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
    cls.w (H, C), cls.b        classifier.weight (T), .bias

The MLM decoder is tied: HF's cls.predictions.decoder.weight *is* the word embedding and
cls.predictions.decoder.bias *is* cls.predictions.bias. transformers 5.x leaves both out
of the files it saves and re-ties them on load, so `save_hf` writes neither. Older
checkpoints may carry them; `load_hf` accepts them when they equal what they are tied to
and refuses an untied decoder, which minibert cannot represent.

Also read: the legacy names of converted Google (TensorFlow) checkpoints, LayerNorm.gamma /
LayerNorm.beta, and their decoder copies cls.predictions.decoder.weight/.bias; encoder keys
without the "bert." prefix (a BertModel directory); the old position_ids buffer; and
sharded checkpoints (model.safetensors.index.json). A config minibert cannot run (a decoder, relative
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

from minibert import backend, rundir
from minibert.atomic import atomic_write
from minibert.checkpoint import checkpoint_exists
from minibert.classifier import BertForSequenceClassification, classifier_param_shapes
from minibert.model import (
    BertConfig, BertForMaskedLM, BertForPreTraining, BertModel, encoder_param_shapes, masked_lm_param_shapes,
    pretraining_model, pretraining_param_shapes,
)

# the files of a transformers directory, besides its config.json (rundir.CONFIG_FILE)
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# checkpoint kind (the transformers class) -> (minibert class, what its files hold)
HF_KINDS = {
    "BertForPreTraining": (BertForPreTraining, "encoder, pooler, MLM head and NSP head"),
    "BertForMaskedLM": (BertForMaskedLM, "encoder and MLM head, no pooler or NSP head"),
    "BertModel": (BertModel, "encoder and pooler, no head"),
    "BertForSequenceClassification": (BertForSequenceClassification, "encoder, pooler and a classifier"),
}
# the heads, by the HF weight that shows each is there
_HEADS = {"mlm": "cls.predictions.bias", "nsp": "cls.seq_relationship.weight", "pooler": "bert.pooler.dense.weight",
          "classifier": "classifier.weight"}
_HEAD_NAMES = {"mlm": "MLM head (cls.predictions.*)", "nsp": "NSP head (cls.seq_relationship.weight)",
               "pooler": "pooler (bert.pooler.dense.weight)", "classifier": "classifier (classifier.weight)"}
_KIND_NEEDS = {"BertForPreTraining": ("mlm", "nsp", "pooler"), "BertForMaskedLM": ("mlm",),
               "BertModel": ("pooler",), "BertForSequenceClassification": ("pooler", "classifier")}

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
    """minibert name -> (HF name or a list of three fused HF names, transpose?); heads=False:
    the encoder and pooler only."""
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
            "cls.w": ("classifier.weight", True),
            "cls.b": ("classifier.bias", False),
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
    if isinstance(model, BertModel):  # transformers' BertModel names its weights without "bert."
        out = {k[len("bert."):]: v for k, v in out.items()}
    return out


def param_shapes(kind, config, num_labels=None):
    """name -> shape of the minibert model for checkpoint KIND."""
    if kind not in HF_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: minibert reads {sorted(HF_KINDS)}")
    if kind == "BertForSequenceClassification":
        return classifier_param_shapes(config, num_labels)
    return {"BertForPreTraining": pretraining_param_shapes, "BertForMaskedLM": masked_lm_param_shapes,
            "BertModel": encoder_param_shapes}[kind](config)


def _canonical_state(state, check_tied=True):
    """Normalise HF key spellings: legacy gamma/beta, a missing "bert." prefix, old buffers,
    and tied decoder copies (checked against what they are tied to, then dropped; only the
    names are looked at when check_tied is False)."""
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
        elif check_tied and not np.array_equal(b, out[_MLM_BIAS]):
            raise ValueError(f"{_DECODER_B} differs from {_MLM_BIAS}: minibert ties them and cannot load an untied bias")
    if _DECODER_W in out:
        w = out.pop(_DECODER_W)
        if check_tied and _WORD in out and not np.array_equal(w, out[_WORD]):
            raise ValueError(f"{_DECODER_W} differs from {_WORD}: minibert ties the MLM decoder to the "
                             "word embeddings and cannot load an untied decoder")
    return out


def from_hf_state_dict(state, config, heads=True, kind=None, num_labels=None):
    """minibert params (device arrays of config.dtype) from an HF state dict (name -> array).

    kind (HF_KINDS): the params of that model; every key must be used, except the heads that
    kind drops (loading a richer checkpoint as a poorer kind). kind None: heads=True is
    BertForPreTraining; heads=False the encoder params only (emb.*, layers.*, pool.*), keys
    outside "bert." (any task head) ignored, unknown keys inside it still raising. Raises
    ValueError naming missing, unexpected or misshapen weights."""
    state = _canonical_state({k: np.asarray(backend.to_host(v)) for k, v in state.items()})
    lenient = kind is None and not heads
    kind = kind or ("BertForPreTraining" if heads else "BertModel")
    shapes = param_shapes(kind, config, num_labels)
    if lenient and _HEADS["pooler"] not in state:  # a BertForMaskedLM's encoder: no pooler to read
        shapes = encoder_param_shapes(config, pooler=False)
    full = _name_map(config.num_layers)
    names = {k: full[k] for k in shapes}

    wanted = [n for hf, _ in names.values() for n in _hf_names(hf)]
    if lenient:  # whatever sits outside "bert." (a task head) is not ours to check
        given = [n for n in state if n.startswith("bert.")]
    else:  # the heads this kind has no place for are dropped, as transformers drops them
        dropped = {h for h in _HEADS if h not in _KIND_NEEDS[kind]}
        given = [n for n in state if not any(_head_of(n) == h for h in dropped)]
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


def _head_of(hf_name):
    """Which head (a _HEADS key) an HF weight belongs to; None for the encoder."""
    if hf_name.startswith("cls.predictions."):
        return "mlm"
    if hf_name.startswith("cls.seq_relationship."):
        return "nsp"
    if hf_name.startswith("bert.pooler."):
        return "pooler"
    if hf_name.startswith("classifier."):
        return "classifier"
    return None


def heads_of(state):
    """The heads (_HEADS keys) an HF state dict holds, legacy spellings included."""
    names = _canonical_state(state, check_tied=False)
    return {h for h, n in _HEADS.items() if n in names}


def kind_of(state):
    """The richest checkpoint kind an HF state dict holds all the weights of."""
    heads = heads_of(state)
    if "classifier" in heads:
        return "BertForSequenceClassification"
    if "mlm" in heads:
        return "BertForPreTraining" if {"nsp", "pooler"} <= heads else "BertForMaskedLM"
    return "BertModel"


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


def config_to_hf(c, architectures=("BertForPreTraining",), label_names=None):
    """The config.json dict transformers expects for a minibert BertConfig; label_names (a
    classifier's, id order) become id2label / label2id."""
    d = {"architectures": list(architectures), "model_type": "bert"}
    if label_names is not None:
        d["id2label"] = {str(i): str(n) for i, n in enumerate(label_names)}
        d["label2id"] = {str(n): i for i, n in enumerate(label_names)}
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
    fn = os.path.join(path, rundir.CONFIG_FILE)
    if not os.path.isfile(fn):
        raise ValueError(f"{path!r} has no {rundir.CONFIG_FILE}")
    with open(fn) as f:
        d = json.load(f)
    try:
        return d, config_from_hf(d, dtype)
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None


def _read_weights(path):
    """name -> host array from model.safetensors or the shards its index lists."""
    single, index = os.path.join(path, WEIGHTS_FILE), os.path.join(path, WEIGHTS_INDEX_FILE)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    elif any(os.path.isfile(os.path.join(path, n)) for n in PICKLE_FILES):
        raise ValueError(
            f"{path} holds pytorch_model.bin, a Python pickle, and no {WEIGHTS_FILE}. minibert never unpickles: "
            "loading a pickle can run any code its author put in it. Convert it once, with transformers, on a "
            "checkpoint you trust: python -c \"import transformers as t; "
            f"t.AutoModelForPreTraining.from_pretrained('{path}').save_pretrained('{path}')\" "
            "(save_pretrained writes model.safetensors; use AutoModel for an encoder-only checkpoint, "
            "AutoModelForSequenceClassification for a classifier)")
    else:
        raise ValueError(f"{path!r} has no {WEIGHTS_FILE} (minibert reads safetensors only, never pickled "
                         "pytorch_model.bin; convert with transformers' save_pretrained)")
    state = {}
    for fn in files:
        try:
            state.update(safetensors.numpy.load_file(fn))
        except Exception as e:  # e.g. bfloat16, which NumPy has no dtype for
            raise ValueError(f"cannot read {fn!r} with safetensors.numpy: {e}") from None
    return state


def is_hf_dir(path):
    """True for a directory transformers wrote (config.json and weights, of any format), False
    for a minibert run directory (whose checkpoints are NAME.json records) or anything else."""
    if not os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)) or checkpoint_exists(path, "last"):
        return False
    return any(os.path.isfile(os.path.join(path, n)) for n in (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, *PICKLE_FILES))


def load_hf_encoder_params(path, dtype="float32"):
    """(BertConfig, encoder params: emb.*, layers.*, pool.*) from any HF BERT directory:
    BertModel, BertForPreTraining, or a task model whose encoder sits under "bert.". A
    BertForMaskedLM directory has no pooler: its params then lack pool.*."""
    _, config = _read_config(path, dtype)
    try:
        params = from_hf_state_dict(_read_weights(path), config, heads=False)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return config, params


def _describe(kind):
    return f"a {kind} checkpoint ({HF_KINDS[kind][1]})"


def load_hf_model(path, dtype="float32", kind=None):
    """The minibert model of an HF BERT directory: of the kind its weights hold (kind None),
    or of KIND, which must not need a head the files lack (ValueError naming it)."""
    hf_config, config = _read_config(path, dtype)
    state = _read_weights(path)
    heads, found = heads_of(state), kind_of(state)
    kind = kind or found
    if kind not in HF_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: minibert reads {sorted(HF_KINDS)}")
    missing = [h for h in _KIND_NEEDS[kind] if h not in heads]
    if missing:
        raise ValueError(f"{path} holds {_describe(found)}: it has no "
                         f"{' and no '.join(_HEAD_NAMES[h] for h in missing)}, which {kind} needs")
    if "mlm" in _KIND_NEEDS[kind] and not hf_config.get("tie_word_embeddings", True) and _DECODER_W not in state:
        raise ValueError(f"{path}: tie_word_embeddings is false and there is no {_DECODER_W}; "
                         "minibert ties the MLM decoder to the word embeddings")
    num_labels = None
    if kind == "BertForSequenceClassification":
        num_labels = int(state["classifier.weight"].shape[0])
        if hf_config.get("problem_type") == "multi_label_classification":
            raise ValueError(f"{path}: problem_type multi_label_classification is not supported (minibert's "
                             "classifier is single-label, or regression with one label)")
    try:
        params = from_hf_state_dict(state, config, kind=kind, num_labels=num_labels)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if kind == "BertForSequenceClassification":
        return BertForSequenceClassification(config, num_labels, params=params)
    return HF_KINDS[kind][0](config, params=params)


def hf_label_names(path):
    """The label names of an HF classifier directory (config.json's id2label, in id order), or None."""
    hf_config, _ = _read_config(path, "float32")
    id2label = hf_config.get("id2label")
    return [id2label[str(i)] for i in range(len(id2label))] if id2label else None


def load_hf(path, dtype="float32"):
    """A minibert BertForPreTraining from a transformers BertForPreTraining directory (or
    bert-base-uncased's, which holds the same weights)."""
    return load_hf_model(path, dtype, kind="BertForPreTraining")


def kind_of_model(model):
    """The checkpoint kind (HF_KINDS) of a minibert model."""
    for kind, (cls, _) in HF_KINDS.items():
        if type(model) is cls:
            return kind
    raise ValueError(f"no Hugging Face checkpoint kind for {type(model).__name__}")


def save_hf(model, path, label_names=None):
    """Write config.json and model.safetensors that the transformers class of the model's
    kind (BertForPreTraining, BertForMaskedLM, BertModel, BertForSequenceClassification)
    .from_pretrained(path) loads with no missing or unexpected weights. The tied decoder
    weight and bias are left out, as transformers itself saves them. label_names: a
    classifier's, for id2label. Each file is written atomically (atomic.atomic_write), the
    weights first."""
    kind = kind_of_model(model)
    os.makedirs(path, exist_ok=True)
    state = to_hf_state_dict(model)
    # transformers checks the format tag
    atomic_write(os.path.join(path, WEIGHTS_FILE), safetensors.numpy.save(state, metadata={"format": "pt"}))
    if kind == "BertForSequenceClassification" and label_names is None:
        label_names = [f"LABEL_{i}" for i in range(model.num_labels)]
    d = config_to_hf(model.config, [kind], label_names)
    if kind == "BertForSequenceClassification":
        d["problem_type"] = "regression" if model.is_regression else "single_label_classification"
    atomic_write(os.path.join(path, rundir.CONFIG_FILE), json.dumps(d, indent=2, sort_keys=True) + "\n")


def export_run(run_dir, out, name="last"):
    """Export checkpoint NAME of a minibert run directory to a transformers directory OUT:
    config.json and model.safetensors of the run's class (BertForPreTraining, or
    BertForMaskedLM for an MLM-only run, or BertForSequenceClassification with the label
    names for a fine-tuning run), and the tokenizer in the files transformers reads:
    vocab.txt + tokenizer_config.json for WordPiece (BertTokenizer), vocab.json + merges.txt
    for byte-level BPE (GPT2Tokenizer). Returns the kind written."""
    meta = rundir.read_record_meta(run_dir, name)  # any kind: the kind decides what to build
    config, params, meta, tok = rundir.load_run(run_dir, name, meta["kind"])
    label_names = None
    if meta["kind"] == rundir.CLASSIFICATION_KIND:
        model = BertForSequenceClassification(config, meta["num_labels"], params=params)
        label_names = meta.get("label_names")
    else:
        model = pretraining_model(meta)[0](config, params=params)
    save_hf(model, out, label_names=label_names)
    if hasattr(tok, "save_gpt2_files"):
        tok.save_gpt2_files(out)
    else:
        tok.save(out)
    return kind_of_model(model)
