"""Hugging Face state dicts: minibert's parameters under transformers' BERT weight names and
layouts, and back. Pure mapping on host arrays; the files (config.json, model.safetensors)
are interop.py.

Checkpoint kinds (HF_KINDS), named by the transformers class, each read into the minibert
class of the same name, and each written back so that class loads it with no missing or
unexpected weights:

    BertForPreTraining             encoder, pooler, MLM head, NSP head   model.BertForPreTraining
    BertForMaskedLM                encoder, MLM head (no pooler, no NSP) model.BertForMaskedLM
    BertModel                      encoder, pooler; keys without "bert." model.BertModel
    BertForSequenceClassification  encoder, pooler, classifier (C, H)    classifier.BertForSequenceClassification
    BertForTokenClassification     encoder, classifier (C, H), no pooler token_classifier.BertForTokenClassification
    BertForQuestionAnswering       encoder, qa_outputs (2, H), no pooler question_answering.BertForQuestionAnswering
    BertForMultipleChoice          encoder, pooler, classifier (1, H)    multiple_choice.BertForMultipleChoice

`kind_of(state, architectures)` tells the kind from the weights a state dict holds (the
heads, by one weight each: HEADS). The weights cannot tell a multiple-choice head from a
one-label (regression) sequence classifier: both are a pooler and a (1, H) classifier; there
config.json's "architectures" decides.

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
    cls.w (H, C), cls.b        classifier.weight (T), .bias   (sequence, token; (H, 1) for choice)
    qa.w (H, 2), qa.b          qa_outputs.weight (T), .bias   (column 0 start, 1 end)

The MLM decoder is tied: HF's cls.predictions.decoder.weight *is* the word embedding and
cls.predictions.decoder.bias *is* cls.predictions.bias. transformers 5.x leaves both out
of the files it saves and re-ties them on load, so `to_hf_state_dict` gives neither. Older
checkpoints may carry them; `from_hf_state_dict` accepts them when they equal what they are
tied to and refuses an untied decoder, which minibert cannot represent.

Also read: the legacy names of converted Google (TensorFlow) checkpoints, LayerNorm.gamma /
LayerNorm.beta, and their decoder copies cls.predictions.decoder.weight/.bias; encoder keys
without the "bert." prefix (a BertModel's); and the old position_ids buffer. A missing,
unexpected or misshapen weight raises ValueError naming it.

Post-LN only. A pre-LN minibert model (BertConfig.norm "pre") has no Hugging Face form:
transformers' BERT classes put each layer norm after its residual sum, there is no pre-LN
BERT class, and the same weights there would compute another function (final_ln.* would
have no place at all). to_hf_state_dict and from_hf_state_dict refuse it (check_post_ln).

Not mapped, because minibert has no equivalent: HF's `pad_token_id` makes the word
embedding row of the pad token receive no gradient from the input lookup (nn.Embedding's
padding_idx); minibert treats every row alike.
"""
import numpy as np  # host side only: state dicts are host arrays

from minibert import backend
from minibert.classifier import BertForSequenceClassification, classifier_param_shapes
from minibert.encoder import encoder_param_shapes
from minibert.model import (
    BertForMaskedLM, BertForPreTraining, BertModel, masked_lm_param_shapes, pretraining_param_shapes,
)
from minibert.multiple_choice import BertForMultipleChoice, multiple_choice_param_shapes
from minibert.question_answering import BertForQuestionAnswering, question_answering_param_shapes
from minibert.token_classifier import BertForTokenClassification, token_classifier_param_shapes

# checkpoint kind (the transformers class) -> (minibert class, what its files hold)
HF_KINDS = {
    "BertForPreTraining": (BertForPreTraining, "encoder, pooler, MLM head and NSP head"),
    "BertForMaskedLM": (BertForMaskedLM, "encoder and MLM head, no pooler or NSP head"),
    "BertModel": (BertModel, "encoder and pooler, no head"),
    "BertForSequenceClassification": (BertForSequenceClassification, "encoder, pooler and a classifier"),
    "BertForTokenClassification": (BertForTokenClassification, "encoder and a classifier at every token, no pooler"),
    "BertForQuestionAnswering": (BertForQuestionAnswering, "encoder and a start/end head (qa_outputs), no pooler"),
    "BertForMultipleChoice": (BertForMultipleChoice, "encoder, pooler and a one-score classifier per choice"),
}
# the kinds whose head size is the checkpoint's number of labels (classifier.weight's rows)
LABELLED_KINDS = ("BertForSequenceClassification", "BertForTokenClassification")
# the heads, by the HF weight that shows each is there; what each is called in an error; what each kind needs
HEADS = {"mlm": "cls.predictions.bias", "nsp": "cls.seq_relationship.weight", "pooler": "bert.pooler.dense.weight",
         "classifier": "classifier.weight", "qa": "qa_outputs.weight"}
HEAD_NAMES = {"mlm": "MLM head (cls.predictions.*)", "nsp": "NSP head (cls.seq_relationship.weight)",
              "pooler": "pooler (bert.pooler.dense.weight)", "classifier": "classifier (classifier.weight)",
              "qa": "question-answering head (qa_outputs.weight)"}
KIND_HEADS = {"BertForPreTraining": ("mlm", "nsp", "pooler"), "BertForMaskedLM": ("mlm",),
              "BertModel": ("pooler",), "BertForSequenceClassification": ("pooler", "classifier"),
              "BertForTokenClassification": ("classifier",), "BertForQuestionAnswering": ("qa",),
              "BertForMultipleChoice": ("pooler", "classifier")}

# tensors in HF files that hold no parameter: buffers older transformers versions saved
_IGNORED_KEYS = ("bert.embeddings.position_ids",)
DECODER_W, DECODER_B = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
_WORD, _MLM_BIAS = "bert.embeddings.word_embeddings.weight", "cls.predictions.bias"


# ----------------------------------------------------------------------------------------
# the name map


def check_post_ln(config):
    """ValueError unless the config's encoder is post-LN, the only BERT transformers computes."""
    if config.norm != "post":
        raise ValueError(
            f"this model is pre-LN (norm={config.norm!r}) and cannot be exported to Hugging Face: transformers' "
            "BERT classes are post-LN only (layer norm after each residual sum) and there is no pre-LN BERT class, "
            "so its weights loaded there would compute a different function (and its final_ln.* has no place). "
            "The minibert checkpoint itself works for fill-mask and fine-tuning")


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
            "qa.w": ("qa_outputs.weight", True),
            "qa.b": ("qa_outputs.bias", False),
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
    check_post_ln(model.config)
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
    if kind == "BertForTokenClassification":
        return token_classifier_param_shapes(config, num_labels)
    return {"BertForPreTraining": pretraining_param_shapes, "BertForMaskedLM": masked_lm_param_shapes,
            "BertModel": encoder_param_shapes, "BertForQuestionAnswering": question_answering_param_shapes,
            "BertForMultipleChoice": multiple_choice_param_shapes}[kind](config)


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
    if DECODER_B in out:
        b = out.pop(DECODER_B)
        if _MLM_BIAS not in out:  # some checkpoints keep only the decoder's copy
            out[_MLM_BIAS] = b
        elif check_tied and not np.array_equal(b, out[_MLM_BIAS]):
            raise ValueError(f"{DECODER_B} differs from {_MLM_BIAS}: minibert ties them and cannot load an untied bias")
    if DECODER_W in out:
        w = out.pop(DECODER_W)
        if check_tied and _WORD in out and not np.array_equal(w, out[_WORD]):
            raise ValueError(f"{DECODER_W} differs from {_WORD}: minibert ties the MLM decoder to the "
                             "word embeddings and cannot load an untied decoder")
    return out


def from_hf_state_dict(state, config, heads=True, kind=None, num_labels=None):
    """minibert params (device arrays of config.dtype) from an HF state dict (name -> array).

    kind (HF_KINDS): the params of that model; every key must be used, except the heads that
    kind drops (loading a richer checkpoint as a poorer kind). kind None: heads=True is
    BertForPreTraining; heads=False the encoder params only (emb.*, layers.*, pool.*), keys
    outside "bert." (any task head) ignored, unknown keys inside it still raising. Raises
    ValueError naming missing, unexpected or misshapen weights, or for a pre-LN config."""
    check_post_ln(config)
    state = _canonical_state({k: np.asarray(backend.to_host(v)) for k, v in state.items()})
    lenient = kind is None and not heads
    kind = kind or ("BertForPreTraining" if heads else "BertModel")
    shapes = param_shapes(kind, config, num_labels)
    if lenient and HEADS["pooler"] not in state:  # a BertForMaskedLM's encoder: no pooler to read
        shapes = encoder_param_shapes(config, pooler=False)
    full = _name_map(config.num_layers)
    names = {k: full[k] for k in shapes}

    wanted = [n for hf, _ in names.values() for n in _hf_names(hf)]
    if lenient:  # whatever sits outside "bert." (a task head) is not ours to check
        given = [n for n in state if n.startswith("bert.")]
    else:  # the heads this kind has no place for are dropped, as transformers drops them
        dropped = {h for h in HEADS if h not in KIND_HEADS[kind]}
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
    """Which head (a HEADS key) an HF weight belongs to; None for the encoder."""
    if hf_name.startswith("cls.predictions."):
        return "mlm"
    if hf_name.startswith("cls.seq_relationship."):
        return "nsp"
    if hf_name.startswith("bert.pooler."):
        return "pooler"
    if hf_name.startswith("classifier."):
        return "classifier"
    if hf_name.startswith("qa_outputs."):
        return "qa"
    return None


def heads_of(state):
    """The heads (HEADS keys) an HF state dict holds, legacy spellings included."""
    names = _canonical_state(state, check_tied=False)
    return {h for h, n in HEADS.items() if n in names}


def kind_of(state, architectures=()):
    """The richest checkpoint kind an HF state dict holds all the weights of. A pooler with a
    (1, H) classifier is BertForMultipleChoice when `architectures` (config.json's) names it,
    else a one-label BertForSequenceClassification."""
    heads = heads_of(state)
    if "qa" in heads:
        return "BertForQuestionAnswering"
    if "classifier" in heads:
        if "pooler" not in heads:
            return "BertForTokenClassification"
        if "BertForMultipleChoice" in architectures and np.shape(state[HEADS["classifier"]])[0] == 1:
            return "BertForMultipleChoice"
        return "BertForSequenceClassification"
    if "mlm" in heads:
        return "BertForPreTraining" if {"nsp", "pooler"} <= heads else "BertForMaskedLM"
    return "BertModel"


def _check_shape(name, a, want):
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"weight {name!r} has shape {tuple(a.shape)}, the config expects {tuple(want)}")



def kind_of_model(model):
    """The checkpoint kind (HF_KINDS) of a minibert model."""
    for kind, (cls, _) in HF_KINDS.items():
        if type(model) is cls:
            return kind
    raise ValueError(f"no Hugging Face checkpoint kind for {type(model).__name__}")
