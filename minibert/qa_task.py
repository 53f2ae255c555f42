"""Extractive question answering as a fine-tuning task (--task qa): the adapter finetune.py's
loop runs, and answering questions with a fine-tuned run.

    _, _, res = finetune(FinetuneConfig(task="qa", train="train-v1.1.json", validation="dev-v1.1.json",
                                        max_length=384))
    res["exact_match"], res["f1"]                      # percent, as the official SQuAD scripts
    answer("runs/qa", "Who wrote Python?", "Python was written by Guido.")  -> ("Guido", 0.93)

Data (qa_data.py): SQuAD v1.1/v2.0 JSON, or QAExample lists in memory; v2.0 when the config
says so, else when the training data does (its "version", an is_impossible key). Each
question becomes one feature per window of its context (max_length, doc_stride,
max_question_length); the training rows are the windows. Evaluation: qa_data.postprocess_qa
over every window of each question (n_best, max_answer_length, v2.0's null threshold), then
qa_metrics.squad_scores: exact match and F1 in percent. Without a training file the task is
the default one (default_tasks.default_qa_task, SQuAD v1.1: what a function returns, what a
parameter is), evaluated only on documents pretraining held out.

The score printed with an answer is transformers' question-answering pipeline's: within the
answer's window, softmax(start logits) * softmax(end logits) over the context tokens, at the
answer's start and end.
"""
import numpy as np

from minibert import backend, rundir
from minibert.default_tasks import default_qa_task
from minibert.qa_data import QAExample, encode_squad, gold_answers, postprocess_qa, qa_batch, read_squad
from minibert.qa_metrics import squad_scores
from minibert.question_answering import BertForQuestionAnswering
from minibert.task_data import length_grouped_batches, read_splits
from minibert.tokenizer import SPECIAL_TOKENS


def qa_logits(model, features, batch_size, pad):
    """(start logits, end logits: a (T_i,) array per feature, loss summed over the rows, rows)."""
    order = np.argsort([len(f.input_ids) for f in features], kind="stable")  # (N,) little padding per batch
    starts, ends, loss_sum = [None] * len(features), [None] * len(features), 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out = model.predict(qa_batch(features, idx, pad))
        st = np.asarray(backend.to_host(out["start_logits"]), np.float64)  # (B, T)
        en = np.asarray(backend.to_host(out["end_logits"]), np.float64)  # (B, T)
        loss_sum += float(out["loss"]) * len(idx)
        for r, i in enumerate(idx):
            n = len(features[i].input_ids)
            starts[i], ends[i] = st[r, :n], en[r, :n]
    return starts, ends, loss_sum, len(features)


def _default_data(fc, heldout_fraction):
    """(train, validation, description) of the default task (default_tasks.default_qa_task):
    trained on documents pretraining trained on, evaluated on those it held out."""
    if fc.validation:
        raise ValueError("--validation goes with --train: the default task is evaluated on the documents "
                         "pretraining held out")
    train, val = default_qa_task(heldout_fraction)
    return train, val, (f"default task: what a standard-library function returns, what its parameters are; train "
                        f"on documents pretraining trained on, evaluate on the {len(val)} questions of documents it "
                        f"held out (heldout_fraction {heldout_fraction})")


class QATask:
    """--task qa: BertForQuestionAnswering, start and end of the answer span."""
    name = "qa"
    kind = rundir.QA_KIND
    list_keys = ()
    shows_acc = False

    def load(self, fc, heldout_fraction):
        self.fc = fc
        found = []

        def read(path):
            examples, v2 = read_squad(path)
            found.append(v2)
            return examples
        if isinstance(fc.train, str) and not fc.train:
            self.train, self.val, what = _default_data(fc, heldout_fraction)
        else:
            self.train, self.val, what = read_splits(fc.train, fc.validation, read, fc.valid_fraction, fc.seed)
        for split, examples in (("training", self.train), ("validation", self.val)):
            if not examples:
                raise ValueError(f"empty split: no {split} questions")
        if fc.version_2 is not None:
            self.version_2 = bool(fc.version_2)
        else:  # a v2.0 file, or an unanswerable question among examples given in memory
            self.version_2 = any(found) or any(e.is_impossible for e in self.train + self.val)
        if not self.version_2 and any(e.is_impossible or not e.answers for e in self.train + self.val):
            raise ValueError("a question has no answer (is_impossible), which SQuAD v1.1 does not allow: "
                             "pass --version-2")
        return what + f"; SQuAD v{'2.0' if self.version_2 else '1.1'}"

    def new_model(self, config, encoder, seed):
        if encoder is None:
            return BertForQuestionAnswering(config, seed=seed)
        return BertForQuestionAnswering.from_encoder(config, encoder, seed=seed)

    def encode(self, tok):
        fc = self.fc
        kw = dict(max_length=fc.max_length, doc_stride=fc.doc_stride, max_question_length=fc.max_question_length)
        where = lambda x, split: x if isinstance(x, str) and x else f"{split} questions"
        self.enc_train = encode_squad(tok, self.train, where=where(fc.train, "training"), **kw)
        self.enc_val = encode_squad(tok, self.val, where=where(fc.validation, "validation"), **kw)
        return len(self.enc_train)

    def epoch_batches(self, epoch, pad):
        fc = self.fc
        lengths = [(f.input_ids, None) for f in self.enc_train]
        for idx in length_grouped_batches(lengths, fc.batch_size, np.random.default_rng((fc.seed, epoch))):
            yield qa_batch(self.enc_train, idx, pad)

    def data_lines(self):
        return [f"data: {len(self.train):,} training questions ({len(self.enc_train):,} windows), {len(self.val):,} "
                f"validation questions ({len(self.enc_val):,} windows); max length {self.fc.max_length}, doc stride "
                f"{self.fc.doc_stride}, question at most {self.fc.max_question_length} tokens"]

    def postprocess(self, examples, features, starts, ends):
        fc = self.fc
        return postprocess_qa(examples, features, starts, ends, n_best=fc.n_best,
                              max_answer_length=fc.max_answer_length, version_2=self.version_2,
                              null_threshold=fc.null_threshold)

    def evaluate(self, model, pad):
        starts, ends, loss_sum, n = qa_logits(model, self.enc_val, self.fc.eval_batch_size, pad)
        preds, _ = self.postprocess(self.val, self.enc_val, starts, ends)
        scores = squad_scores(gold_answers(self.val), preds, self.version_2)
        ev = {"loss": loss_sum / n, "exact_match": scores["exact"], "f1": scores["f1"], "questions": len(self.val),
              "windows": n}
        ev.update({k: v for k, v in scores.items() if k.startswith(("HasAns_", "NoAns_"))})
        return ev

    def eval_line(self, epoch, ev):
        return (f"eval  epoch {epoch} | loss {ev['loss']:.3f} | exact match {ev['exact_match']:.2f} | "
                f"F1 {ev['f1']:.2f} ({ev['questions']} questions, {ev['windows']} windows)")

    def labels(self):
        return {"version_2": self.version_2}

    def meta(self):
        fc = self.fc
        return {"task": "question-answering", "version_2": self.version_2, "max_length": fc.max_length,
                "doc_stride": fc.doc_stride, "max_question_length": fc.max_question_length, "n_best": fc.n_best,
                "max_answer_length": fc.max_answer_length, "null_threshold": fc.null_threshold}

    def results(self, ev):
        return {"version_2": self.version_2}

    def final_lines(self, ev):
        return []

    def headline(self, ev):
        return f"exact match {ev['exact_match']:.2f} F1 {ev['f1']:.2f}"


# ----------------------------------------------------------------------------------------
# prediction with a saved run


def load_qa(run_dir, name="last", dtype=None):
    """(BertForQuestionAnswering, tokenizer, meta) of a QA run; CheckpointError for another kind."""
    config, params, meta, tok = rundir.load_run(run_dir, name, rundir.QA_KIND, dtype)
    return BertForQuestionAnswering(config, params=params), tok, meta


def answer_questions(model, tok, meta, pairs, batch_size=32):
    """[(answer text, score), ...] for (question, context) pairs; ("", None) when a v2.0 run
    finds no answer."""
    examples = [QAExample(str(i), q, c) for i, (q, c) in enumerate(pairs)]
    features = encode_squad(tok, examples, meta["max_length"], meta["doc_stride"], meta["max_question_length"])
    starts, ends, _, _ = qa_logits(model, features, batch_size, tok.token_to_id(SPECIAL_TOKENS[0]))
    preds, _ = postprocess_qa(examples, features, starts, ends, n_best=meta["n_best"],
                              max_answer_length=meta["max_answer_length"], version_2=meta["version_2"],
                              null_threshold=meta["null_threshold"])
    out = []
    for e in examples:
        text = preds[e.id]
        score = None
        if text:
            fs = [f for f, feat in enumerate(features) if feat.example_index == int(e.id)]
            score = max(_best_window_score(features[f], starts[f], ends[f], e.context, text, meta["max_answer_length"])
                        for f in fs)
        out.append((text, score))
    return out


def _best_window_score(feature, start, end, context, text, max_answer_length):
    """max over the spans of this window that read `text` (at most max_answer_length tokens)
    of softmax(start)[s] * softmax(end)[t], each softmax over the context tokens."""
    ctx = np.array([o is not None for o in feature.offsets])  # (T,)
    ps = np.where(ctx, np.exp(start - start[ctx].max()), 0.0)  # (T,)
    pe = np.where(ctx, np.exp(end - end[ctx].max()), 0.0)  # (T,)
    ps, pe = ps / ps.sum(), pe / pe.sum()
    best = 0.0
    for s in np.flatnonzero(ctx):
        for t in range(s, min(s + max_answer_length, len(ctx))):
            if ctx[t] and context[feature.offsets[s][0]:feature.offsets[t][1]].strip() == text:
                best = max(best, float(ps[s] * pe[t]))
    return best


def answer(model_dir, question, context):
    """(answer text, score) of one question about a context with the run in model_dir."""
    model, tok, meta = load_qa(model_dir)
    return answer_questions(model, tok, meta, [(question, context)])[0]


def answer_run(run_dir, question, context):
    """Answer one question about a context with the run in run_dir; print the answer and its score."""
    text, score = answer(run_dir, question, context)
    print(f"{text}\tscore {score:.4f}" if text else "(no answer)", flush=True)
    return text, score
