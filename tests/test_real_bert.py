"""The seed's program on a Hugging Face BERT directory, made locally: fill-mask equal to
transformers' pipeline, continued pretraining (MLM + NSP when the checkpoint has the NSP
head, MLM alone when not) that resumes exactly and exports back to the class it came from,
and fine-tuning from the directory. The directory is what a downloaded bert-base-uncased
holds (config.json, model.safetensors, vocab.txt, tokenizer_config.json), with a WordPiece
vocabulary trained by `tokenizers` on a small corpus and small random weights.
"""
import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from minibert import backend, interop, train  # noqa: E402
from minibert.finetune import FinetuneConfig, finetune  # noqa: E402
from minibert.inference import attention_maps, attention_summary, fill_mask, load_pretrained  # noqa: E402
from minibert.model import BertForMaskedLM, BertForPreTraining  # noqa: E402
from minibert.train import TrainConfig, pretrain  # noqa: E402
from minibert.wordpiece import WordPieceTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_SENTENCE = "The quick brown [MASK] jumps over the lazy dog."
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_corpus(path):
    """Short sentences, blank lines between documents (BERT's corpus format)."""
    rng = random.Random(0)
    animals, colours = ["fox", "dog", "cat", "horse", "bird"], ["brown", "quick", "lazy", "red", "grey"]
    verbs = ["jumps over", "runs past", "sleeps near", "looks at", "waits for"]
    lines = []
    for _ in range(60):
        for _ in range(rng.randrange(2, 5)):
            a, b = rng.sample(animals, 2)
            lines.append(f"The {rng.choice(colours)} {a} {rng.choice(verbs)} the {rng.choice(colours)} {b}.")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def hf_directory(path, kind, corpus, seed=0):
    """transformers' KIND with random weights (std 0.1, so fill-mask has clear winners),
    saved with a WordPiece vocabulary that `tokenizers` trains on the corpus."""
    wp = tokenizers.BertWordPieceTokenizer(lowercase=True)
    wp.train([corpus], vocab_size=120, min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    path.mkdir(parents=True)
    wp.save_model(str(path))  # vocab.txt
    hf_tok = transformers.BertTokenizerFast.from_pretrained(path, do_lower_case=True)
    hf_tok.save_pretrained(path)  # tokenizer_config.json (+ tokenizer.json)
    assert hf_tok.vocab_size == len((path / "vocab.txt").read_text().splitlines())
    cfg = transformers.BertConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  pad_token_id=0)
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_bert")
    corpus = write_corpus(base / "corpus.txt")
    return {"corpus": corpus, "BertForPreTraining": hf_directory(base / "pretraining", "BertForPreTraining", corpus),
            "BertForMaskedLM": hf_directory(base / "mlm", "BertForMaskedLM", corpus, seed=1)}


def pipeline_preds(path, text, top_k):
    fm = transformers.pipeline("fill-mask", model=path, tokenizer=path, top_k=top_k, device="cpu")
    res = fm(text)
    res = res if isinstance(res[0], list) else [res]  # one list per [MASK]
    return [[(r["token_str"], r["score"]) for r in per_mask] for per_mask in res]


@pytest.mark.parametrize("kind", ["BertForPreTraining", "BertForMaskedLM"])
def test_fill_mask_equals_the_transformers_pipeline(dirs, kind):
    path = dirs[kind]
    model, tok = load_pretrained(path)
    assert isinstance(tok, WordPieceTokenizer) and type(model).__name__ == kind
    worst = 0.0
    for text in [SEED_SENTENCE, "[MASK] lazy dog waits for the [MASK]."]:
        ref = pipeline_preds(path, text, top_k=8)
        mine = fill_mask(model, tok, text, top_k=8, skip_special=False)
        assert [[t for t, _ in m] for m in mine] == [[t for t, _ in r] for r in ref]
        worst = max(worst, max(abs(p - q) for m, r in zip(mine, ref) for (_, p), (_, q) in zip(m, r)))
        # the default leaves special tokens out of the list; the probabilities stay the same
        kept = [[(t, p) for t, p in r if t not in SPECIALS][:3] for r in pipeline_preds(path, text, top_k=20)]
        default = fill_mask(model, tok, text, top_k=3)
        assert [[t for t, _ in m] for m in default] == [[t for t, _ in k] for k in kept]
        assert all(abs(p - q) <= 1e-5 for m, k in zip(default, kept) for (_, p), (_, q) in zip(m, k))
    assert worst <= 1e-5, worst
    print(f"{kind}: fill-mask scores within {worst:.1e} of the pipeline")

    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fill_mask.py"), "--model", path,
                        "--show-special", "--top-k", "3", SEED_SENTENCE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = [line.split(None, 1) for line in r.stdout.splitlines()[2:]]
    ref = pipeline_preds(path, SEED_SENTENCE, top_k=3)[0]
    assert [eval(t) for _, t in shown] == [t for t, _ in ref]
    assert all(abs(float(p) - q) <= 5e-4 for (p, _), (_, q) in zip(shown, ref))  # printed to 3 decimals


def small_train(dirs, out, **kw):
    base = dict(corpus=[dirs["corpus"]], out=str(out), steps=6, lr=1e-5, batch_size=4, seq_len=32, max_predictions=5,
                warmup=1, log_every=3, eval_every=6, save_every=3, eval_batches=1, fill_mask_examples=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("kind", ["BertForPreTraining", "BertForMaskedLM"])
def test_continued_pretraining_resumes_exactly_and_exports(dirs, tmp_path, monkeypatch, kind):
    init = dirs[kind]
    start, _ = load_pretrained(init)
    model, tok, ev, _ = pretrain(small_train(dirs, tmp_path / "full", init_from=init))
    assert type(model) is {"BertForPreTraining": BertForPreTraining, "BertForMaskedLM": BertForMaskedLM}[kind]
    assert ("nsp_acc" in ev) == (kind == "BertForPreTraining")  # MLM alone: no NSP figures
    recs = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert all(("nsp_loss" in r) == (kind == "BertForPreTraining") for r in recs if "loss" in r)
    # lr 1e-5 for 6 steps: the weights move, a little
    moved = max(float(abs(backend.to_host(model.params[k]) - backend.to_host(start.params[k])).max())
                for k in model.params)
    assert 0 < moved < 1e-3, moved

    # stopped after the step-3 checkpoint (as by Ctrl-C) and resumed: bitwise the straight run's weights
    real_save = train.save_run_checkpoint

    def save_then_stop(tc, name, model, opt, step, *rest):
        real_save(tc, name, model, opt, step, *rest)
        if name == "last" and step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_run_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_train(dirs, tmp_path / "split", init_from=init))
    monkeypatch.undo()
    resumed, _, _, _ = pretrain(small_train(dirs, tmp_path / "split", init_from=init, resume=True))
    for k in model.params:
        assert np.array_equal(backend.to_host(model.params[k]), backend.to_host(resumed.params[k])), k

    # the run is a run: fill-mask, export to the class it came from, fine-tuning
    m, t = load_pretrained(str(tmp_path / "full"))
    assert type(m) is type(model) and len(fill_mask(m, t, SEED_SENTENCE)[0]) == 5
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_hf.py"), "--model",
                        str(tmp_path / "full"), "--out", str(tmp_path / "export")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    hf, info = getattr(transformers, kind).from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = np.array([[2] + t.encode("the lazy dog sleeps near the brown fox .") + [3]])
    with torch.no_grad():
        ref = hf.eval()(input_ids=torch.from_numpy(ids)).prediction_logits if kind == "BertForPreTraining" else \
            hf.eval()(input_ids=torch.from_numpy(ids)).logits
    labels = np.full(ids.shape, 5)
    out = m.predict({"input_ids": ids, "labels": labels, "next_sentence_label": np.zeros(1, np.int64)})
    assert np.abs(backend.to_host(out["mlm_logits"]) - ref[0].numpy()).max() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert hf_tok("the lazy dog", add_special_tokens=False)["input_ids"] == t.encode("the lazy dog")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def colour_rows(n, seed, brown):
    """n sentences "the <colour> <animal> <verb> the <animal>", labelled by the colour:
    `brown` of them brown, the rest grey, in a seeded order."""
    rng = random.Random(seed)
    animals, verbs = ["fox", "dog", "cat", "horse", "bird"], ["jumps over", "runs past", "sleeps near", "looks at", "waits for"]
    rows = []
    for i in range(n):
        colour = "brown" if i < brown else "grey"
        a, b = rng.sample(animals, 2)
        rows.append({"text": f"the {colour} {a} {rng.choice(verbs)} the {b}", "label": colour})
    rng.shuffle(rows)
    return rows


def test_fine_tuning_from_a_hugging_face_directory(dirs, tmp_path):
    rows = [{"text": f"the {c} fox jumps over the dog", "label": c} for c in ["brown", "grey"] * 12]
    write_jsonl(tmp_path / "train.jsonl", rows)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "finetune.py"), "--model",
                        dirs["BertForMaskedLM"], "--train", str(tmp_path / "train.jsonl"), "--epochs", "1",
                        "--batch-size", "8", "--max-length", "16", "--out", str(tmp_path / "ft")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Hugging Face weights" in r.stdout

    # and it learns: the colour is the label, and on held-out sentences (another draw of
    # animals and verbs, two thirds of them brown) the classifier beats always answering the
    # majority class, whose accuracy is counted from the held-out file itself (over 5 seeds
    # and 5 draws of the data: 12 of 12 every time, held-out loss 0.10-0.20)
    write_jsonl(tmp_path / "colours.jsonl", colour_rows(24, seed=0, brown=12))
    heldout = colour_rows(12, seed=1, brown=8)
    write_jsonl(tmp_path / "heldout.jsonl", heldout)
    majority = max(Counter(r["label"] for r in heldout).values()) / len(heldout)
    model, tok, res = finetune(FinetuneConfig(init=dirs["BertForPreTraining"], train=str(tmp_path / "colours.jsonl"),
                                              validation=str(tmp_path / "heldout.jsonl"), epochs=20, lr=2e-3,
                                              batch_size=8, max_length=16, out=str(tmp_path / "ft2")))
    assert isinstance(tok, WordPieceTokenizer) and res["validation_examples"] == len(heldout) == 12
    assert majority == 8 / 12 and res["acc"] >= majority + 0.25, (res["acc"], majority)  # at most 1 of 12 wrong
    # and the fine-tuned classifier exports to BertForSequenceClassification with its labels
    assert interop.export_run(str(tmp_path / "ft2"), str(tmp_path / "clf")) == "BertForSequenceClassification"
    clf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert clf.config.id2label == {0: "brown", 1: "grey"}


def test_attention_maps_of_a_hugging_face_directory(dirs):
    model, tok = load_pretrained(dirs["BertForPreTraining"])
    tokens, probs = attention_maps(model, tok, "the brown fox")
    hf = transformers.BertModel.from_pretrained(dirs["BertForPreTraining"], attn_implementation="eager")
    ids = torch.tensor([[tok.token_to_id(t) for t in tokens]])
    with torch.no_grad():
        ref = np.stack([a[0].numpy() for a in hf.eval()(input_ids=ids, output_attentions=True).attentions])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and probs.shape == ref.shape == (2, 4, len(tokens), len(tokens))
    assert np.abs(probs - ref).max() < 1e-5
    assert len(attention_summary(tokens, probs).splitlines()) == 8


def test_attention_script_on_a_directory_and_a_run(dirs, tmp_path):
    pytest.importorskip("matplotlib")  # the plot extra draws the picture
    png = tmp_path / "att.png"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "attention.py"), "--model",
                        dirs["BertForPreTraining"], "--layer", "1", "--head", "0,2", "--out", str(png),
                        "the lazy dog"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heads = [line for line in r.stdout.splitlines() if line.startswith("layer ")]
    assert [h.split(":")[0] for h in heads] == ["layer 1 head 0", "layer 1 head 2"]
    pretrain(small_train(dirs, tmp_path / "run", steps=2, init_from=dirs["BertForMaskedLM"]))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "attention.py"), "--model", str(tmp_path / "run"),
                        "--no-plot", "--head", "9", "the lazy dog"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--head [9]: the model has 4" in r.stderr
