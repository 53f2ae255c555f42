"""Using a pretrained model: load a minibert pretraining run or a Hugging Face BERT directory,
fill in [MASK] tokens, and look at the attention.

    model, tok = minibert.load_pretrained("runs/pretrain")        # or "path/to/bert-base-uncased"
    fill_mask(model, tok, "Return the [MASK] of the list.")
    -> [[(" length", 0.41), (" number", 0.12), ...]]      one list per [MASK], top_k each
    tokens, probs = attention_maps(model, tok, "Return the length.")   # probs (L, A, T, T)
    print(attention_summary(tokens, probs))

Fill-mask probabilities are the model's softmax over the whole vocabulary at the [MASK]
position, as in transformers' fill-mask pipeline; the ranking leaves out special tokens
([CLS], [SEP], ...) unless skip_special=False, with which the list is the pipeline's own.

A space typed before "[MASK]" is absorbed into the mask (as RoBERTa's mask token does with
lstrip): byte-level BPE puts a word's leading space inside its token (" length"), so the
masked slot in pretraining stands for " length", not for "length" after a separate " ".
WordPiece splits on whitespace first, so the space changes nothing there.

Attention maps come from the forward pass's own cache: each encoder layer's AttentionCache
keeps the probabilities (after dropout, which is off in evaluation), so looking inside runs
the same code as training, with no second path.
"""
import os
import re

import numpy as np

from minibert import backend, interop, rundir
from minibert.encoder import encoder_forward, to_device_batch
from minibert.model import IGNORE_INDEX, pretraining_model
from minibert.rundir import PRETRAINING_KIND, load_run
from minibert.tokenizer import SPECIAL_TOKENS
from minibert.tokenizer_files import load_tokenizer


def load_pretrained(path, name="last", dtype=None, kind=None):
    """(model, tokenizer) from a minibert pretraining run directory (BertForPreTraining, or
    BertForMaskedLM for an MLM-only run), or from a Hugging Face BERT directory: the model
    of the kind its weights hold (interop.load_hf_model; kind to ask for one) and its
    tokenizer (vocab.txt with tokenizer_config.json, or tokenizer.json)."""
    if interop.is_hf_dir(path):
        model = interop.load_hf_model(path, dtype or "float32", kind)
        try:
            tok = load_tokenizer(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} holds a model but no tokenizer minibert reads (vocab.txt or "
                                    "tokenizer.json)") from None
        if tok.vocab_size != model.config.vocab_size:
            raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} tokens, the model's vocabulary "
                             f"{model.config.vocab_size}")
        return model, tok
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such directory: {path}")
    config, params, meta, tok = load_run(path, name, PRETRAINING_KIND, dtype)
    return pretraining_model(meta)[0](config, params=params), tok


def load_pretrained_tokenizer(path, name="last"):
    """The tokenizer of what load_pretrained(path, name) would load, without the weights."""
    if interop.is_hf_dir(path):
        return load_tokenizer(path)
    return rundir.run_tokenizer(path, rundir.read_meta(path, name, PRETRAINING_KIND), name)


def _require_mlm(model):
    if "mlm.bias" not in model.params:
        raise ValueError(f"this model ({type(model).__name__}) has no MLM head, so it cannot fill in [MASK]: load "
                         "a BertForPreTraining or BertForMaskedLM checkpoint")


def fill_mask(model, tok, texts, top_k=5, skip_special=True):
    """Top-k (token string, probability) for each [MASK] in text (or each text of a list).

    Probabilities are the softmax over the whole vocabulary; skip_special leaves special
    tokens out of the ranking (False: the same list as transformers' fill-mask pipeline).
    Returns one list per [MASK] for a single text, a list of such lists for a list of texts."""
    _require_mlm(model)
    single = isinstance(texts, str)
    results = [_fill_one(model, tok, t, top_k, skip_special) for t in ([texts] if single else texts)]
    return results[0] if single else results


def _fill_one(model, tok, text, top_k, skip_special):
    pad, cls, sep, mask = (tok.token_to_id(s) for s in SPECIAL_TOKENS)
    ids = tok.encode(text.replace(" [MASK]", "[MASK]"), allowed_special={"[MASK]"})
    if mask not in ids:
        raise ValueError(f"no [MASK] in {text!r}")
    ids = [cls] + ids[: model.config.max_position - 2] + [sep]
    T = len(ids)
    # labels mark where the MLM head computes logits; a next_sentence_label the MLM-only model ignores
    labels = np.full((1, T), IGNORE_INDEX, np.int64)  # (1, T)
    pos = [i for i, t in enumerate(ids) if t == mask]
    labels[0, pos] = mask  # any valid id: it only marks where MLM logits are computed
    batch = {"input_ids": np.array([ids], np.int64), "token_type_ids": np.zeros((1, T), np.int64),
             "attention_mask": np.ones((1, T), np.int64), "labels": labels,
             "next_sentence_label": np.zeros(1, np.int64)}
    logits = np.asarray(backend.to_host(model.predict(batch)["mlm_logits"]), np.float64)  # (P, V)
    probs = np.exp(logits - logits.max(1, keepdims=True))  # (P, V)
    probs /= probs.sum(1, keepdims=True)
    ranked = -probs  # (P, V)
    if skip_special:  # ranked last, so never proposed; the probabilities stay the model's
        ranked[:, sorted(set(tok.special_tokens.values()) | {pad})] = np.inf
    out = []
    for row, key in zip(probs, ranked):
        best = np.argsort(key, kind="stable")[:top_k]
        out.append([(tok.decode([int(i)]), float(row[i])) for i in best])
    return out


def mask_examples(docs, tok, n, seed=0):
    """n (text with one word replaced by [MASK], the word) pairs from documents' sentences."""
    rng = np.random.default_rng(seed)
    sentences = [s for d in docs for s in d.sentences if 30 <= len(s) <= 120]
    out = []
    for i in rng.permutation(len(sentences)):
        words = list(re.finditer(r"(?<= )[A-Za-z]{4,}(?=[ .,;:])", sentences[int(i)]))
        if not words:
            continue
        m = words[int(rng.integers(len(words)))]
        s = sentences[int(i)]
        out.append((s[:m.start()] + "[MASK]" + s[m.end():], " " + m.group()))
        if len(out) == n:
            break
    return out


# ----------------------------------------------------------------------------------------
# a look inside: attention maps


def encode_for_model(tok, text, text_pair=None, max_length=512):
    """([CLS] A [SEP] (B [SEP]) ids, token types) as the models see a text (and a pair)."""
    cls, sep = tok.token_to_id(SPECIAL_TOKENS[1]), tok.token_to_id(SPECIAL_TOKENS[2])
    a = tok.encode(text)
    ids, types = [cls] + a + [sep], [0] * (len(a) + 2)
    if text_pair is not None:
        b = tok.encode(text_pair)
        ids, types = ids + b + [sep], types + [1] * (len(b) + 1)
    if len(ids) > max_length:
        raise ValueError(f"the text is {len(ids)} tokens with [CLS] and [SEP]; the model takes at most {max_length}")
    return ids, types


def attention_maps(model, tok, text, text_pair=None):
    """(tokens, probs): the T token strings of [CLS] text [SEP] (text_pair [SEP]), and the
    attention probabilities of every layer and head, probs (L, A, T, T) on the host:
    probs[l, a, i, j] is how much query position i of head a in layer l attends to key j
    (each row sums to 1). Read from the encoder's forward cache, evaluation mode."""
    ids, types = encode_for_model(tok, text, text_pair, model.config.max_position)
    T = len(ids)
    db = to_device_batch({"input_ids": np.array([ids], np.int64), "token_type_ids": np.array([types], np.int64),
                          "attention_mask": np.ones((1, T), np.int64)})
    _, cache = encoder_forward(model.params, model.config, db["input_ids"], db["token_type_ids"],
                               db["attention_mask"], rng=None)
    probs = np.stack([np.asarray(backend.to_host(cl.c_attn.probs[0]), np.float64)
                      for cl in cache.c_layers])  # (L, A, T, T)
    return [tok.decode([i]) for i in ids], probs


def head_pattern(tokens, p):
    """Where one head looks, from its (T, T) map p: the pattern that takes the largest share
    of attention averaged over query positions, as (name, share). The patterns of Clark et
    al. 2019, "What does BERT look at?": the previous token, the next token, the token
    itself, [CLS], [SEP]; "broad" when none of them holds a third of the attention."""
    T = p.shape[0]
    idx = np.arange(T)
    share = {
        "previous token": float(p[idx[1:], idx[1:] - 1].sum() / T),
        "next token": float(p[idx[:-1], idx[:-1] + 1].sum() / T),
        "itself": float(np.trace(p) / T),
        SPECIAL_TOKENS[1]: float(p[:, [i for i, t in enumerate(tokens) if t == SPECIAL_TOKENS[1]]].sum() / T),
        SPECIAL_TOKENS[2]: float(p[:, [i for i, t in enumerate(tokens) if t == SPECIAL_TOKENS[2]]].sum() / T),
    }
    name = max(share, key=share.get)
    return (name, share[name]) if share[name] >= 1 / 3 else ("broad", float(p.max(axis=1).mean()))


def attention_summary(tokens, probs, layers=None, heads=None):
    """One line per (layer, head): its pattern (head_pattern), the share of attention it
    takes, and the most attended key of each query ("Return -> the"), for reading without
    a picture."""
    L, A = probs.shape[:2]
    lines = []
    for l in (range(L) if layers is None else layers):
        for a in (range(A) if heads is None else heads):
            p = probs[l, a]  # (T, T)
            name, share = head_pattern(tokens, p)
            what = f"max weight {share:.2f} on average" if name == "broad" else f"{share:.0%} of attention"
            top = ", ".join(f"{tokens[i].strip()}->{tokens[int(j)].strip()}" for i, j in enumerate(p.argmax(1)))
            lines.append(f"layer {l} head {a}: {name} ({what}) | {top}")
    return "\n".join(lines)


def plot_attention(tokens, probs, path, layers=None, heads=None, title=None):
    """A PNG at path: one heatmap per (layer, head), queries down, keys across, tokens on
    both axes, darker = more attention. Needs matplotlib (the `plot` extra)."""
    # imported here, not at the top: matplotlib is optional (pip install -e ".[plot]")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(probs.shape[0])) if layers is None else list(layers)
    heads = list(range(probs.shape[1])) if heads is None else list(heads)
    T = len(tokens)
    size = 1.2 + 0.16 * T  # inches per map: room for the token labels
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(size * len(heads), size * len(layers)), squeeze=False)
    labels = [t.strip() or repr(t) for t in tokens]
    for r, l in enumerate(layers):
        for c, a in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(probs[l, a], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {l} head {a}", fontsize=8)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
