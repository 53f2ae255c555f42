"""Multiple choice: SWAG-style CSV and JSON-lines files with their refusals, the
[CLS] context [SEP] ending [SEP] encoding of each choice, and (B, C, T) batches."""
import json

import numpy as np
import pytest

from fake_tokenizer import FakeTokenizer
from minibert.choice_data import ChoiceExample, choice_batch, encode_choices, read_choices

SWAG = """video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label
anetv_1,5,"Members of the group are dancing. They","Members of the group are dancing.",They,gold,sit down.,clap their hands.,swim away.,"fly, far.",1
lsmdc_2,7,"He opens the door. Someone","He opens the door.",Someone,gen,walks in.,is a door.,eats.,sleeps.,0
"""


def test_read_swag_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(SWAG)
    ex = read_choices(str(path))
    assert ex[0] == ChoiceExample("Members of the group are dancing.",
                                  ["They sit down.", "They clap their hands.", "They swim away.", "They fly, far."], 1)
    assert ex[1].label == 0 and ex[1].endings[0] == "Someone walks in."
    path.write_text("sent1,ending0,ending1\nA man sits.,He stands.,He sleeps.\n")  # no sent2, no label column
    assert read_choices(str(path), require_label=False) == [ChoiceExample("A man sits.", ["He stands.", "He sleeps."])]


def test_read_jsonl(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({"context": "A man sits.", "endings": ["He stands.", "He sleeps.", "It"], "label": 2}) + "\n")
    assert read_choices(str(path)) == [ChoiceExample("A man sits.", ["He stands.", "He sleeps.", "It"], 2)]


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "", r"a.csv: no examples in the file"),
    ("a.csv", "sent1,ending0,ending1,label\n", r"a.csv: no examples in the file"),
    ("a.jsonl", "\n", r"a.jsonl: no examples in the file"),
    ("a.csv", "sent1,ending0,ending2,label\nx,y,z,0\n", r"a.csv: needs columns ending0, ending1, \.\.\."),
    ("a.csv", "sent2,ending0,ending1,label\nx,y,z,0\n", r"a.csv: no column 'sent1'"),
    ("a.csv", "sent1,ending0,ending1,label\nx,y,z,2\n", r"a.csv: row 2: label '2' is not an ending's index in 0\.\.1"),
    ("a.csv", "sent1,ending0,ending1,label\nx,y,z,one\n", r"a.csv: row 2: label 'one' is not an ending's index"),
    ("a.csv", "sent1,ending0,ending1,label\nx,y,z,\n", r"a.csv: row 2: no label"),
    ("a.csv", "sent1,ending0,ending1\nx,y,z\n", r"a.csv: no column 'label' \(columns: \['sent1', 'ending0', 'ending1'\]\)"),
    ("a.jsonl", '{"context": "c", "endings": ["a", "b"]}\n', r"a.jsonl: no column 'label'"),
    ("a.csv", "sent1,ending0,ending1,label\nx,y\n", r"a.csv: row 2: a value is missing"),
    ("a.jsonl", '{"context": "c", "endings": ["a", "b"], "label": 0}\n{"context": "c", "endings": ["a"], "label": 0}\n',
     r"a.jsonl: row 2: 1 endings, the rows before it 2"),
    ("a.jsonl", '{"context": "c", "endings": ["a"], "label": 0}\n', r"a.jsonl: row 1: 1 endings: a choice needs at least 2"),
    ("a.jsonl", '{"context": "c", "endings": "a b", "label": 0}\n', r"a.jsonl: row 1: needs a \"context\" string"),
    ("a.jsonl", '{"context": "c", "endings": ["a", "b"], "label": true}\n', r"a.jsonl: row 1: label True is not"),
])
def test_bad_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_choices(str(path))
    assert "\n" not in str(info.value)


def test_encoding_and_batch():
    tok = FakeTokenizer(piece=10)
    examples = [ChoiceExample("A man sits.", ["He stands up.", "He sleeps."], 1), ChoiceExample("Rain.", ["Wet.", "Dry."], 0)]
    enc = encode_choices(tok, examples, max_length=64)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids, types = enc[0][0]
    assert ids == [cls_id] + tok.encode("A man sits.") + [sep_id] + tok.encode("He stands up.") + [sep_id]
    assert types == [0] * 6 + [1] * 5
    b = choice_batch(enc, [e.label for e in examples], [1, 0], pad_id=0)
    assert b["input_ids"].shape == b["token_type_ids"].shape == b["attention_mask"].shape == (2, 2, 11)
    assert b["labels"].tolist() == [0, 1]
    # [CLS] Rain . [SEP] Wet . [SEP] = 7; [CLS] A man sits . [SEP] He sleeps . [SEP] = 10
    assert b["attention_mask"].sum(axis=2).tolist() == [[7, 7], [11, 10]]
    assert np.all(b["input_ids"][0, :, 7:] == 0) and b["token_type_ids"][1, 1].tolist() == [0] * 6 + [1] * 4 + [0]
    assert "labels" not in choice_batch(enc, None, [0], pad_id=0)
    # truncated longest-first: 8 = [CLS] + 3 + [SEP] + 2 + [SEP]; the ending (4 tokens) loses 2
    (short, _), _ = encode_choices(tok, examples[:1], max_length=8)[0]
    assert short == [cls_id] + tok.encode("A man sits.")[:3] + [sep_id] + tok.encode("He stands up.")[:2] + [sep_id]
