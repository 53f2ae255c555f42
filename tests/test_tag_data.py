"""Token tagging: entities and entity-level scores against hand-worked cases and against
seqeval (when installed) on drawn tag sequences, the tag schemes, CoNLL and JSON-lines files
with their refusals, the first-sub-token label alignment, batches, and CoNLL predictions."""
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fake_tokenizer import FakeTokenizer
from minibert.model import IGNORE_INDEX
from minibert.tag_data import (
    TaggedSentence, conll_text, encode_tagged, encode_tagged_sentences, read_tagged, tag_batch, tag_names_from,
    word_tags, write_conll, write_tag_jsonl,
)
from minibert.tag_metrics import check_tag, convert_tags, entities, entity_scores
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.wordpiece import WordPieceTokenizer

# ----------------------------------------------------------------------------------------
# entities and scores, by hand


@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),             # I- after O starts an entity (IOB1)
    (["I-PER", "I-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 2, 3)]),  # IOB1: B- splits two
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change splits
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["B-PER", "E-PER", "S-LOC", "B-ORG", "I-ORG", "E-ORG"], [("PER", 0, 1), ("LOC", 2, 2), ("ORG", 3, 5)]),
    (["E-PER", "E-PER"], [("PER", 0, 0), ("PER", 1, 1)]),        # BIOES read leniently
    (["S-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["O", "O"], []),
    ([], []),
    (["B-MISC", "I-MISC", "I-MISC"], [("MISC", 0, 2)]),            # an entity at the end is closed
])
def test_entities_by_hand(tags, expected):
    assert entities(tags) == expected


def test_scores_by_hand():
    # seqeval's own docstring example: MISC is predicted one word too early, PER is right
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    s = entity_scores(y_true, y_pred)
    assert (s["precision"], s["recall"], s["f1"], s["support"]) == (0.5, 0.5, 0.5, 2)
    assert s["per_type"] == {"MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
                             "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}
    # gold PER(0,1) LOC(3,3); predicted PER(0,1) LOC(3,3) and a spurious MISC(5,5) from "I-" after "O":
    # TP 2 of 3 predicted, 2 of 2 gold: P = 2/3, R = 1, F1 = 2 (2/3) / (5/3) = 0.8
    s = entity_scores([["B-PER", "I-PER", "O", "B-LOC", "O", "O"]], [["B-PER", "I-PER", "O", "B-LOC", "O", "I-MISC"]])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0 and s["f1"] == pytest.approx(0.8)
    assert s["support"] == 2 and s["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # an entity at the end of one sentence and one at the start of the next stay two (support 2);
    # one of them found: P = 1/1, R = 1/2, F1 = 2 (1/2) / (3/2) = 2/3
    s = entity_scores([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["O", "O"]])
    assert s["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    # nothing to find and nothing found: 0 everywhere, no types
    s = entity_scores([["O", "O"]], [["O", "O"]])
    assert (s["precision"], s["recall"], s["f1"], s["support"], s["per_type"]) == (0.0, 0.0, 0.0, 0, {})
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])


# ----------------------------------------------------------------------------------------
# against seqeval

_TAGS = ["O", "O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
_ODD = ["B", "I", "E", "S", ".", "X-A", "I-A-x", "B-_"]  # tags seqeval reads by the same rules


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_TAGS + _ODD), max_size=9), max_size=5))
def test_entities_equal_seqevals(sentences):
    seq = pytest.importorskip("seqeval.metrics.sequence_labeling")
    flat = [t for s in sentences for t in s + ["O"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert entities(flat) == seq.get_entities(flat)
        for s in sentences:
            assert entities(s) == seq.get_entities(s)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 8), min_size=n, max_size=n),
    st.lists(st.lists(st.sampled_from(_TAGS), min_size=8, max_size=8), min_size=n, max_size=n),
    st.lists(st.lists(st.sampled_from(_TAGS), min_size=8, max_size=8), min_size=n, max_size=n))))
def test_scores_equal_seqevals(drawn):
    seq = pytest.importorskip("seqeval.metrics.sequence_labeling")
    lengths, gold, pred = drawn
    y_true = [g[:n] for g, n in zip(gold, lengths)]
    y_pred = [p[:n] for p, n in zip(pred, lengths)]
    ours = entity_scores(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, support = seq.precision_recall_fscore_support(y_true, y_pred, average="micro")
        per = seq.precision_recall_fscore_support(y_true, y_pred, average=None)
        names = sorted({e[0] for e in seq.get_entities(y_true) + seq.get_entities(y_pred)})
    assert (ours["precision"], ours["recall"], ours["f1"], ours["support"]) == pytest.approx((p, r, f, support),
                                                                                            rel=1e-12, abs=0)
    assert list(ours["per_type"]) == names
    for k, name in enumerate(names):
        got = ours["per_type"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (per[0][k], per[1][k], per[2][k], per[3][k]), rel=1e-12, abs=0)


# ----------------------------------------------------------------------------------------
# schemes


def test_convert_by_hand():
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert convert_tags(iob2, "IOB1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"]
    assert convert_tags(iob2, "BIOES") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"]
    assert convert_tags(["I-PER", "I-PER", "O", "I-LOC"], "iob2") == ["B-PER", "I-PER", "O", "B-LOC"]
    with pytest.raises(ValueError, match="unknown tag scheme 'IOE2'"):
        convert_tags(iob2, "IOE2")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_TAGS), max_size=12), st.sampled_from(["IOB2", "IOB1", "BIOES"]))
def test_convert_keeps_the_entities(tags, scheme):
    out = convert_tags(tags, scheme)
    assert entities(out) == entities(tags)
    for t in out:
        check_tag(t, scheme)
    if scheme == "IOB2":
        assert all(not t.startswith("I-") or (i and out[i - 1][2:] == t[2:] and out[i - 1] != "O")
                   for i, t in enumerate(out))


@pytest.mark.parametrize("tag, scheme", [("E-PER", "IOB2"), ("S-PER", "IOB1"), ("PER", "IOB2"), ("B-", "IOB2"),
                                         ("B_PER", "BIOES"), ("o", "IOB2")])
def test_invalid_tags(tag, scheme):
    with pytest.raises(ValueError, match=f"tag {tag!r} is not a {scheme} tag"):
        check_tag(tag, scheme, "here")


# ----------------------------------------------------------------------------------------
# files

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""


def test_read_conll(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    s = read_tagged(str(path))
    assert [x.words for x in s] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    assert [x.tags for x in s] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"]]
    assert tag_names_from(s) == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    words = tmp_path / "words.txt"
    words.write_text("EU\nrejects\n\nPeter\n")
    assert read_tagged(str(words)) == [TaggedSentence(["EU", "rejects"]), TaggedSentence(["Peter"])]
    (tmp_path / "tab.txt").write_text("Peter\tI-PER\nBlackburn\tI-PER\n")  # tabs, IOB1
    assert read_tagged(str(tmp_path / "tab.txt"), scheme="IOB1")[0].tags == ["I-PER", "I-PER"]


def test_read_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"id": "0", "tokens": ["EU", "rejects"], "ner_tags": [3, 0]}, {"id": "1", "tokens": [], "ner_tags": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    s = read_tagged(str(path), tags_key="ner_tags", label_names=names)
    assert s == [TaggedSentence(["EU", "rejects"], ["B-ORG", "O"]), TaggedSentence([], [])]
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["S-X", "O"]}) + "\n")
    assert read_tagged(str(path), scheme="BIOES")[0].tags == ["S-X", "O"]


@pytest.mark.parametrize("name, text, kw, message", [
    ("a.conll", "EU B-ORG\nrejects VBZ O\n", {}, r"a.conll: line 2 has 3 columns, the lines before it 2"),
    ("a.conll", "EU B-ORG\n\nrejects X-ORG\n", {}, r"a.conll: line 3: tag 'X-ORG' is not a IOB2 tag"),
    ("a.conll", "EU E-ORG\n", {}, r"a.conll: line 1: tag 'E-ORG' is not a IOB2 tag"),
    ("a.conll", "EU B-ORG\n", {"scheme": "IOB3"}, r"a.conll: unknown tag scheme 'IOB3'"),
    ("a.conll", "", {}, r"a.conll: no sentences"),
    ("a.conll", "-DOCSTART- O\n\n\n", {}, r"a.conll: no sentences"),
    ("a.jsonl", "", {}, r"a.jsonl: no sentences"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n', {},
     r"a.jsonl: line 2: 'tags' must be a list of one tag per token \(2 tokens\)"),
    ("a.jsonl", '{"tokens": ["a"], "tags": [1]}\n', {}, r"a.jsonl: line 1: tag 1 is a number: give the list"),
    ("a.jsonl", '{"tokens": ["a"], "tags": [5]}\n', {"label_names": ["O", "B-X"]},
     r"a.jsonl: line 1: tag 5 is outside the 2 label names"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["I_X"]}\n', {}, r"a.jsonl: line 1: tag 'I_X' is not a IOB2 tag"),
    ("a.jsonl", '{"tokens": "a b"}\n', {}, r"a.jsonl: line 1: 'tokens' must be a list of strings"),
])
def test_bad_files(tmp_path, name, text, kw, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_tagged(str(path), **kw)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------
# label alignment and batches


def test_first_sub_token_gets_the_label():
    tok = FakeTokenizer(piece=3)
    s = TaggedSentence(["Peter", "Blackburn", "is", "here"], ["B-PER", "I-PER", "O", "O"])
    names = ["B-PER", "I-PER", "O"]
    f = encode_tagged(tok, s, {t: i for i, t in enumerate(names)}, max_length=64)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # Pet ##er | Bla ##ckb ##urn | is | her ##e
    assert f.input_ids[0] == cls_id and f.input_ids[-1] == sep_id and len(f.input_ids) == 10
    assert f.word_ids == [None, 0, 0, 1, 1, 1, 2, 3, 3, None]
    I = IGNORE_INDEX
    assert f.labels == [I, 0, I, 1, I, I, 2, 2, I, I]
    # truncated to 6: [CLS] Pet ##er Bla ##ckb [SEP]; "Blackburn" keeps its label, "is" and "here" have none
    f = encode_tagged(tok, s, {t: i for i, t in enumerate(names)}, max_length=6)
    assert f.word_ids == [None, 0, 0, 1, 1, None] and f.labels == [I, 0, I, 1, I, I]
    assert word_tags(f, [2, 0, 2, 1, 2, 2], names, 4) == ["B-PER", "I-PER", "O", "O"]  # the unseen words: O
    with pytest.raises(ValueError, match="dev.conll: sentence 2: word 1: tag 'B-LOC' is not one of the model's tags"):
        encode_tagged_sentences(tok, [s, TaggedSentence(["x"], ["B-LOC"])], names, 8, where="dev.conll")
    with pytest.raises(ValueError, match="max_length 2"):
        encode_tagged(tok, s, {"O": 0}, 2)


def test_words_encode_as_the_sentence_does():
    """Each word after the first with a space before it: the ids of the byte-level BPE
    tokenizer are those of the sentence written out with single spaces."""
    texts = ["the quick brown fox jumps over the lazy dog, doesn't it?", "U.S. officials said 1,200 people"] * 20
    tok = BPETokenizer.train_from_iterator(texts, 300, special_tokens=SPECIAL_TOKENS, progress=False)
    words = "U.S. officials said the lazy fox doesn't jump , 1,200 times ?".split()
    f = encode_tagged(tok, TaggedSentence(words), {}, 512)
    assert f.input_ids[1:-1] == tok.encode(" ".join(words))
    assert f.labels == [IGNORE_INDEX] * len(f.input_ids)  # no gold tags
    wp = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "u", ".", "s", "official", "##s", "said",
                             "the", "fox", "doesn", "'", "t", ",", "1", "200", "?"])
    f = encode_tagged(wp, TaggedSentence(words), {}, 512)
    assert f.input_ids[1:-1] == wp.encode(" ".join(words)) and wp.token_to_id("[UNK]") in f.input_ids


def test_batch():
    tok = FakeTokenizer()
    sentences = [TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]), TaggedSentence(["x"], ["O"])]
    feats = encode_tagged_sentences(tok, sentences, ["B-PER", "I-PER", "O"], 16)
    b = tag_batch(feats, [1, 0], pad_id=0)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, 7)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert b["labels"][0].tolist() == [IGNORE_INDEX, 2] + [IGNORE_INDEX] * 5
    assert np.all(b["input_ids"][0, 3:] == 0) and np.all(b["token_type_ids"] == 0)


def test_predictions_as_conll(tmp_path):
    sentences = [TaggedSentence(["EU", "rejects"], ["B-ORG", "O"]), TaggedSentence(["Peter"], ["B-PER"])]
    predicted = [["B-ORG", "B-MISC"], ["O"]]
    assert conll_text(sentences, predicted) == "EU B-ORG B-ORG\nrejects O B-MISC\n\nPeter B-PER O\n\n"
    assert conll_text([TaggedSentence(["EU"])], [["O"]]) == "EU O\n\n"
    out = tmp_path / "pred.conll"
    write_conll(out, sentences, predicted)
    assert [s.tags for s in read_tagged(str(out))] == predicted  # the last column is the prediction
    with pytest.raises(ValueError, match="sentence 2: 1 words but 2 predicted tags"):
        write_conll(tmp_path / "bad.conll", sentences, [["O", "O"], ["O", "O"]])
    assert not (tmp_path / "bad.conll").exists()
    write_tag_jsonl(tmp_path / "pred.jsonl", sentences, predicted)
    assert [s.tags for s in read_tagged(str(tmp_path / "pred.jsonl"))] == predicted
