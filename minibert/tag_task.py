"""Token tagging as a fine-tuning task (--task tag): the adapter finetune.py's loop runs, and
prediction with a fine-tuned tagger.

    _, _, res = finetune(FinetuneConfig(task="tag", train="train.conll", validation="dev.conll"))
    res["entity_f1"]                                   # held-out entity-level F1, seqeval's default
    predict_tags("runs/tag", "Guido van Rossum wrote Python")  -> [("Guido", "B-PER"), ...]

Data (tag_data.py): CoNLL or JSON-lines sentences, or TaggedSentence lists in memory; tags
checked against the scheme (IOB2, IOB1, BIOES); the tag names, sorted, are the label ids.
Without a training file the task is the default one (default_tasks.default_tag_task: the
docstring words that name a parameter), evaluated only on documents pretraining held out.
Each word's label sits on its first sub-token; the loss and the token accuracy count those
positions only. Evaluation: entity-level precision, recall and F1 (tag_metrics.entity_scores,
micro over types), the tag of each word being the prediction at its first sub-token.
"""
import numpy as np

from minibert import backend, rundir
from minibert.default_tasks import PARAM_TAG, default_tag_task
from minibert.tag_data import (
    TaggedSentence, encode_tagged, encode_tagged_sentences, read_tagged, tag_batch, tag_names_from, word_tags,
)
from minibert.tag_metrics import check_scheme, entities, entity_scores
from minibert.task_data import length_grouped_batches, read_splits
from minibert.token_classifier import BertForTokenClassification
from minibert.tokenizer import SPECIAL_TOKENS


def tag_features(model, features, batch_size, pad):
    """(predicted tag ids per feature, (T_i,) each, loss summed over labelled positions, count)."""
    order = np.argsort([len(f.input_ids) for f in features], kind="stable")  # (N,) little padding per batch
    preds, loss_sum, count = [None] * len(features), 0.0, 0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out = model.predict(tag_batch(features, idx, pad))
        p = np.asarray(backend.to_host(out["preds"]))  # (B, T)
        loss_sum += float(out["loss"]) * out["count"]
        count += out["count"]
        for r, i in enumerate(idx):
            preds[i] = p[r, :len(features[i].input_ids)]
    return preds, loss_sum, count


def _default_data(fc, scheme, heldout_fraction):
    """(train, validation, description) of the default task (default_tasks.default_tag_task):
    trained on documents pretraining trained on, evaluated on those it held out."""
    if fc.validation:
        raise ValueError("--validation goes with --train: the default task is evaluated on the documents "
                         "pretraining held out")
    if scheme != "IOB2":  # its one-word entities are B-PARAM, which IOB1 and BIOES write otherwise
        raise ValueError(f"the default task is tagged IOB2 ({PARAM_TAG} and O); --scheme {scheme} needs --train")
    train, val = default_tag_task(heldout_fraction)
    return train, val, (f"default task: the docstring words that name a parameter of their function; train on "
                        f"documents pretraining trained on, evaluate on the {len(val)} sentences of documents it "
                        f"held out (heldout_fraction {heldout_fraction})")


class TagTask:
    """--task tag: BertForTokenClassification over the scheme's tags."""
    name = "tag"
    kind = rundir.TAGGING_KIND
    list_keys = ("per_type",)
    shows_acc = True  # token accuracy over the labelled (first sub-token) positions

    def load(self, fc, heldout_fraction):
        self.fc = fc
        self.scheme = check_scheme(fc.scheme, "--scheme")
        if isinstance(fc.train, str) and not fc.train:
            self.train, self.val, what = _default_data(fc, self.scheme, heldout_fraction)
        else:
            self.train, self.val, what = read_splits(fc.train, fc.validation,
                                                     lambda p: read_tagged(p, self.scheme), fc.valid_fraction, fc.seed)
        for split, sentences in (("training", self.train), ("validation", self.val)):
            if not sentences:
                raise ValueError(f"empty split: no {split} sentences")
            untagged = next((k for k, s in enumerate(sentences) if s.tags is None), None)
            if untagged is not None:
                raise ValueError(f"{split} sentence {untagged + 1} has no tags ({what}): a file of one column holds "
                                 "words to tag, not training data")
        self.names = tag_names_from(self.train)
        if len(self.names) < 2:
            raise ValueError(f"tagging needs at least 2 tags in the training data, found {self.names}")
        return what + f"; scheme {self.scheme}"

    def new_model(self, config, encoder, seed):
        if encoder is None:
            return BertForTokenClassification(config, len(self.names), seed=seed)
        return BertForTokenClassification.from_encoder(config, encoder, len(self.names), seed=seed)

    def encode(self, tok):
        fc = self.fc
        where = lambda x, split: x if isinstance(x, str) and x else f"{split} sentences"
        self.enc_train = encode_tagged_sentences(tok, self.train, self.names, fc.max_length,
                                                 where(fc.train, "training"))
        self.enc_val = encode_tagged_sentences(tok, self.val, self.names, fc.max_length,
                                               where(fc.validation, "validation") + " (validation)")
        return len(self.enc_train)

    def epoch_batches(self, epoch, pad):
        fc = self.fc
        lengths = [(f.input_ids, None) for f in self.enc_train]
        for idx in length_grouped_batches(lengths, fc.batch_size, np.random.default_rng((fc.seed, epoch))):
            yield tag_batch(self.enc_train, idx, pad)

    def data_lines(self):
        words = sum(len(s.words) for s in self.train)
        return [f"data: {len(self.train):,} training sentences ({words:,} words), {len(self.val):,} validation "
                f"sentences, {len(self.names)} tags: {' '.join(self.names)}"]

    def evaluate(self, model, pad):
        preds, loss_sum, count = tag_features(model, self.enc_val, self.fc.eval_batch_size, pad)
        predicted = [word_tags(f, p, self.names, len(s.words)) for f, p, s in zip(self.enc_val, preds, self.val)]
        correct = sum(int(((p == np.array(f.labels)) & (np.array(f.labels) >= 0)).sum())
                      for f, p in zip(self.enc_val, preds))
        scores = entity_scores([s.tags for s in self.val], predicted)
        return {"loss": loss_sum / max(count, 1), "token_acc": correct / max(count, 1),
                "entity_precision": scores["precision"], "entity_recall": scores["recall"],
                "entity_f1": scores["f1"], "entities": scores["support"], "sentences": len(self.val),
                "per_type": scores["per_type"]}

    def eval_line(self, epoch, ev):
        return (f"eval  epoch {epoch} | loss {ev['loss']:.3f} | token acc {ev['token_acc']:.3f} | entity P "
                f"{ev['entity_precision']:.3f} R {ev['entity_recall']:.3f} F1 {ev['entity_f1']:.3f} "
                f"({ev['entities']} entities in {len(self.val)} sentences)")

    def labels(self):
        return {"label_names": self.names, "scheme": self.scheme}

    def meta(self):
        return {"task": "tagging", "label_names": self.names, "scheme": self.scheme, "max_length": self.fc.max_length}

    def results(self, ev):
        return {"label_names": self.names, "scheme": self.scheme}

    def final_lines(self, ev):
        return [f"  {t:<12} P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f} ({s['support']} entities)"
                for t, s in ev["per_type"].items()]

    def headline(self, ev):
        return f"entity F1 {ev['entity_f1']:.3f} (P {ev['entity_precision']:.3f} R {ev['entity_recall']:.3f})"


# ----------------------------------------------------------------------------------------
# prediction with a saved run


def load_tagger(run_dir, name="last", dtype=None):
    """(BertForTokenClassification, tokenizer, meta) of a tagging run; CheckpointError for another kind."""
    config, params, meta, tok = rundir.load_run(run_dir, name, rundir.TAGGING_KIND, dtype)
    return BertForTokenClassification(config, meta["num_labels"], params=params), tok, meta


def tag_sentences(model, tok, meta, sentences, batch_size=32):
    """The predicted tag of every word of each sentence (a string, split on white space, or a
    list of words, or a TaggedSentence): a list of [(word, tag), ...] per sentence."""
    sentences = [s if isinstance(s, TaggedSentence) else TaggedSentence(s.split() if isinstance(s, str) else list(s))
                 for s in sentences]
    index = {t: i for i, t in enumerate(meta["label_names"])}
    features = [encode_tagged(tok, TaggedSentence(s.words), index, meta["max_length"]) for s in sentences]
    pad = tok.token_to_id(SPECIAL_TOKENS[0])
    preds = tag_features(model, features, batch_size, pad)[0] if features else []
    return [list(zip(s.words, word_tags(f, p, meta["label_names"], len(s.words))))
            for s, f, p in zip(sentences, features, preds)]


def predict_tags(model_dir, sentence):
    """[(word, tag), ...] of one sentence (a string or a list of words) with the run in model_dir."""
    model, tok, meta = load_tagger(model_dir)
    return tag_sentences(model, tok, meta, [sentence])[0]


def format_tagged(pairs):
    """One line: each word, with /TAG after it unless its tag is O, and the entities found."""
    words = " ".join(w if t == "O" else f"{w}/{t}" for w, t in pairs)
    ents = [f"{typ}: {' '.join(w for w, _ in pairs[a:b + 1])}" for typ, a, b in entities([t for _, t in pairs])]
    return words + ("\t" + " | ".join(ents) if ents else "")


def predict_tags_run(run_dir, texts=None, path=None):
    """Tag the texts, or the sentences of a CoNLL/JSON-lines file, with the run in run_dir; print
    each, and the entity scores when the file has tags. Returns [[(word, tag), ...], ...]."""
    model, tok, meta = load_tagger(run_dir)
    sentences = read_tagged(path, meta["scheme"]) if path else [TaggedSentence(t.split()) for t in texts]
    results = tag_sentences(model, tok, meta, sentences)
    for r in results:
        print(format_tagged(r), flush=True)
    if path and all(s.tags is not None for s in sentences):
        scores = entity_scores([s.tags for s in sentences], [[t for _, t in r] for r in results])
        print(f"entity P {scores['precision']:.3f} R {scores['recall']:.3f} F1 {scores['f1']:.3f} "
              f"({scores['support']} entities in {len(sentences)} sentences)", flush=True)
    return results
