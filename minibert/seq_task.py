"""Sequence classification (and regression) as a fine-tuning task: the adapter finetune.py's
loop runs for --task seq, and its metrics, evaluation, checkpoints and prediction.

    model, tok, meta = load_classifier("runs/task")
    predict(model, tok, meta, ["Return the socket's file descriptor."])  -> [[("socket", 0.83), ...]]

An adapter (this one, tag_task.TagTask, qa_task.QATask, choice_task.ChoiceTask) tells the loop
how to read, encode, batch and evaluate its task, which head to put on the encoder and what
its checkpoints carry; the loop, the recipe and exact resume are finetune.py's.

Metrics: accuracy; macro-F1, the unweighted mean of per-class F1 = 2 TP / (2 TP + FP + FN)
over the classes present (scikit-learn's f1_score(average="macro")); the confusion matrix;
for regression, MSE and Pearson's r. Without a data file the task is the default one
(task_data.default_task), evaluated only on documents pretraining held out.
"""
import numpy as np

from minibert import backend, rundir
from minibert.classifier import BertForSequenceClassification
from minibert.task_data import (
    Example, batches, class_counts, default_task, encode_examples, label_ids, label_names_from,
    length_grouped_batches, read_examples, split_examples, subsample_per_class,
)
from minibert.tokenizer import SPECIAL_TOKENS


def log(msg):
    print(msg, flush=True)


MAX_CLASSES_SHOWN = 12  # the confusion matrix is printed only up to this many classes


# ----------------------------------------------------------------------------------------
# metrics and evaluation


def accuracy(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def confusion_matrix(y_true, y_pred, num_classes):
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def per_class_f1(cm):
    """F1 = 2 TP / (2 TP + FP + FN) per class (0 where the denominator is 0)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp  # predicted as the class, but another class
    fn = cm.sum(axis=1) - tp  # of the class, predicted as another
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y_true, y_pred, num_classes):
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred
    (scikit-learn's f1_score(average="macro") with its default labels)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else 0.0


def format_confusion(cm, names):
    """The confusion matrix as a text table: rows true, columns predicted, and each row's recall."""
    short = [n[:10] for n in names]
    w = max(5, max(len(s) for s in short), len(str(int(cm.max()))))
    first = max(len("true\\pred"), max(len(s) for s in short))
    lines = ["true\\pred".ljust(first) + " " + " ".join(s.rjust(w) for s in short) + "  recall"]
    for i, s in enumerate(short):
        n = cm[i].sum()
        rec = f"{cm[i, i] / n:.2f}" if n else "-"
        lines.append(s.ljust(first) + " " + " ".join(str(int(v)).rjust(w) for v in cm[i]) + f"  {rec:>6}")
    return "\n".join(lines)


def evaluate(model, encoded, labels, batch_size, pad_id):
    """Loss and metrics of the model on encoded examples with labels.

    Classification: loss, acc, macro_f1, confusion (C x C list), preds; regression: loss
    (MSE), pearson, preds."""
    # in order of length, so that batches carry little padding; results put back in order
    order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")  # (N,)
    preds, loss_sum = [], 0.0
    for batch in batches(encoded, labels, batch_size, pad_id, order):
        out = model.predict(batch)
        loss_sum += float(out["loss"]) * out["count"]
        preds.append(np.asarray(backend.to_host(out["preds"])))
    preds = np.concatenate(preds)[np.argsort(order)]  # (N,) in the examples' order
    res = {"loss": loss_sum / len(encoded), "examples": len(encoded)}
    if model.is_regression:
        y = np.asarray(labels, np.float64)
        ok = preds.std() > 0 and y.std() > 0
        res["pearson"] = float(np.corrcoef(preds, y)[0, 1]) if ok else 0.0
        res["preds"] = preds.astype(np.float64).tolist()
        return res
    res["acc"] = accuracy(labels, preds)
    res["macro_f1"] = macro_f1(labels, preds, model.num_labels)
    res["confusion"] = confusion_matrix(labels, preds, model.num_labels).tolist()
    res["preds"] = preds.astype(np.int64).tolist()
    return res


# ----------------------------------------------------------------------------------------
# checkpoints and prediction


def save_task_model(out, name, kind, model, opt, tok, meta):
    """Write OUT/NAME atomically: params, AdamW state and a meta of KIND (any task's head)."""
    tensors, opt_meta = opt.state_dict() if opt is not None else ({}, None)
    meta = dict(meta, config=model.config.to_dict(), num_labels=getattr(model, "num_labels", None), optim=opt_meta)
    rundir.save(out, name, kind, model.params, tensors, meta, tok)


def save_classifier(out, name, model, opt, tok, meta):
    """Write OUT/NAME atomically: params, AdamW state and a "minibert-classification" meta."""
    save_task_model(out, name, rundir.CLASSIFICATION_KIND, model, opt, tok, meta)


def load_classifier(run_dir, name="last", dtype=None):
    """(BertForSequenceClassification, tokenizer, meta) from a fine-tuning run directory.

    meta holds label_names (None for regression), max_length, the columns and the recipe.
    A checkpoint of another kind is a CheckpointError."""
    config, params, meta, tok = rundir.load_run(run_dir, name, rundir.CLASSIFICATION_KIND, dtype)
    return BertForSequenceClassification(config, meta["num_labels"], params=params), tok, meta


def predict(model, tok, meta, texts, pairs=None, top_k=3, batch_size=32):
    """For each text (and pair): classification -> list of (label name, probability), the
    top_k most probable; regression -> the predicted value."""
    if isinstance(texts, str):
        texts = [texts]
    pairs = [None] * len(texts) if pairs is None else list(pairs)
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pair texts: give one pair per text")
    encoded = encode_examples(tok, [Example(t, p) for t, p in zip(texts, pairs)], meta["max_length"])
    pad = tok.token_to_id(SPECIAL_TOKENS[0])
    results = []
    for batch in batches(encoded, None, batch_size, pad):
        logits = np.asarray(backend.to_host(model.predict(batch)["logits"]), np.float64)  # (B, C)
        if model.is_regression:
            results += [float(v) for v in logits[:, 0]]
            continue
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))  # (B, C)
        probs /= probs.sum(axis=1, keepdims=True)
        for row in probs:
            best = np.argsort(-row, kind="stable")[:top_k]
            results.append([(meta["label_names"][int(i)], float(row[i])) for i in best])
    return results



# ----------------------------------------------------------------------------------------
# the data


def load_data(fc, heldout_fraction=0.05):
    """(train examples, validation examples, label names or None, description); heldout_fraction:
    the pretraining run's, whose held-out documents the default task evaluates on."""
    if not fc.train:
        if fc.regression:
            raise ValueError("the default task is classification; --regression needs --train")
        frac = heldout_fraction
        train, val, names = default_task(fc.num_classes, frac)
        what = (f"default task: stdlib package of a docstring, {len(names)} classes; train on documents "
                f"pretraining trained on, evaluate on the {len(val)} it held out (heldout_fraction {frac})")
    else:
        kw = dict(text_column=fc.text_column, pair_column=fc.pair_column, label_column=fc.label_column,
                  regression=fc.regression)
        train = read_examples(fc.train, **kw)
        if fc.validation:
            val = read_examples(fc.validation, **kw)
            what = f"train {fc.train}, validation {fc.validation}"
        else:
            train, val = split_examples(train, fc.valid_fraction, fc.seed)
            what = f"train {fc.train}, {fc.valid_fraction:.0%} held out for validation (seed {fc.seed})"
        names = None if fc.regression else label_names_from(train)
    if fc.train_per_class:
        if fc.regression:
            raise ValueError("--train-per-class needs class labels, not --regression")
        train = subsample_per_class(train, fc.train_per_class, fc.seed)
        what += f"; at most {fc.train_per_class} training examples per class"
    if not train:
        raise ValueError("empty split: no training examples")
    if not val:
        raise ValueError("empty split: no validation examples")
    if names is not None and len(names) < 2:
        raise ValueError(f"classification needs at least 2 labels in the training data, found {names}")
    return train, val, names, what


# ----------------------------------------------------------------------------------------
# the adapter


class SeqTask:
    """--task seq: BertForSequenceClassification on (text, pair) -> class (or value)."""
    name = "seq"
    kind = rundir.CLASSIFICATION_KIND
    list_keys = ("preds", "confusion")  # evaluation entries kept out of the metrics lines

    def load(self, fc, heldout_fraction):
        """Read the data; returns the description logged."""
        self.fc = fc
        self.train, self.val, self.names, what = load_data(fc, heldout_fraction)
        self.num_labels = 1 if fc.regression else len(self.names)
        self.shows_acc = not fc.regression
        return what

    def new_model(self, config, encoder, seed):
        """The model on the encoder params (None: freshly initialised)."""
        if encoder is None:
            return BertForSequenceClassification(config, self.num_labels, seed=seed)
        return BertForSequenceClassification.from_encoder(config, encoder, self.num_labels, seed=seed)

    def encode(self, tok):
        """Encode both splits; returns the training rows of an epoch."""
        fc = self.fc
        if fc.regression:
            self.y_train = np.array([e.label for e in self.train], np.float64)
            self.y_val = np.array([e.label for e in self.val], np.float64)
        else:
            self.y_train = label_ids(self.train, self.names, fc.train or "default task")
            where = (fc.validation or fc.train or "default task") + " (validation)"
            self.y_val = label_ids(self.val, self.names, where)
        self.enc_train = encode_examples(tok, self.train, fc.max_length)
        self.enc_val = encode_examples(tok, self.val, fc.max_length)
        return len(self.train)

    def epoch_batches(self, epoch, pad):
        fc = self.fc
        order = length_grouped_batches(self.enc_train, fc.batch_size, np.random.default_rng((fc.seed, epoch)))
        return batches(self.enc_train, self.y_train, fc.batch_size, pad, order)

    def data_lines(self):
        lines = [f"data: {len(self.train):,} training examples, {len(self.val):,} validation examples, "
                 f"{'regression' if self.fc.regression else f'{self.num_labels} classes'}"]
        if self.names is not None:
            ct, cv = class_counts(self.train, self.names), class_counts(self.val, self.names)
            lines.append("classes (train / validation): " + ", ".join(f"{n} {ct[n]}/{cv[n]}" for n in self.names))
        return lines

    def evaluate(self, model, pad):
        return evaluate(model, self.enc_val, self.y_val, self.fc.eval_batch_size, pad)

    def eval_line(self, epoch, ev):
        if self.fc.regression:
            return (f"eval  epoch {epoch} | mse {ev['loss']:.4f} | pearson {ev['pearson']:.3f} "
                    f"({len(self.val)} examples)")
        return (f"eval  epoch {epoch} | loss {ev['loss']:.3f} | acc {ev['acc']:.3f} | macro-F1 "
                f"{ev['macro_f1']:.3f} ({len(self.val)} examples)")

    def labels(self):
        """What the checkpoint, config.json and a resume record of the labels."""
        return {"label_names": self.names}

    def meta(self):
        fc = self.fc
        return {"task": "regression" if fc.regression else "classification", "label_names": self.names,
                "max_length": fc.max_length,
                "columns": {"text": fc.text_column, "text_pair": fc.pair_column, "label": fc.label_column}}

    def results(self, ev):
        out = {"label_names": self.names}
        if self.names is not None:
            out.update(train_class_counts=class_counts(self.train, self.names),
                       validation_class_counts=class_counts(self.val, self.names))
        return out

    def final_lines(self, ev):
        if self.names is not None and len(self.names) <= MAX_CLASSES_SHOWN:
            return ["confusion matrix on the validation examples (rows: true label, columns: predicted):",
                    format_confusion(np.array(ev["confusion"]), self.names)]
        return []

    def headline(self, ev):
        if self.fc.regression:
            return f"mse {ev['loss']:.4f} pearson {ev['pearson']:.3f}"
        return f"acc {ev['acc']:.3f} macro-F1 {ev['macro_f1']:.3f}"


# ----------------------------------------------------------------------------------------
# prediction with a saved run


def predict_run(run_dir, texts=None, pairs=None, path=None, top_k=3):
    """Classify texts (with pairs), or the examples of a data file `path`, with the fine-tuned
    run in run_dir; print each prediction, and the score when every example of the file has a
    label. Returns predict()'s results. An unknown label in the file is a ValueError."""
    model, tok, meta = load_classifier(run_dir)
    if path:
        cols = meta["columns"]
        examples = read_examples(path, cols["text"], cols["text_pair"], cols["label"],
                                 require_label=False, regression=model.is_regression)
        if not examples:
            raise ValueError(f"empty split: {path} holds no examples")
        texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    else:
        examples = None
    results = predict(model, tok, meta, texts, pairs, top_k=top_k)
    for text, r in zip(texts, results):
        shown = f"{r:.4f}" if model.is_regression else " | ".join(f"{n} {p:.2f}" for n, p in r)
        log(f"{shown}\t{text[:100]}")
    labelled = examples is not None and all(e.label is not None for e in examples)
    if labelled and not model.is_regression:
        names = meta["label_names"]
        y = label_ids(examples, names, path)  # an unknown label is a clear error
        pred = label_ids([Example("", None, r[0][0]) for r in results], names)
        cm = confusion_matrix(y, pred, len(names))
        log(f"accuracy {accuracy(y, pred):.3f} | macro-F1 {macro_f1(y, pred, len(names)):.3f} ({len(y)} examples)")
        if len(names) <= MAX_CLASSES_SHOWN:
            log(format_confusion(cm, names))
    elif labelled:
        y = np.array([e.label for e in examples])
        log(f"mse {float(np.mean((np.array(results) - y) ** 2)):.4f} ({len(y)} examples)")
    return results
