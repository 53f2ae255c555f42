"""Fine-tuning: the classifier's gradients, the MSE pair, metrics against hand-computed
values, data files, pair encoding, refusals with clear messages, and a tiny fine-tune end to
end (accuracy rises, the checkpoint predicts)."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_batch, tiny_config
from minibert import backend, philox
from minibert import finetune as finetune_module
from minibert.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minibert.classifier import BertForSequenceClassification
from minibert.compare import compare_pretraining
from minibert.corpus import default_corpus
from minibert.finetune import (
    FinetuneConfig, accuracy, build_model, confusion_matrix, finetune, load_classifier, macro_f1, predict,
    predict_run,
)
from minibert.gradcheck import GradientCheckError, check_directional, check_gradients
from minibert.losses import mse_backward, mse_forward
from minibert.model import BertConfig, BertForPreTraining
from minibert.rundir import CLASSIFICATION_KIND, read_meta, read_pretrained_encoder
from minibert.task_data import (
    Example, default_task, encode_example, label_ids, label_names_from, read_examples, split_examples,
    subsample_per_class,
)
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    """A program in scripts/ run as a user would: (exit code, stdout, stderr)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True, text=True,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


# ----------------------------------------------------------------------------------------
# gradients


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), C=st.sampled_from([1, 2, 5]), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 10**6))
def test_classifier_gradients_every_param(B, T, C, heads, dropout, seed):
    rng = np.random.default_rng(seed)
    c = tiny_config(num_heads=heads, dropout=dropout, attention_dropout=dropout)
    model = BertForSequenceClassification(c, C, seed=seed)
    for k, p in model.params.items():  # non-trivial LayerNorm weights and biases, and a non-zero head
        if p.ndim == 1 or k == "cls.w":
            p += backend.to_device(rng.standard_normal(p.shape) * 0.3)
    batch = make_batch(rng, B, T, c.vocab_size, num_labels=C)
    # the loss is the upstream: random labels make dlogits random (never all ones)
    f = lambda: model.loss_and_grads(batch, rng=philox.rng(seed))[0]
    _, grads = model.loss_and_grads(batch, rng=philox.rng(seed))
    assert grads.keys() == model.params.keys()
    check_gradients(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, max_coords=6, seed=seed)
    check_directional(f, model.params, grads, eps=1e-5, rtol=1e-5, atol=1e-7, seed=seed)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 7), seed=st.integers(0, 10**6))
def test_mse_pair(B, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.standard_normal(B) * 3, rng.standard_normal(B)
    dloss = float(rng.standard_normal())  # a random upstream
    loss, cache = mse_forward(pred, target)
    assert np.isclose(float(loss), np.mean([(p - t) ** 2 for p, t in zip(pred, target)]), rtol=1e-12)
    (dpred,) = mse_backward(dloss, cache)
    check_gradients(lambda: dloss * float(mse_forward(pred, target)[0]), {"pred": pred}, {"pred": dpred})


def test_checker_catches_a_wrong_mse_backward():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal(4), rng.standard_normal(4)
    (dpred,) = mse_backward(1.0, mse_forward(pred, target)[1])
    with pytest.raises(GradientCheckError):  # forgetting the 2 of d(x^2) = 2x
        check_gradients(lambda: float(mse_forward(pred, target)[0]), {"pred": pred}, {"pred": dpred / 2})


def test_fully_padded_row_and_no_grad_into_sequence():
    rng = np.random.default_rng(1)
    model = BertForSequenceClassification(tiny_config(), 3)
    batch = make_batch(rng, 3, 5, 23, num_labels=3, lengths=[5, 0, 2])
    batch["input_ids"] = rng.integers(0, 20, (3, 5))
    batch["input_ids"][2, 2:] = [20, 21, 22]  # ids that occur only at row 2's padded positions
    loss, grads = model.loss_and_grads(batch, train=False)
    assert np.isfinite(loss) and all(np.isfinite(backend.to_host(g)).all() for g in grads.values())
    # the fully padded row is defined: every score moved by the same constant, so it is
    # the row with nothing masked (softmax ignores a common shift)
    unmasked = dict(batch, attention_mask=np.vstack([batch["attention_mask"][:1]] * 3))
    np.testing.assert_allclose(backend.to_host(model.predict(batch)["logits"])[1],
                               backend.to_host(model.predict(unmasked)["logits"])[1], rtol=1e-9, atol=1e-12)
    # only the pooled [CLS] feeds the head, so no gradient enters the sequence output at any
    # other position; a padded position also feeds no real query (its keys are masked), so
    # the tokens sitting only there get exactly zero gradient
    dword = backend.to_host(grads["emb.word"])
    assert np.all(dword[20:] == 0.0)
    assert np.all(np.abs(dword[np.unique(batch["input_ids"][:2])]).sum(axis=1) > 0)  # the real ones do get some


def test_head_is_seeded_and_independent_of_the_encoder():
    c = tiny_config()
    a = BertForSequenceClassification(c, 4, seed=7)
    enc = {k: v for k, v in BertForSequenceClassification(c, 4, seed=99).params.items() if not k.startswith("cls.")}
    b = BertForSequenceClassification.from_encoder(c, enc, 4, seed=7)
    assert np.array_equal(a.params["cls.w"], b.params["cls.w"]) and float(abs(a.params["cls.b"]).sum()) == 0
    assert 0.01 < float(a.params["cls.w"].std()) < 0.03  # N(0, initializer_range = 0.02)
    assert not np.array_equal(a.params["cls.w"], BertForSequenceClassification(c, 4, seed=8).params["cls.w"])


@pytest.mark.parametrize("C, labels, message", [
    (3, np.array([0, 3]), "outside the classes"),
    (3, np.array([0.0, 1.0]), "integer ids"),
    (3, np.array([0, 1, 2]), "shape"),
    (1, np.array([0.5, np.nan]), "finite"),
])
def test_bad_labels(C, labels, message):
    model = BertForSequenceClassification(tiny_config(), C)
    batch = make_batch(np.random.default_rng(2), 2, 4, 23, num_labels=C)
    batch["labels"] = labels
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(batch)


def test_predict_without_labels():
    model = BertForSequenceClassification(tiny_config(), 3)
    batch = make_batch(np.random.default_rng(3), 2, 4, 23, num_labels=3)
    batch.pop("labels")
    out = model.predict(batch)
    assert out["logits"].shape == (2, 3) and "loss" not in out
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grads(batch)


# ----------------------------------------------------------------------------------------
# metrics, computed by hand


def test_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/4, class 1: 4/5, class 2: 2/3
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class absent from both truth and predictions does not count (scikit-learn's default)
    assert macro_f1(y_true, y_pred, 5) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class only predicted counts with F1 0
    assert macro_f1([0, 0], [0, 1], 2) == pytest.approx((2 / 3 + 0) / 2)


# ----------------------------------------------------------------------------------------
# data files


def write(path, text):
    path.write_text(text)
    return str(path)


def test_read_csv_tsv_jsonl(tmp_path):
    csv_ = write(tmp_path / "a.csv", 'text,label\n"Hello, world",pos\nbad one,neg\n')
    tsv = write(tmp_path / "a.tsv", 'text\ttext_pair\tlabel\nA "quoted\tB\t1\nC\t\t0\n')
    jl = write(tmp_path / "a.jsonl", '{"text": "x", "text_pair": "y", "label": 2}\n\n{"text": "z", "label": 10}\n')
    assert read_examples(csv_) == [Example("Hello, world", None, "pos"), Example("bad one", None, "neg")]
    assert read_examples(tsv) == [Example('A "quoted', "B", "1"), Example("C", None, "0")]
    ex = read_examples(jl)
    assert ex == [Example("x", "y", "2"), Example("z", None, "10")]
    assert label_names_from(ex) == ["2", "10"]  # integer names sort numerically
    assert label_names_from(read_examples(csv_)) == ["neg", "pos"]
    assert read_examples(jl, regression=True)[1].label == 10.0
    other = write(tmp_path / "b.csv", "sentence,y\nhi,a\n")
    assert read_examples(other, text_column="sentence", label_column="y") == [Example("hi", None, "a")]


def test_missing_column_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no column 'label'.*columns: \\['text'\\]"):
        read_examples(write(tmp_path / "a.csv", "text\nhello\n"))
    with pytest.raises(ValueError, match="no column 'text'"):
        read_examples(write(tmp_path / "b.jsonl", '{"sentence": "x", "label": 1}\n'))
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_examples(write(tmp_path / "c.jsonl", '{"text": "x", "label": 1}\n{oops\n'))
    with pytest.raises(ValueError, match="row 2 has no value for column 'label'"):
        read_examples(write(tmp_path / "d.jsonl", '{"text": "x", "label": 1}\n{"text": "y"}\n'))
    with pytest.raises(ValueError, match="not a number"):
        read_examples(write(tmp_path / "e.csv", "text,label\nx,high\n"), regression=True)
    with pytest.raises(ValueError, match="unknown data format"):
        read_examples(write(tmp_path / "f.txt", "text\n"))


def test_unknown_label_and_empty_split():
    with pytest.raises(ValueError, match="label 'maybe'.*not one of the model's labels \\['neg', 'pos'\\]"):
        label_ids([Example("x", None, "pos"), Example("y", None, "maybe")], ["neg", "pos"], "dev.csv")
    with pytest.raises(ValueError, match="empty split"):
        split_examples([Example("x", None, "a")] * 3, 0.1, seed=0)
    train, val = split_examples([Example(str(i), None, "a") for i in range(20)], 0.25, seed=0)
    assert len(train) == 15 and len(val) == 5 and not {e.text for e in train} & {e.text for e in val}


# ----------------------------------------------------------------------------------------
# encoding


@pytest.fixture(scope="module")
def tok():
    text = " ".join(["the cat sat on the mat", "a dog ran to the park", "good great fine", "bad awful poor"] * 20)
    return BPETokenizer.train_from_iterator([text], 300, special_tokens=SPECIAL_TOKENS, progress=False)


def test_pair_encoding_and_truncation(tok):
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    a, b = tok.encode("the cat sat", allowed_special="none"), tok.encode("a dog", allowed_special="none")
    ids, types = encode_example(tok, "the cat sat", None, 64, cls_id, sep_id)
    assert ids == [cls_id, *a, sep_id] and types == [0] * len(ids)
    ids, types = encode_example(tok, "the cat sat", "a dog", 64, cls_id, sep_id)
    assert ids == [cls_id, *a, sep_id, *b, sep_id] and types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # longest first, from the ends, B on a tie (worked by hand for segments of 8 and 3 tokens)
    a, b = tok.encode("the cat sat on the mat", allowed_special="none"), tok.encode("a dog", allowed_special="none")
    assert (len(a), len(b)) == (8, 3)
    ids, types = encode_example(tok, "the cat sat on the mat", "a dog", 3 + 6, cls_id, sep_id)
    assert ids == [cls_id, *a[:3], sep_id, *b, sep_id]  # (8, 3) -> (3, 3)
    ids, types = encode_example(tok, "the cat sat on the mat", "a dog", 3 + 4, cls_id, sep_id)
    assert ids == [cls_id, *a[:2], sep_id, *b[:2], sep_id]  # (3, 3) -> (3, 2) -> (2, 2)
    assert types == [0] * 4 + [1] * 3
    ids, _ = encode_example(tok, "the cat sat on the mat", None, 5, cls_id, sep_id)
    assert ids == [cls_id, *a[:3], sep_id]
    # a literal special-token string in user text is ordinary text
    ids, _ = encode_example(tok, "the [SEP] cat", None, 64, cls_id, sep_id)
    assert ids.count(sep_id) == 1


# ----------------------------------------------------------------------------------------
# end to end on a synthetic task


POS, NEG = ["good", "great", "fine"], ["bad", "awful", "poor"]


def synthetic_rows(n, seed, pair=False):
    """Sentiment by which word list the text uses; the filler words carry no signal."""
    rng = np.random.default_rng(seed)
    filler = "the cat sat on the mat a dog ran to the park".split()
    rows = []
    for _ in range(n):
        y = int(rng.integers(2))
        words = list(rng.choice(filler, 5)) + [rng.choice(POS if y else NEG)]
        rng.shuffle(words)
        row = {"text": " ".join(words), "label": "pos" if y else "neg"}
        if pair:
            row["text_pair"] = " ".join(rng.choice(filler, 3))
        rows.append(row)
    return rows


def fake_pretraining_run(path, tok, seed=123):
    """A pretraining run directory (tokenizer, kind "minibert-pretraining") of a tiny random BERT."""
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        max_position=64, dropout=0.0, attention_dropout=0.0)
    model = BertForPreTraining(config, seed=seed)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    save_checkpoint(str(path), "last", model.params, {}, {"kind": "minibert-pretraining", "config": config.to_dict(),
                                                          "step": 0, "tokenizer_fingerprint": tok.fingerprint()})
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tok):
    return fake_pretraining_run(tmp_path_factory.mktemp("pt") / "run", tok)


def test_tiny_finetune_learns_and_predicts(tmp_path, pretrained, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(256, 0, pair=True)))
    dev = tmp_path / "dev.csv"
    dev.write_text("text,text_pair,label\n" + "".join(f"{r['text']},{r['text_pair']},{r['label']}\n"
                                                       for r in synthetic_rows(64, 1, pair=True)))
    out = str(tmp_path / "ft")
    fc = FinetuneConfig(init=pretrained, train=str(train), validation=str(dev), epochs=4, lr=1e-2, batch_size=16,
                        max_length=32, out=out, log_every=4, warmup=0.1)
    model, tok_, res = finetune(fc)
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    evals = [r for r in recs if "eval_acc" in r]
    assert len(evals) == 4 and evals[-1]["eval_acc"] >= 0.95 and evals[-1]["eval_macro_f1"] >= 0.95
    train_recs = [r for r in recs if "loss" in r]
    assert train_recs[-1]["loss"] < 0.5 * train_recs[0]["loss"]
    assert res["confusion"] and np.array(res["confusion"]).sum() == 64
    printed = capsys.readouterr().out
    assert "classes (train / validation): neg" in printed and "true\\pred" in printed

    m2, t2, meta = load_classifier(out)
    assert meta["label_names"] == ["neg", "pos"] and meta["kind"] == "minibert-classification"
    (top,) = predict(m2, t2, meta, ["the cat sat great on the mat"], ["a dog"], top_k=2)
    assert top[0][0] == "pos" and top[0][1] > 0.5 and len(top) == 2

    # the program: predictions of texts, one line each
    rc, stdout, stderr = run_script("finetune.py", "--model", out, "--predict", "the dog was awful", "the mat is good")
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("neg") and lines[1].startswith("pos")

    # predict a labelled file: scored; a label the model does not know is a clear error
    predict_run(out, path=str(dev))
    assert "accuracy" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nthe cat is good,pos\nthe cat is bad,neutral\n")
    with pytest.raises(ValueError, match="'neutral', which is not one of the model's labels \\['neg', 'pos'\\]"):
        predict_run(out, path=str(bad))

    # an existing run is not overwritten by accident; the program says so and exits 1
    with pytest.raises(ValueError, match="--overwrite"):
        finetune(replace(fc, epochs=1))
    rc, _, stderr = run_script("finetune.py", "--from", pretrained, "--train", str(train), "--out", out)
    assert rc == 1 and stderr.startswith("error:") and "--overwrite" in stderr


def test_regression_finetune(tmp_path, pretrained):
    rows = synthetic_rows(256, 2)
    data = tmp_path / "r.csv"
    data.write_text("text,label\n" + "".join(f"{r['text']},{1.5 if r['label'] == 'pos' else -0.5}\n" for r in rows))
    out = str(tmp_path / "reg")
    model, _, res = finetune(FinetuneConfig(init=pretrained, train=str(data), regression=True, epochs=4, lr=1e-2,
                                            batch_size=16, max_length=32, out=out, valid_fraction=0.25))
    assert model.num_labels == 1 and res["pearson"] > 0.8
    m2, t2, meta = load_classifier(out)
    assert meta["task"] == "regression" and meta["label_names"] is None
    (v,) = predict(m2, t2, meta, ["the cat is great"])
    assert isinstance(v, float)


def test_refusals(tmp_path, pretrained):
    good = tmp_path / "g.csv"
    good.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in synthetic_rows(20, 3)))
    nolabel = tmp_path / "n.csv"
    nolabel.write_text("text,category\nhello,a\n")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    base = FinetuneConfig(init=pretrained, epochs=1, max_length=16)
    cases = [
        (dict(train=str(nolabel), out=str(tmp_path / "1")), "no column 'label'"),
        (dict(train=str(good), validation=str(empty), out=str(tmp_path / "2")), "empty split"),
        (dict(train=str(empty), validation=str(good), out=str(tmp_path / "3")), "empty split"),
        (dict(train=str(good), valid_fraction=0.01, out=str(tmp_path / "4")), "empty split"),
        (dict(train=str(good), max_length=1000, out=str(tmp_path / "5")), "max_position"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            finetune(replace(base, **kw))

    # checkpoints of the wrong kind
    ft = tmp_path / "ft"
    finetune(replace(base, train=str(good), out=str(ft), valid_fraction=0.25))
    with pytest.raises(CheckpointError, match="not a pretraining checkpoint.*'minibert-classification'"):
        read_pretrained_encoder(str(ft))
    with pytest.raises(CheckpointError, match="not a pretraining checkpoint"):
        finetune(replace(base, init=str(ft), train=str(good), out=str(tmp_path / "6")))
    with pytest.raises(CheckpointError, match="not a fine-tuned classifier.*'minibert-pretraining'"):
        load_classifier(pretrained)
    with pytest.raises(CheckpointError, match="not a fine-tuned classifier"):
        predict_run(pretrained, ["hello"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_after_interruption_is_exact(tmp_path, pretrained, monkeypatch, precision):
    """A fine-tune interrupted in its second epoch, resumed (--resume) from the checkpoint
    after the first, reaches bitwise the final parameters of an uninterrupted run (dropout
    on, so the dropout stream and the AdamW state must both carry over; fp16: the loss
    scaler's state too), and its metrics.jsonl has each logged step once."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(96, 4)))
    fc = FinetuneConfig(init=pretrained, train=str(data), epochs=3, lr=1e-2, batch_size=16, max_length=32,
                        dropout=0.1, log_every=2, out=str(tmp_path / "full"), precision=precision)
    finetune(fc)
    per_epoch = read_meta(fc.out, "last", CLASSIFICATION_KIND)["step"] // fc.epochs

    part = replace(fc, out=str(tmp_path / "part"))
    real_lr_at = finetune_module.lr_at

    def interrupt_in_epoch_2(step, *args):
        if step == per_epoch + 2:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)

    monkeypatch.setattr(finetune_module, "lr_at", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(part)
    monkeypatch.undo()
    assert read_meta(part.out, "last", CLASSIFICATION_KIND)["epoch"] == 1

    with pytest.raises(ValueError, match="--resume"):  # the run is there: not restarted by accident
        finetune(part)
    with pytest.raises(ValueError, match=r"settings differ.*'seed': \(0, 1\)"):
        finetune(replace(part, resume=True, seed=1))
    with pytest.raises(ValueError, match="no checkpoint"):
        finetune(replace(part, resume=True, out=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="choose one"):
        finetune(replace(part, resume=True, overwrite=True))
    finetune(replace(part, resume=True))

    a, b = load_checkpoint(fc.out, "last")[0], load_checkpoint(part.out, "last")[0]
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"  # bitwise
    steps = [[r["step"] for r in map(json.loads, open(os.path.join(d, "metrics.jsonl"))) if "loss" in r]
             for d in (fc.out, part.out)]
    assert steps[0] == steps[1]
    if precision == "fp16":  # the scaler's state went through the checkpoint
        assert read_meta(part.out, "last", CLASSIFICATION_KIND)["loss_scaler"]["growth_tracker"] == steps[0][-1]
    if precision != "fp32":  # and the precision is a setting a resume must match
        with pytest.raises(ValueError, match="settings differ.*precision"):
            finetune(replace(part, resume=True, precision="fp32"))


def test_random_init_keeps_shape_and_tokenizer(pretrained):
    fc = FinetuneConfig(init=pretrained, random_init=True, max_length=32)
    a, tok_a, what = build_model(fc, 3)
    config, encoder, _ = read_pretrained_encoder(pretrained)
    b = BertForSequenceClassification.from_encoder(config, encoder, 3)
    assert "random" in what and a.config == b.config and a.params.keys() == b.params.keys()
    assert not np.array_equal(a.params["emb.word"], b.params["emb.word"])
    assert np.array_equal(a.params["cls.w"], b.params["cls.w"])  # the same head: the runs differ by the encoder only


def test_default_task_evaluates_only_on_heldout_documents():
    train, held, names = default_task(num_classes=8)
    assert len(names) == 8 and names == sorted(names)
    assert {e.label for e in train} == set(names) and {e.label for e in held} <= set(names)
    held_texts = {d.text for d in default_corpus("heldout")}
    train_texts = {d.text for d in default_corpus("train")}
    assert all(e.text in held_texts for e in held) and not any(e.text in held_texts for e in train)
    assert all(e.text in train_texts for e in train) and len(held) > 50


def test_subsample_per_class():
    ex = [Example(str(i), None, "ab"[i % 2] if i < 10 else "c") for i in range(13)]
    sub = subsample_per_class(ex, 2, seed=0)
    assert sorted(e.label for e in sub) == ["a", "a", "b", "b", "c", "c"]
    assert [e.text for e in sub] == sorted((e.text for e in sub), key=int)  # input order kept
    assert sub == subsample_per_class(ex, 2, seed=0) and len(subsample_per_class(ex, 100, seed=0)) == 13


def test_compare_pretraining(tmp_path, pretrained, capsys):
    out = tmp_path / "cmp"
    res = compare_pretraining(pretrained, str(out), seeds=(0,), train_per_class=(0, 8), epochs=1, max_length=16,
                              num_classes=3, log_every=1000)
    assert res == json.loads((out / "results.json").read_text())
    assert [g["train_per_class"] for g in res["regimes"]] == [0, 8] and res["regimes"][1]["train_examples"] == 24
    for g in res["regimes"]:
        assert {"pretrained", "random"} <= set(g) and 0 <= g["random"]["acc"] <= 1
    table = (out / "results.md").read_text()
    assert "| (b) random |" in table and "held-out macro-F1" in table and table in capsys.readouterr().out


def test_compare_pretraining_command(tmp_path, pretrained):
    out = tmp_path / "cmp"
    rc, stdout, stderr = run_script("compare_pretraining.py", "--pretrained", pretrained, "--out", str(out),
                                    "--epochs", "1", "--max-length", "16", "--num-classes", "2",
                                    "--train-per-class", "4", "--log-every", "1000")
    assert rc == 0, stderr
    res = json.loads((out / "results.json").read_text())
    assert [g["train_per_class"] for g in res["regimes"]] == [4] and res["regimes"][0]["train_examples"] == 8
    assert "| (b) random |" in stdout
    rc, _, stderr = run_script("compare_pretraining.py", "--pretrained", str(tmp_path / "none"), "--out", str(out))
    assert rc == 1 and stderr.startswith("error:") and "Traceback" not in stderr
