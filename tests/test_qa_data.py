"""Extractive QA: SQuAD files and their refusals, windows over long contexts with answer
positions, post-processing of start/end logits, and EM/F1 of the official SQuAD scripts
against hand-computed numbers."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fake_tokenizer import FakeTokenizer
from minibert.qa_data import (
    QAExample, QAFeature, encode_squad, gold_answers, postprocess_qa, qa_batch, read_squad, window_starts,
    write_json,
)
from minibert.qa_metrics import exact_match, f1, normalize_answer, squad_scores
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.wordpiece import WordPieceTokenizer

# ----------------------------------------------------------------------------------------
# EM and F1, by hand


@pytest.mark.parametrize("text, expected", [
    ("The  Cat's, hat!", "cats hat"),        # lower, punctuation out, "the" out, spaces collapsed
    ("An apple a day", "apple day"),
    ("theatre", "theatre"),                  # an article only as a whole word
    ("A", ""),
    ("  Denver\tBroncos \n", "denver broncos"),
    ("Levi's Stadium", "levis stadium"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_em_and_f1_by_hand():
    # pred: cat sat on mat (4 words), gold: cat on mat (3): 3 in common, P = 3/4, R = 1,
    # F1 = 2 (3/4) / (7/4) = 6/7
    assert f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert exact_match("the cat sat on the mat", "a cat on a mat") == 0
    # multisets: "cat" once in common; P = 1/3, R = 1, F1 = 2 (1/3) / (4/3) = 1/2
    assert f1("cat cat cat", "cat") == pytest.approx(0.5)
    assert f1("dog", "cat") == 0.0 and exact_match("The Cat.", "cat") == 1
    # two empty answers: v1.1 scores F1 0 (nothing in common), v2.0 scores 1
    assert f1("", "the") == 0.0 and f1("", "the", version_2=True) == 1.0
    assert f1("", "cat", version_2=True) == 0.0 and f1("cat", "", version_2=True) == 0.0


def test_squad_v1_scores_by_hand():
    gold = {"q1": ["Denver Broncos", "the Denver Broncos"], "q2": ["Santa Clara, California", "Levi's Stadium"],
            "q3": ["1966"]}
    preds = {"q1": "Broncos", "q2": "Levi's Stadium"}  # q3 has no prediction: it scores 0
    # q1: EM 0; F1 vs "denver broncos": 1 word in common, P = 1, R = 1/2, F1 = 2/3 (the same vs
    # the other answer); q2: EM 1, F1 1; q3: 0, 0
    s = squad_scores(gold, preds)
    assert s == {"exact": pytest.approx(100 / 3), "f1": pytest.approx(100 * (2 / 3 + 1) / 3), "total": 3}
    with pytest.raises(ValueError, match="question 'q4' has no gold answer"):
        squad_scores({"q4": []}, {"q4": ""})


def test_squad_v2_scores_by_hand():
    gold = {"a": ["x y"], "b": [], "c": [], "d": [".", "The"]}
    preds = {"a": "x", "b": "", "c": "something", "d": ""}
    # a: EM 0, F1 = 2 (1)(1/2) / (3/2) = 2/3; b: unanswerable, "" is right: 1, 1; c: 0, 0;
    # d: its answers normalize to nothing, so only "" is right: 1, 1, but it has answers (HasAns)
    s = squad_scores(gold, preds, version_2=True)
    assert s == {"exact": pytest.approx(100 * 2 / 4), "f1": pytest.approx(100 * (2 / 3 + 1 + 0 + 1) / 4), "total": 4,
                 "HasAns_exact": pytest.approx(50.0), "HasAns_f1": pytest.approx(100 * (2 / 3 + 1) / 2),
                 "HasAns_total": 2, "NoAns_exact": pytest.approx(50.0), "NoAns_f1": pytest.approx(50.0),
                 "NoAns_total": 2}


# ----------------------------------------------------------------------------------------
# files

CONTEXT = "Super Bowl 50 was won by the Denver Broncos at Levi's Stadium."


def squad_json(qas, version="v2.0", context=CONTEXT):
    return {"version": version, "data": [{"title": "SB50", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_read_squad(tmp_path):
    path = tmp_path / "dev.json"
    start = CONTEXT.index("Denver")
    path.write_text(json.dumps(squad_json([
        {"id": "a", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": start},
                                                      {"text": "the Denver Broncos", "answer_start": start - 4}]},
        {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": True},
    ])))
    examples, v2 = read_squad(str(path))
    assert v2 and [e.id for e in examples] == ["a", "b"] and examples[1].is_impossible
    assert examples[0].answers == [("Denver Broncos", start), ("the Denver Broncos", start - 4)]
    assert examples[0].title == "SB50" and gold_answers(examples) == {"a": ["Denver Broncos", "the Denver Broncos"],
                                                                      "b": []}
    path.write_text(json.dumps(squad_json([{"id": "a", "question": "Who?", "answers": [
        {"text": "Denver", "answer_start": start}]}], version="1.1")))
    assert read_squad(str(path))[1] is False


@pytest.mark.parametrize("content, message", [
    ("", r"x.json: the file is empty"),
    ("{", r"x.json: not valid JSON"),
    ('{"data": {}}', r'x.json: expected SQuAD JSON'),
    (squad_json([]), r"x.json: no questions in the file"),
    (squad_json([{"id": "a", "question": "Who?", "answers": [{"text": "Denver", "answer_start": 3}]}]),
     r"x.json: article 0, paragraph 0, question 0 \(id 'a'\), answer 0: answer_start 3 does not match the answer "
     r"'Denver' \(the context there reads 'er Bow'\)"),
    (squad_json([{"id": "a", "question": "Who?", "answers": [{"text": "Denver", "answer_start": "29"}]}]),
     r"answer 0: needs a \"text\" string and an integer \"answer_start\""),
    (squad_json([{"id": "a", "question": "Who?"}, {"id": "a", "question": "Why?"}]),
     r"question 1 \(id 'a'\): the id is used twice"),
    (squad_json([{"id": "a", "question": "Who?", "is_impossible": True,
                  "answers": [{"text": "Super", "answer_start": 0}]}]), r"is_impossible is true but it has answers"),
    (squad_json([{"question": "Who?"}]), r"question 0: needs an \"id\" and a \"question\" string"),
])
def test_bad_squad_files(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as info:
        read_squad(str(path))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------
# windows and answer positions


def test_window_starts_by_hand():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]   # (0,4) (2,6) (4,8) (6,10)
    assert window_starts(11, 4, 1) == [0, 3, 6, 9]   # the last, (9,11), is short
    assert window_starts(4, 4, 2) == [0] and window_starts(0, 4, 2) == [0]


def long_example(n_words, answer_word, rng_words=("alpha", "beta", "gamma", "delta", "omega")):
    words = [rng_words[i % len(rng_words)] + str(i) for i in range(n_words)]
    context = " ".join(words)
    start = context.index(words[answer_word])
    return QAExample("q", "  which word?", context, [(words[answer_word], start)])


@settings(max_examples=40, deadline=None)
@given(n_words=st.integers(1, 40), answer=st.integers(0, 39), max_length=st.integers(12, 30),
       stride=st.integers(0, 6), space=st.booleans(), piece=st.sampled_from([2, 3, 10]))
def test_windows_cover_the_context_and_find_the_answer(n_words, answer, max_length, stride, space, piece):
    e = long_example(n_words, min(answer, n_words - 1))
    tok = FakeTokenizer(piece=piece, space_in_offsets=space)
    q = tok.encode(e.question.lstrip())
    c, offsets = tok.encode_with_offsets(e.context)
    L = max_length - len(q) - 3
    if L <= stride:
        return
    feats = encode_squad(tok, [e], max_length=max_length, doc_stride=stride)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    seen, found = [], 0
    text, a = e.answers[0]
    for f in feats:
        assert len(f.input_ids) <= max_length and f.input_ids[:len(q) + 2] == [cls_id] + q + [sep_id]
        assert f.input_ids[-1] == sep_id and f.token_type_ids == [0] * (len(q) + 2) + [1] * (len(f.input_ids) - len(q) - 2)
        ctx = [o for o in f.offsets if o is not None]
        seen.append([offsets.index(o) for o in ctx])
        if f.start_position:
            found += 1
            s, t = f.start_position, f.end_position
            assert f.offsets[s] is not None and f.offsets[t] is not None and s <= t
            assert e.context[f.offsets[s][0]:f.offsets[t][1]].strip() == text  # the answer is whole words
        else:
            assert f.end_position == 0  # not wholly in this window: both at [CLS]
            assert not (ctx and ctx[0][0] <= a and ctx[-1][1] >= a + len(text))
    assert sorted({t for w in seen for t in w}) == list(range(len(c)))  # every context token is in a window
    for w1, w2 in zip(seen, seen[1:]):
        assert len(set(w1) & set(w2)) == stride  # consecutive windows overlap by the stride
    # a span of k tokens lies wholly in some window when k <= stride + 1 (or one window holds the context)
    k = -(-len(text) // piece)
    if k <= stride + 1 or len(feats) == 1 and k <= L:
        assert found >= 1


def test_answer_positions_by_hand():
    tok = FakeTokenizer(piece=10)
    start = CONTEXT.index("Denver")
    e = QAExample("a", "Who won?", CONTEXT, [("Denver Broncos", start)])
    (f,) = encode_squad(tok, [e], max_length=64)
    # [CLS] Who won ? [SEP] Super Bowl 50 was won by the Denver Broncos ...: Denver is token 12
    assert (f.start_position, f.end_position) == (12, 13)
    assert f.offsets[12] == (start, start + 6) and f.offsets[:5] == [None] * 5 and f.offsets[-1] is None
    # a part of a token: the answer "enver Bronc" still maps to the tokens holding it
    e2 = QAExample("b", "Who won?", CONTEXT, [("enver Bronc", start + 1)])
    assert (encode_squad(tok, [e2], max_length=64)[0].start_position, ) == (12,)
    # an answer starting on the space before "Denver": run_qa.py's rule (the last token starting at
    # or before it) picks "the", token 11
    e4 = QAExample("d", "Who won?", CONTEXT, [(" Denver", start - 1)])
    assert (encode_squad(tok, [e4])[0].start_position, encode_squad(tok, [e4])[0].end_position) == (11, 12)
    # unanswerable and outside-the-window answers point at [CLS]
    e3 = QAExample("c", "Who won?", CONTEXT, [], is_impossible=True)
    assert (encode_squad(tok, [e3])[0].start_position, encode_squad(tok, [e3])[0].end_position) == (0, 0)
    # windows of 12 - 5 - 1 = 6 context tokens, every 4: (0,6) (4,10) (8,14) (12,15); Denver Broncos are
    # context tokens 7 and 8, wholly only in the second window, at 5 + 7 - 4 = 8 and 9
    feats = encode_squad(tok, [e], max_length=12, doc_stride=2)
    assert [(g.start_position, g.end_position) for g in feats] == [(0, 0), (8, 9), (0, 0), (0, 0)]


def test_encode_refusals():
    tok = FakeTokenizer(piece=10)
    e = QAExample("long", "Who won?", CONTEXT, [])
    with pytest.raises(ValueError, match=r"train.json: question 'long': its context has 15 tokens, more than the 6 "
                                         r"that fit beside the question, and doc_stride 6 leaves no step"):
        encode_squad(tok, [e], max_length=12, doc_stride=6, where="train.json")
    with pytest.raises(ValueError, match=r"question 'long': max_length 6 leaves no room for context"):
        encode_squad(tok, [e], max_length=6)
    assert len(encode_squad(tok, [e], max_length=64, doc_stride=128)) == 1  # fits: no stride needed
    q = QAExample("q", " ".join(["why"] * 100), "a b", [])
    (f,) = encode_squad(tok, [q], max_length=384)
    assert f.token_type_ids.count(0) == 64 + 2  # the question is cut to 64 tokens


def test_batch():
    tok = FakeTokenizer(piece=10)
    feats = encode_squad(tok, [QAExample("a", "Who?", CONTEXT, [("Denver", CONTEXT.index("Denver"))]),
                               QAExample("b", "Who?", "Nobody", [])])
    assert [o for o in feats[1].offsets if o is not None] == [(0, 6)]  # its own context, "Nobody"
    b = qa_batch(feats, [0, 1], pad_id=0)
    assert b["input_ids"].shape == b["token_type_ids"].shape == b["attention_mask"].shape == (2, len(feats[0].input_ids))
    assert b["start_positions"].tolist() == [feats[0].start_position, 0] and b["end_positions"][1] == 0
    assert b["attention_mask"][1].sum() == len(feats[1].input_ids) and b["token_type_ids"][1].tolist()[:6] == [0, 0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------------------
# post-processing

DENVER = "Denver Broncos won the game"


def hand_feature(example_index=0):
    # [CLS] q [SEP] Denver Broncos won the game [SEP]
    return QAFeature(example_index, [0] * 9, [0] * 3 + [1] * 6,
                     [None, None, None, (0, 6), (7, 14), (15, 18), (19, 22), (23, 27), None], 0, 0)


def test_postprocess_by_hand():
    ex = [QAExample("q", "Who?", DENVER)]
    start = np.array([1, 5, 0, 3, 2, 0, 0, 0, 0.0])  # 5 at the question: never an answer
    end = np.array([1, 0, 0, 1, 4, 0, 0, 0, 9.0])    # 9 at [SEP]: never an answer
    # spans: (3,4) 3+4 = 7 "Denver Broncos", (4,4) 2+4 = 6, (3,3) 3+1 = 4; null 1+1 = 2
    preds, scores = postprocess_qa(ex, [hand_feature()], [start], [end])
    assert preds == {"q": "Denver Broncos"} and scores == {"q": pytest.approx(2 - 7)}
    assert postprocess_qa(ex, [hand_feature()], [start], [end], max_answer_length=1)[0] == {"q": "Broncos"}
    # n_best 1: the best start is the question's, the best end [SEP]'s: no valid span, no answer
    assert postprocess_qa(ex, [hand_feature()], [start], [end], n_best=1) == ({"q": ""}, {"q": None})
    assert postprocess_qa(ex, [hand_feature()], [start], [end], n_best=2)[0] == {"q": "Denver Broncos"}
    # v2.0: null score 6+6 = 12 beats the best span by 5 > 0: no answer; a threshold of 5.5 keeps the span
    start2, end2 = start.copy(), end.copy()
    start2[0] = end2[0] = 6
    assert postprocess_qa(ex, [hand_feature()], [start2], [end2], version_2=True) == ({"q": ""}, {"q": 5.0})
    assert postprocess_qa(ex, [hand_feature()], [start2], [end2], version_2=True, null_threshold=5.5)[0] == \
        {"q": "Denver Broncos"}
    assert postprocess_qa(ex, [hand_feature()], [start2], [end2])[0] == {"q": "Denver Broncos"}  # v1.1: no null
    # two windows: the null score is the least of theirs (2), the best span the best of all,
    # longer logits (padding) are cut to the feature's length
    start3 = np.array([9, 0, 0, 0, 0, 0, 0, 8, 0.0, -50])
    end3 = np.array([9, 0, 0, 0, 0, 0, 0, 8, 0.0, 99])
    preds, scores = postprocess_qa(ex, [hand_feature(), hand_feature()], [start, start3], [end, end3], version_2=True)
    assert preds == {"q": "game"} and scores == {"q": pytest.approx(2 - 16)}
    with pytest.raises(ValueError, match="2 features but 1 start"):
        postprocess_qa(ex, [hand_feature(), hand_feature()], [start], [end, end])


def test_round_trip_scores_100(tmp_path):
    """Logits that point at the gold positions give back the gold answers: EM 100, F1 100."""
    tok = FakeTokenizer(piece=3, space_in_offsets=True)
    words = ("Super Bowl 50 was an American football game to determine the champion of the National "
             "Football League for the 2015 season . The American Football Conference champion Denver "
             "Broncos defeated the National Football Conference champion Carolina Panthers").split()
    context = " ".join(words)
    answers = ["Denver Broncos", "Carolina Panthers", "2015", "Super Bowl 50"]
    examples = [QAExample(f"q{k}", f"question {k}?", context, [(a, context.index(a))]) for k, a in enumerate(answers)]
    examples.append(QAExample("none", "who lost?", context, [], is_impossible=True))
    feats = encode_squad(tok, examples, max_length=40, doc_stride=10)
    assert len(feats) > len(examples)  # the context needs several windows
    T = 40
    start, end = np.full((len(feats), T), -5.0), np.full((len(feats), T), -5.0)
    for i, f in enumerate(feats):
        start[i, f.start_position] += 10
        end[i, f.end_position] += 10
    preds, scores = postprocess_qa(examples, feats, start, end, version_2=True)
    assert preds == {**{f"q{k}": a for k, a in enumerate(answers)}, "none": ""}
    assert squad_scores(gold_answers(examples), preds, version_2=True)["exact"] == 100.0
    write_json(tmp_path / "predictions.json", preds)
    assert json.loads((tmp_path / "predictions.json").read_text()) == preds


def real_tokenizers():
    bpe = BPETokenizer.train_from_iterator([CONTEXT] * 5, 300, special_tokens=SPECIAL_TOKENS, progress=False)
    wp = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "super", "bowl", "50", "was", "won", "by",
                             "the", "den", "##ver", "bro", "##ncos", "at", "levi", "'", "s", "stadium", ".", "who",
                             "where", "?"])
    return {"bpe": bpe, "wordpiece": wp}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_real_tokenizers_find_the_answers(kind):
    """With the tokenizers' own offsets (tok.encode_with_offsets): gold positions, as logits,
    give back each answer's text exactly, over several windows."""
    tok = real_tokenizers()[kind]
    answers = ["Denver Broncos", "Levi's Stadium", "Super Bowl 50", "50", "Stadium."]
    examples = [QAExample(f"q{k}", "Who won?", CONTEXT, [(a, CONTEXT.index(a))]) for k, a in enumerate(answers)]
    feats = encode_squad(tok, examples, max_length=16, doc_stride=6)
    assert len(feats) > 2 * len(examples)
    start, end = np.zeros((len(feats), 16)), np.zeros((len(feats), 16))
    for i, f in enumerate(feats):
        start[i, f.start_position] = end[i, f.end_position] = 10
    preds, _ = postprocess_qa(examples, feats, start, end, version_2=True)
    assert preds == {f"q{k}": a for k, a in enumerate(answers)}
