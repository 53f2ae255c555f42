"""The tagging, question-answering and multiple-choice programs end to end, on a tiny random
BERT with a hand-made WordPiece vocabulary and data written here: each trains (and learns its
toy task), resumes bitwise exactly, predicts from Python and from scripts/finetune.py, and
exports to a directory transformers' pipelines read, which give the same entities and answers
as minibert (skipped without transformers). Bad input is one line naming the file, and
nothing is written."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from minibert import finetune as finetune_module
from minibert.checkpoint import CheckpointError, load_checkpoint
from minibert.choice_data import ChoiceExample
from minibert.finetune import (
    FinetuneConfig, answer, choose, finetune, load_tagger, predict_tags, predict_with_run,
)
from minibert.interop import export_run
from minibert.qa_data import QAExample
from minibert.rundir import CHOICE_KIND, QA_KIND, TAGGING_KIND, read_meta
from minibert.tag_data import TaggedSentence
from minibert.tag_metrics import entities
from minibert.wordpiece import WordPieceTokenizer
from test_finetune import fake_pretraining_run, run_script

PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "rome", "oslo"]
FILLER = ["the", "a", "went", "to", "saw", "in", "met", "and", "today", "big", "city", "with", "was", "born"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "where", "did", "go", "?", ".", "yes", "no"]
         + PEOPLE + PLACES + FILLER)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tok = WordPieceTokenizer(VOCAB)
    return fake_pretraining_run(tmp_path_factory.mktemp("pt_wp") / "run", tok, seed=5)


def tagged_sentences(n, seed):
    """Sentences of filler words, people (PER) and places (LOC), IOB2."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(int(rng.integers(4, 8))):
            r = rng.random()
            if r < 0.2:
                words.append(str(rng.choice(PEOPLE)))
                tags.append("B-PER")
            elif r < 0.35:
                words += [str(rng.choice(PLACES)), "city"]
                tags += ["B-LOC", "I-LOC"]
            else:
                words.append(str(rng.choice(FILLER[:9])))
                tags.append("O")
        out.append(TaggedSentence(words, tags))
    return out


def write_conll(path, sentences):
    path.write_text("-DOCSTART- -X- O O\n\n" + "\n\n".join(
        "\n".join(f"{w} X {t}" for w, t in zip(s.words, s.tags)) for s in sentences) + "\n")
    return str(path)


def squad_examples(n, seed):
    """"who went to P ?" about "X went to P and Y saw Q ." : the answer is X (the first person)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.choice(PEOPLE, 2, replace=False)
        p, q = rng.choice(PLACES, 2, replace=False)
        context = f"today {x} went to {p} and {y} saw {q} ."
        out.append(QAExample(f"{seed}-{i}", f"who went to {p} ?", context, [(str(x), context.index(f" {x} ") + 1)]))
    return out


def write_squad(path, examples):
    data = [{"title": "t", "paragraphs": [{"context": e.context, "qas": [
        {"id": e.id, "question": e.question, "answers": [{"text": t, "answer_start": s} for t, s in e.answers]}]}]}
        for e in examples]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def choice_examples(n, seed):
    """The right ending names the person of the context; the others another person."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        people = list(rng.choice(PEOPLE, 3, replace=False))
        label = int(rng.integers(3))
        others = iter(people[1:])
        endings = [f"{people[0] if c == label else next(others)} was born in {rng.choice(PLACES)}" for c in range(3)]
        out.append(ChoiceExample(f"{people[0]} went to the city", endings, label))
    return out


def write_swag(path, examples):
    rows = ["sent1,sent2,ending0,ending1,ending2,label"]
    rows += [f"{e.context},,{e.endings[0]},{e.endings[1]},{e.endings[2]},{e.label}" for e in examples]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def check_resume_exact(tmp_path, fc, monkeypatch, kind):
    """A run interrupted in its second epoch and resumed reaches bitwise the uninterrupted run's params."""
    finetune(fc)
    per_epoch = read_meta(fc.out, "last", kind)["step"] // fc.epochs
    part = replace(fc, out=str(tmp_path / "part"))
    real_lr_at = finetune_module.lr_at

    def interrupt(step, *args):
        if step == per_epoch + 1:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)

    monkeypatch.setattr(finetune_module, "lr_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(part)
    monkeypatch.undo()
    assert read_meta(part.out, "last", kind)["epoch"] == 1
    with pytest.raises(ValueError, match=r"settings differ.*'seed': \(0, 1\)"):
        finetune(replace(part, resume=True, seed=1))
    finetune(replace(part, resume=True))
    a, b = load_checkpoint(fc.out, "last")[0], load_checkpoint(part.out, "last")[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------
# tagging


def test_tagging_trains_resumes_predicts_and_exports(tmp_path, pretrained, monkeypatch, capsys):
    train = write_conll(tmp_path / "train.conll", tagged_sentences(160, 0))
    dev = write_conll(tmp_path / "dev.conll", tagged_sentences(40, 1))
    out = str(tmp_path / "tag")
    fc = FinetuneConfig(task="tag", init=pretrained, train=train, validation=dev, epochs=3, lr=2e-2, batch_size=16,
                        max_length=32, out=out, log_every=5)
    _, _, res = finetune(fc)
    assert res["entity_f1"] > 0.9 and res["label_names"] == ["B-LOC", "B-PER", "I-LOC", "O"]
    assert json.loads(open(os.path.join(out, "results.json")).read())["entity_f1"] == res["entity_f1"]
    evals = [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "eval_entity_f1" in r]
    assert len(evals) == 3
    assert "entity P" in capsys.readouterr().out

    pairs = predict_tags(out, "today alice went to rome city")
    assert pairs == [("today", "O"), ("alice", "B-PER"), ("went", "O"), ("to", "O"), ("rome", "B-LOC"),
                     ("city", "I-LOC")]
    rc, stdout, stderr = run_script("finetune.py", "--model", out, "--predict", "bob saw oslo city")
    assert rc == 0, stderr
    assert stdout.strip() == "bob/B-PER saw oslo/B-LOC city/I-LOC\tPER: bob | LOC: oslo city"

    rc, stdout, stderr = run_script("finetune.py", "--model", out, "--predict-file", dev)
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 41 and lines[-1].startswith("entity P ") and "F1 " in lines[-1]

    # in-memory sentences give the same run as the files
    mem = replace(fc, train=tagged_sentences(160, 0), validation=tagged_sentences(40, 1), out=str(tmp_path / "mem"),
                  epochs=1)
    _, _, res_mem = finetune(mem)
    assert 0 <= res_mem["entity_f1"] <= 1

    check_resume_exact(tmp_path, replace(fc, out=str(tmp_path / "full"), epochs=2, dropout=0.1), monkeypatch,
                       TAGGING_KIND)
    export_and_compare_tagging(tmp_path, out, ["today alice went to rome city", "carol met dave in london city"])


def export_and_compare_tagging(tmp_path, out, sentences):
    hf = str(tmp_path / "hf_tag")
    rc, _, stderr = run_script("export_hf.py", "--model", out, "--out", hf)
    assert rc == 0, stderr
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    model, tok, meta = load_tagger(out)
    pipe = transformers.pipeline("token-classification", model=hf, aggregation_strategy="first", device="cpu")
    for s in sentences:
        words = s.split()
        starts = [len(" ".join(words[:i])) + (i > 0) for i in range(len(words))]
        tags = [t for _, t in predict_tags(out, s)]
        ours = [(typ, starts[a], starts[b] + len(words[b])) for typ, a, b in entities(tags)]
        theirs = [(e["entity_group"], e["start"], e["end"]) for e in pipe(s)]
        assert ours == theirs and ours


# ----------------------------------------------------------------------------------------
# question answering


def test_qa_trains_resumes_answers_and_exports(tmp_path, pretrained, monkeypatch):
    train = write_squad(tmp_path / "train.json", squad_examples(200, 0))
    dev = write_squad(tmp_path / "dev.json", squad_examples(40, 1))
    out = str(tmp_path / "qa")
    fc = FinetuneConfig(task="qa", init=pretrained, train=train, validation=dev, epochs=4, lr=2e-2, batch_size=16,
                        max_length=32, doc_stride=8, out=out, log_every=10)
    _, _, res = finetune(fc)
    assert res["exact_match"] > 90 and res["f1"] > 90 and res["version_2"] is False

    context = "today carol went to oslo and bob saw rome ."
    text, score = answer(out, "who went to oslo ?", context)
    assert text == "carol" and 0 < score <= 1
    rc, stdout, stderr = run_script("finetune.py", "--model", out, "--question", "who went to oslo ?",
                                    "--context", context)
    assert rc == 0, stderr
    assert stdout.startswith("carol\tscore ")
    rc, stdout2, _ = run_script("finetune.py", "--model", out, "--predict", "who went to oslo ?", context)
    assert stdout2 == stdout

    check_resume_exact(tmp_path, replace(fc, out=str(tmp_path / "full"), epochs=2, dropout=0.1), monkeypatch,
                       QA_KIND)

    # SQuAD v2.0 from examples in memory: an unanswerable question among them makes the run v2.0
    unanswerable = [QAExample(f"none-{i}", f"who went to {p} ?", e.context, [], True)
                    for i, (e, p) in enumerate(zip(squad_examples(30, 3), PLACES * 8))
                    if f"to {p} " not in e.context]
    v2 = replace(fc, train=squad_examples(100, 0) + unanswerable, validation=squad_examples(10, 1) + unanswerable[:5],
                 epochs=1, out=str(tmp_path / "v2"))
    _, _, res2 = finetune(v2)
    assert res2["version_2"] is True and res2["NoAns_total"] == 5 and res2["HasAns_total"] == 10
    assert "examples in memory (sha256 " in json.load(open(os.path.join(v2.out, "config.json")))["finetune"]["train"]

    hf = str(tmp_path / "hf_qa")
    assert export_run(out, hf) == "BertForQuestionAnswering"
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    # transformers 5 has no question-answering pipeline: its decoding, written out on the
    # exported model and the fast tokenizer's offsets (one window: the contexts are short)
    m = transformers.BertForQuestionAnswering.from_pretrained(hf).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf)
    for q, c in [("who went to oslo ?", context), ("who went to london ?", "alice went to london and dave saw rome .")]:
        enc = hf_tok(q, c, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            logits = m(**enc)
        ctx = np.array([s == 1 for s in enc.sequence_ids(0)])  # the context's tokens
        p_start = torch.softmax(logits.start_logits[0].masked_fill(torch.tensor(~ctx), -1e4), -1).numpy()
        p_end = torch.softmax(logits.end_logits[0].masked_fill(torch.tensor(~ctx), -1e4), -1).numpy()
        spans = np.triu(np.outer(p_start, p_end)) - np.triu(np.outer(p_start, p_end), 30)  # end >= start, <= 30 tokens
        s_tok, e_tok = np.unravel_index(np.argmax(spans), spans.shape)
        text, score = answer(out, q, c)
        assert c[offsets[s_tok][0]:offsets[e_tok][1]] == text
        assert float(spans[s_tok, e_tok]) == pytest.approx(score, rel=1e-4)


# ----------------------------------------------------------------------------------------
# multiple choice


def test_choice_trains_resumes_chooses_and_exports(tmp_path, pretrained, monkeypatch):
    train = write_swag(tmp_path / "train.csv", choice_examples(160, 0))
    dev = write_swag(tmp_path / "dev.csv", choice_examples(40, 1))
    out = str(tmp_path / "choice")
    fc = FinetuneConfig(task="choice", init=pretrained, train=train, validation=dev, epochs=10, lr=1e-2,
                        batch_size=16, max_length=32, out=out, log_every=10)
    _, _, res = finetune(fc)
    assert res["acc"] > 0.7  # chance is 1/3

    endings = ["bob was born in rome", "alice was born in paris", "dave was born in oslo"]
    best, probs = choose(out, "alice went to the city", endings)
    assert best == 1 and len(probs) == 3 and abs(sum(probs) - 1) < 1e-9
    rc, stdout, stderr = run_script("finetune.py", "--model", out, "--context", "alice went to the city",
                                    "--endings", *endings)
    assert rc == 0, stderr
    assert [l[0] for l in stdout.splitlines()] == [" ", "*", " "]

    rc, stdout2, _ = run_script("finetune.py", "--model", out, "--predict", "alice went to the city", *endings)
    assert stdout2 == stdout

    check_resume_exact(tmp_path, replace(fc, out=str(tmp_path / "full"), epochs=2, dropout=0.1), monkeypatch,
                       CHOICE_KIND)
    hf = str(tmp_path / "hf_choice")
    assert export_run(out, hf) == "BertForMultipleChoice"
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    m = transformers.BertForMultipleChoice.from_pretrained(hf).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf)
    enc = hf_tok(["alice went to the city"] * 3, endings, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = m(**{k: v[None] for k, v in enc.items()}).logits[0]
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), probs, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("task, name, text, message", [
    ("tag", "bad.conll", "alice B-PER\nwent X O\n", "bad.conll: line 2 has 3 columns"),
    ("tag", "bad.conll", "alice B-PER\nwent Q-LOC\n", "bad.conll: line 2: tag 'Q-LOC' is not a IOB2 tag"),
    ("qa", "bad.json", '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "1", "question": "q", '
                       '"answers": [{"text": "x", "answer_start": 0}]}]}]}]}',
     "bad.json: .*answer_start 0 does not match"),
    ("choice", "bad.csv", "sent1,ending0,ending1,label\nctx,a,b,7\n", "bad.csv: row 2: label '7'"),
])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, pretrained, task, name, text, message):
    bad = tmp_path / name
    bad.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        finetune(FinetuneConfig(task=task, init=pretrained, train=str(bad), validation=str(bad), out=str(out),
                                max_length=32))
    assert not out.exists()
    rc, stdout, stderr = run_script("finetune.py", "--task", task, "--from", pretrained, "--train", str(bad),
                                    "--validation", str(bad), "--out", str(out), "--max-length", "32")
    assert rc == 1 and stderr.startswith("error: ") and str(bad) in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_refusals(tmp_path, pretrained):
    train = write_conll(tmp_path / "train.conll", tagged_sentences(20, 0))
    with pytest.raises(ValueError, match="unknown --task 'ner'"):
        finetune(FinetuneConfig(task="ner", init=pretrained, train=train, out=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="--validation goes with --train"):  # every task has a default task
        finetune(FinetuneConfig(task="choice", init=pretrained, validation=train, out=str(tmp_path / "x")))
    out = str(tmp_path / "tag")
    finetune(FinetuneConfig(task="tag", init=pretrained, train=train, epochs=1, max_length=32, out=out,
                            valid_fraction=0.25))
    with pytest.raises(CheckpointError, match="not a fine-tuned question answerer.*'minibert-tagging'"):
        answer(out, "who ?", "alice")
    swag = write_swag(tmp_path / "c.csv", choice_examples(8, 0))
    with pytest.raises(CheckpointError, match="not a fine-tuned multiple-choice model.*'minibert-tagging'"):
        finetune(FinetuneConfig(task="choice", init=pretrained, train=swag, validation=swag, epochs=1, max_length=32,
                                out=out, resume=True))  # the recorded task is another
    with pytest.raises(ValueError, match="--question Q --context C"):
        predict_with_run(_qa_run(tmp_path, pretrained), texts=["only one"])


def _qa_run(tmp_path, pretrained):
    train = write_squad(tmp_path / "t.json", squad_examples(20, 2))
    out = str(tmp_path / "qa_small")
    finetune(FinetuneConfig(task="qa", init=pretrained, train=train, epochs=1, max_length=32, doc_stride=8, out=out,
                            valid_fraction=0.25))
    return out


def test_a_classifier_saved_before_the_task_fields_still_resumes(tmp_path, pretrained):
    """A checkpoint whose recorded settings lack task, scheme, ... (written before they existed)
    resumes: a field it predates is checked only when set away from its default."""
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{p} went to the city,{p in PEOPLE[:2]}\n" for p in PEOPLE * 5))
    fc = FinetuneConfig(init=pretrained, train=str(data), epochs=1, max_length=16, out=str(tmp_path / "seq"),
                        valid_fraction=0.25)
    finetune(fc)
    record = tmp_path / "seq" / "last.json"
    d = json.loads(record.read_text())
    for k in ("task", "scheme", "version_2", "doc_stride", "max_question_length", "null_threshold", "n_best",
              "max_answer_length"):
        del d["meta"]["finetune"][k]
    record.write_text(json.dumps(d))
    finetune(replace(fc, resume=True))
    with pytest.raises(ValueError, match="settings differ.*'scheme'"):
        finetune(replace(fc, resume=True, scheme="BIOES"))
