"""Hugging Face interop: read and write `transformers` BERT checkpoint directories, no torch needed.

A checkpoint directory holds config.json and model.safetensors, as `save_pretrained` of
transformers writes them. Tensors are read and written with safetensors.numpy; nothing is
unpickled: a directory with only pytorch_model.bin (a pickle, which can run any code when
loaded) is refused with the one-line conversion to safetensors. Sharded checkpoints
(model.safetensors.index.json) are read too. The weights map to minibert's parameters as
hf_state.py describes; each checkpoint kind (hf_state.HF_KINDS: BertForPreTraining,
BertForMaskedLM, BertModel, BertForSequenceClassification, BertForTokenClassification,
BertForQuestionAnswering, BertForMultipleChoice) is read into the minibert class of the same
name and written back so that the transformers class loads it with no missing or unexpected
weights.

`load_hf_model(path)` tells the kind from the weights in the files, not from config.json's
"architectures" (bert-base-uncased says BertForMaskedLM and carries the NSP head and pooler
too: it loads as BertForPreTraining); "architectures" only tells a multiple-choice head from a
one-label sequence classifier, whose weights are alike. Asked for a kind whose head the files lack, it says
which head is missing; a richer checkpoint loads as a poorer kind (its extra heads dropped,
as transformers does with a warning). `load_hf(path)` is the BertForPreTraining loader.

The config fields map one to one: num_hidden_layers <-> num_layers, num_attention_heads
<-> num_heads, max_position_embeddings <-> max_position, hidden_dropout_prob <-> dropout,
attention_probs_dropout_prob <-> attention_dropout; hidden_act "gelu" is exact on both
sides, HF's "gelu_new" and "gelu_pytorch_tanh" are minibert's "gelu_tanh". A config
minibert cannot run (a decoder, relative positions, another activation) raises ValueError.
Only post-LN models are written: a pre-LN one (BertConfig.norm "pre") has no transformers
class, and saving or exporting it raises ValueError saying so (hf_state.check_post_ln).
"""
import json
import os

import safetensors.numpy

from minibert import rundir
from minibert.atomic import atomic_write
from minibert.checkpoint import checkpoint_exists
from minibert.classifier import BertForSequenceClassification
from minibert.hf_state import (
    DECODER_W, HEAD_NAMES, HF_KINDS, KIND_HEADS, LABELLED_KINDS, check_post_ln, from_hf_state_dict, heads_of,
    kind_of, kind_of_model, to_hf_state_dict,
)
from minibert.model import BertConfig, pretraining_model
from minibert.multiple_choice import BertForMultipleChoice
from minibert.question_answering import BertForQuestionAnswering
from minibert.token_classifier import BertForTokenClassification

# the files of a transformers directory, besides its config.json (rundir.CONFIG_FILE)
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

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
    classifier's, id order) become id2label / label2id. ValueError for a pre-LN config,
    which no transformers BERT class computes (hf_state.check_post_ln)."""
    check_post_ln(c)
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
    heads, found = heads_of(state), kind_of(state, hf_config.get("architectures") or ())
    kind = kind or found
    if kind not in HF_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: minibert reads {sorted(HF_KINDS)}")
    missing = [h for h in KIND_HEADS[kind] if h not in heads]
    if missing:
        raise ValueError(f"{path} holds {_describe(found)}: it has no "
                         f"{' and no '.join(HEAD_NAMES[h] for h in missing)}, which {kind} needs")
    if "mlm" in KIND_HEADS[kind] and not hf_config.get("tie_word_embeddings", True) and DECODER_W not in state:
        raise ValueError(f"{path}: tie_word_embeddings is false and there is no {DECODER_W}; "
                         "minibert ties the MLM decoder to the word embeddings")
    num_labels = None
    if kind in LABELLED_KINDS:
        num_labels = int(state["classifier.weight"].shape[0])
    if kind == "BertForSequenceClassification":
        if hf_config.get("problem_type") == "multi_label_classification":
            raise ValueError(f"{path}: problem_type multi_label_classification is not supported (minibert's "
                             "classifier is single-label, or regression with one label)")
    try:
        params = from_hf_state_dict(state, config, kind=kind, num_labels=num_labels)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if kind in LABELLED_KINDS:
        return HF_KINDS[kind][0](config, num_labels, params=params)
    return HF_KINDS[kind][0](config, params=params)


def hf_label_names(path):
    """The label names of an HF classifier or token classifier directory (config.json's
    id2label, in id order), or None."""
    hf_config, _ = _read_config(path, "float32")
    id2label = hf_config.get("id2label")
    return [id2label[str(i)] for i in range(len(id2label))] if id2label else None


def load_hf(path, dtype="float32"):
    """A minibert BertForPreTraining from a transformers BertForPreTraining directory (or
    bert-base-uncased's, which holds the same weights)."""
    return load_hf_model(path, dtype, kind="BertForPreTraining")



def save_hf(model, path, label_names=None):
    """Write config.json and model.safetensors that the transformers class of the model's
    kind (hf_state.HF_KINDS) .from_pretrained(path) loads with no missing or unexpected
    weights. The tied decoder weight and bias are left out, as transformers itself saves
    them. label_names: a classifier's or a token classifier's, for id2label. Each file is
    written atomically (atomic.atomic_write), the weights first. A pre-LN model raises
    ValueError before anything is written (hf_state.check_post_ln)."""
    check_post_ln(model.config)
    kind = kind_of_model(model)
    os.makedirs(path, exist_ok=True)
    state = to_hf_state_dict(model)
    # transformers checks the format tag
    atomic_write(os.path.join(path, WEIGHTS_FILE), safetensors.numpy.save(state, metadata={"format": "pt"}))
    if kind in LABELLED_KINDS and label_names is None:
        label_names = [f"LABEL_{i}" for i in range(model.num_labels)]
    d = config_to_hf(model.config, [kind], label_names)
    if kind == "BertForSequenceClassification":
        d["problem_type"] = "regression" if model.is_regression else "single_label_classification"
    atomic_write(os.path.join(path, rundir.CONFIG_FILE), json.dumps(d, indent=2, sort_keys=True) + "\n")


def export_run(run_dir, out, name="last"):
    """Export checkpoint NAME of a minibert run directory to a transformers directory OUT:
    config.json and model.safetensors of the run's class (BertForPreTraining, or
    BertForMaskedLM for an MLM-only run; for a fine-tuned run BertForSequenceClassification
    or BertForTokenClassification with the label names, BertForQuestionAnswering or
    BertForMultipleChoice), and the tokenizer in the files transformers reads:
    vocab.txt + tokenizer_config.json for WordPiece (BertTokenizer), vocab.json + merges.txt
    for byte-level BPE (GPT2Tokenizer). Returns the kind written. A pre-LN run raises
    ValueError and writes nothing: transformers has no pre-LN BERT (hf_state.check_post_ln)."""
    meta = rundir.read_record_meta(run_dir, name)  # any kind: the kind decides what to build
    config, params, meta, tok = rundir.load_run(run_dir, name, meta["kind"])
    check_post_ln(config)
    label_names = None
    if meta["kind"] == rundir.CLASSIFICATION_KIND:
        model = BertForSequenceClassification(config, meta["num_labels"], params=params)
        label_names = meta.get("label_names")
    elif meta["kind"] == rundir.TAGGING_KIND:
        model = BertForTokenClassification(config, meta["num_labels"], params=params)
        label_names = meta["label_names"]
    elif meta["kind"] == rundir.QA_KIND:
        model = BertForQuestionAnswering(config, params=params)
    elif meta["kind"] == rundir.CHOICE_KIND:
        model = BertForMultipleChoice(config, params=params)
    else:
        model = pretraining_model(meta)[0](config, params=params)
    save_hf(model, out, label_names=label_names)
    if hasattr(tok, "save_gpt2_files"):
        tok.save_gpt2_files(out)
    else:
        tok.save(out)
    return kind_of_model(model)
