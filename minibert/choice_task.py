"""Multiple choice as a fine-tuning task (--task choice): the adapter finetune.py's loop runs,
and choosing endings with a fine-tuned run.

    _, _, res = finetune(FinetuneConfig(task="choice", train="train.csv", validation="val.csv"))
    res["acc"]                                         # held-out accuracy
    choose("runs/choice", "She opened the door.", ["She walked in.", "The door ate lunch."])
      -> (0, [0.91, 0.09])

Data (choice_data.py): SWAG-style CSV/TSV or JSON lines, or ChoiceExample lists in memory;
every example of a split has the same number of endings C. Without a training file the task
is the default one (default_tasks.default_choice_task: which sentence comes next in a
docstring, of 4), evaluated only on documents pretraining held out. Each choice is [CLS] context
[SEP] ending [SEP]; batches are (B, C, T), length-grouped by each example's longest choice.
Evaluation: accuracy, the share of examples whose highest-scoring ending is the labelled one.
"""
import numpy as np

from minibert import backend, rundir
from minibert.choice_data import ChoiceExample, choice_batch, encode_choices, read_choices
from minibert.default_tasks import default_choice_task
from minibert.multiple_choice import BertForMultipleChoice
from minibert.task_data import length_grouped_batches, read_splits
from minibert.tokenizer import SPECIAL_TOKENS


def choice_logits(model, encoded, labels, batch_size, pad):
    """((N, C) logits in the examples' order, loss summed over the examples)."""
    order = np.argsort([max(len(ids) for ids, _ in e) for e in encoded], kind="stable")  # (N,)
    logits, loss_sum = [None] * len(encoded), 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out = model.predict(choice_batch(encoded, labels, idx, pad))
        lg = np.asarray(backend.to_host(out["logits"]), np.float64)  # (B, C)
        if labels is not None:
            loss_sum += float(out["loss"]) * len(idx)
        for r, i in enumerate(idx):
            logits[i] = lg[r]
    return logits, loss_sum


def _default_data(fc, heldout_fraction):
    """(train, validation, description) of the default task (default_tasks.default_choice_task):
    trained on documents pretraining trained on, evaluated on those it held out."""
    if fc.validation:
        raise ValueError("--validation goes with --train: the default task is evaluated on the documents "
                         "pretraining held out")
    train, val = default_choice_task(heldout_fraction)
    return train, val, (f"default task: which sentence comes next in a docstring; train on documents pretraining "
                        f"trained on, evaluate on the {len(val)} examples of documents it held out "
                        f"(heldout_fraction {heldout_fraction})")


class ChoiceTask:
    """--task choice: BertForMultipleChoice, one score per ending, softmax over the endings."""
    name = "choice"
    kind = rundir.CHOICE_KIND
    list_keys = ("preds",)
    shows_acc = True

    def load(self, fc, heldout_fraction):
        self.fc = fc
        if isinstance(fc.train, str) and not fc.train:
            self.train, self.val, what = _default_data(fc, heldout_fraction)
        else:
            self.train, self.val, what = read_splits(fc.train, fc.validation, read_choices, fc.valid_fraction,
                                                     fc.seed)
        for split, examples in (("training", self.train), ("validation", self.val)):
            if not examples:
                raise ValueError(f"empty split: no {split} examples")
            unlabelled = next((k for k, e in enumerate(examples) if e.label is None), None)
            if unlabelled is not None:
                raise ValueError(f"{split} example {unlabelled + 1} has no label ({what})")
            counts = {len(e.endings) for e in examples}
            if len(counts) > 1:
                raise ValueError(f"the {split} examples have different numbers of endings {sorted(counts)}")
        return what

    def new_model(self, config, encoder, seed):
        if encoder is None:
            return BertForMultipleChoice(config, seed=seed)
        return BertForMultipleChoice.from_encoder(config, encoder, seed=seed)

    def encode(self, tok):
        self.enc_train = encode_choices(tok, self.train, self.fc.max_length)
        self.enc_val = encode_choices(tok, self.val, self.fc.max_length)
        self.y_train = [e.label for e in self.train]
        self.y_val = [e.label for e in self.val]
        return len(self.enc_train)

    def epoch_batches(self, epoch, pad):
        fc = self.fc
        longest = [(max((ids for ids, _ in e), key=len), None) for e in self.enc_train]
        for idx in length_grouped_batches(longest, fc.batch_size, np.random.default_rng((fc.seed, epoch))):
            yield choice_batch(self.enc_train, self.y_train, idx, pad)

    def data_lines(self):
        return [f"data: {len(self.train):,} training examples, {len(self.val):,} validation examples, "
                f"{len(self.train[0].endings)} endings each"]

    def evaluate(self, model, pad):
        logits, loss_sum = choice_logits(model, self.enc_val, self.y_val, self.fc.eval_batch_size, pad)
        preds = [int(np.argmax(lg)) for lg in logits]
        acc = float(np.mean([p == y for p, y in zip(preds, self.y_val)]))
        return {"loss": loss_sum / len(self.val), "acc": acc, "examples": len(self.val), "preds": preds}

    def eval_line(self, epoch, ev):
        return f"eval  epoch {epoch} | loss {ev['loss']:.3f} | acc {ev['acc']:.3f} ({ev['examples']} examples)"

    def labels(self):
        return {}

    def meta(self):
        return {"task": "multiple-choice", "max_length": self.fc.max_length}

    def results(self, ev):
        return {}

    def final_lines(self, ev):
        return []

    def headline(self, ev):
        return f"acc {ev['acc']:.3f}"


# ----------------------------------------------------------------------------------------
# prediction with a saved run


def load_chooser(run_dir, name="last", dtype=None):
    """(BertForMultipleChoice, tokenizer, meta) of a multiple-choice run; CheckpointError for another kind."""
    config, params, meta, tok = rundir.load_run(run_dir, name, rundir.CHOICE_KIND, dtype)
    return BertForMultipleChoice(config, params=params), tok, meta


def choose_examples(model, tok, meta, examples, batch_size=32):
    """[(index of the best ending, [probability of each ending]), ...] per ChoiceExample."""
    encoded = encode_choices(tok, examples, meta["max_length"])
    logits, _ = choice_logits(model, encoded, None, batch_size, tok.token_to_id(SPECIAL_TOKENS[0]))
    out = []
    for lg in logits:
        p = np.exp(lg - lg.max())  # (C,)
        p /= p.sum()
        out.append((int(np.argmax(lg)), [float(v) for v in p]))
    return out


def choose(model_dir, context, endings):
    """(index of the best ending, [probability of each]) with the run in model_dir."""
    if len(endings) < 2:
        raise ValueError(f"{len(endings)} endings: a choice needs at least 2")
    model, tok, meta = load_chooser(model_dir)
    return choose_examples(model, tok, meta, [ChoiceExample(context, list(endings))])[0]


def choose_run(run_dir, context, endings):
    """Choose an ending with the run in run_dir; print each ending with its probability, the best marked."""
    best, probs = choose(run_dir, context, endings)
    for i, (e, p) in enumerate(zip(endings, probs)):
        print(f"{'*' if i == best else ' '} {p:.3f}  {e}", flush=True)
    return best, probs
