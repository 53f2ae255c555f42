"""Activation recomputation (encoder.encoder_forward(recompute=True), BertBase.recompute):
the forward keeps each encoder layer's input instead of its cache, and the backward reruns
the layer just before differentiating it. The gradients must be bit for bit those of the
plain run: post-LN and pre-LN, dropout on and off, float32 and float64, several layers,
every model class, and on_ready (the distributed overlap) reporting the same groups in the
same order. The stream fork (philox.SequenceStreams.fork) redraws the same numbers.
"""
import numpy as np
import pytest

from conftest import make_batch, tiny_config
from test_task_heads import choice_batch
from minibert import backend, philox
from minibert.classifier import BertForSequenceClassification
from minibert.encoder import KeptInput
from minibert.model import BertForMaskedLM, BertForPreTraining, BertModel
from minibert.multiple_choice import BertForMultipleChoice
from minibert.question_answering import BertForQuestionAnswering
from minibert.token_classifier import BertForTokenClassification


def host(a):
    return np.asarray(backend.to_host(a))


def run(model, batch, recompute, seed=7, on_ready=None):
    """(loss, grads as host arrays, encoder layer caches) of one forward and backward."""
    model.recompute = recompute
    out, cache = model.forward(batch, train=True, rng=philox.rng(seed))
    kw = {} if on_ready is None else {"on_ready": on_ready}
    grads = model.backward(cache, **kw)
    c_layers = cache.c_enc.c_layers if hasattr(cache, "c_enc") else None
    return float(out["loss"]), {k: host(v) for k, v in grads.items()}, c_layers


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pretraining_grads_bitwise(norm, dropout, dtype):
    c = tiny_config(num_layers=3, norm=norm, dropout=dropout, attention_dropout=dropout, dtype=dtype)
    model = BertForPreTraining(c, seed=1)
    batch = make_batch(np.random.default_rng(0), 4, 9, c.vocab_size, n_masked=3)
    loss0, g0, caches0 = run(model, batch, False)
    loss1, g1, caches1 = run(model, batch, True)
    assert not any(isinstance(cl, KeptInput) for cl in caches0)
    assert all(isinstance(cl, KeptInput) for cl in caches1) and len(caches1) == 3  # it did keep only inputs
    assert loss0 == loss1
    assert_bitwise(g0, g1)
    if dropout:  # the masks matter: another stream gives other gradients, so equality above says something
        model.recompute = False
        out, cache = model.forward(batch, train=True, rng=philox.rng(8))
        g2 = {k: host(v) for k, v in model.backward(cache).items()}
        assert not np.array_equal(g2["layers.0.attn.w_qkv"], g0["layers.0.attn.w_qkv"])


def test_backward_twice_from_one_recompute_cache():
    # the kept fork is never advanced: a second backward of the same cache redraws the same masks
    c = tiny_config(num_layers=2, dropout=0.3, attention_dropout=0.3)
    model = BertForMaskedLM(c, seed=2)
    model.recompute = True
    batch = make_batch(np.random.default_rng(1), 3, 7, c.vocab_size, n_masked=2)
    _, cache = model.forward(batch, train=True, rng=philox.rng(3))
    g1 = {k: host(v) for k, v in model.backward(cache).items()}
    g2 = {k: host(v) for k, v in model.backward(cache).items()}
    assert_bitwise(g1, g2)
    model.recompute = False
    _, g0, _ = run(model, batch, False, seed=3)
    assert_bitwise(g0, g1)


def task_models(c):
    rng = np.random.default_rng(4)
    V = c.vocab_size
    span = make_batch(rng, 3, 8, V, num_labels=2)
    del span["labels"]
    span.update(start_positions=np.array([1, 2, 0]), end_positions=np.array([3, 2, 0]))
    tags = make_batch(rng, 3, 8, V, num_labels=2)
    tags["labels"] = np.where(rng.random((3, 8)) < 0.3, -100, rng.integers(0, 3, (3, 8)))  # (B, T)
    return [
        (BertForMaskedLM(c, seed=1), make_batch(rng, 3, 8, V, n_masked=2)),
        (BertForSequenceClassification(c, 3, seed=1), make_batch(rng, 3, 8, V, num_labels=3)),
        (BertForTokenClassification(c, 3, seed=1), tags),
        (BertForQuestionAnswering(c, seed=1), span),
        (BertForMultipleChoice(c, seed=1), choice_batch(rng, 2, 3, 8, V)),
    ]


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_every_model_class(norm):
    c = tiny_config(num_layers=2, norm=norm, dropout=0.1, attention_dropout=0.1)
    for model, batch in task_models(c):
        loss0, g0, _ = run(model, batch, False)
        loss1, g1, _ = run(model, batch, True)
        model.recompute = True
        _, cache = model.forward(batch, train=True, rng=philox.rng(7))
        assert all(isinstance(cl, KeptInput) for cl in cache.c_enc.c_layers), type(model).__name__
        assert loss0 == loss1, type(model).__name__
        assert_bitwise(g0, g1)


def test_bert_model_and_evaluation_keep_caches():
    c = tiny_config(num_layers=2, dropout=0.1)
    model = BertModel(c, seed=1)
    model.recompute = True
    batch = make_batch(np.random.default_rng(5), 2, 6, c.vocab_size, num_labels=2)
    del batch["labels"]
    _, cache = model.forward(batch, train=True, rng=philox.rng(1))
    assert all(isinstance(cl, KeptInput) for cl in cache.c_layers)  # BertModel's cache is the encoder's
    # evaluation has no backward to rerun anything for: the plain caches (attention maps read them)
    _, cache = model.forward(batch, train=False)
    assert not any(isinstance(cl, KeptInput) for cl in cache.c_layers)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_on_ready_reports_each_layer_in_order(norm):
    c = tiny_config(num_layers=3, norm=norm, dropout=0.1, attention_dropout=0.1)
    model = BertForPreTraining(c, seed=1)
    batch = make_batch(np.random.default_rng(6), 3, 8, c.vocab_size, n_masked=2)
    reports = {}
    for recompute in (False, True):
        seen = []
        _, g, _ = run(model, batch, recompute, on_ready=lambda gs: seen.append({k: host(v) for k, v in gs.items()}))
        reports[recompute] = seen
        reported = {k for gs in seen for k in gs}
        assert {f"layers.{l}.attn.w_qkv" for l in range(3)} <= reported
        for gs in seen:  # what on_ready saw is final: the same arrays the backward returns
            for k, v in gs.items():
                assert np.array_equal(v, g[k]), k
    assert [list(gs) for gs in reports[False]] == [list(gs) for gs in reports[True]]
    for a, b in zip(reports[False], reports[True]):
        assert_bitwise(a, b)


def test_fork_redraws_the_same_numbers():
    s = philox.rng((3, 4), first_row=2)
    s.random((2, 5))
    twin = s.fork()
    a = s.random((2, 5), np.float32)
    assert s.draws == 2 and twin.draws == 1
    assert np.array_equal(host(twin.random((2, 5), np.float32)), host(a))
    assert np.array_equal(host(s.fork(0).random((2, 5))), host(philox.rng((3, 4), first_row=2).random((2, 5))))
    assert not np.array_equal(host(s.fork(0).random((2, 5))), host(s.fork(1).random((2, 5))))


def test_recompute_refuses_a_stream_it_cannot_redraw():
    c = tiny_config(num_layers=1, dropout=0.1)
    model = BertForMaskedLM(c, seed=1)
    model.recompute = True
    batch = make_batch(np.random.default_rng(7), 2, 5, c.vocab_size, n_masked=1)
    with pytest.raises(TypeError, match="SequenceStreams"):
        model.forward(batch, train=True, rng=np.random.default_rng(0))


def test_pretraining_run_with_recompute_ends_where_the_plain_run_ends(tmp_path):
    # scripts/pretrain.py --recompute, a few steps with dropout on and two layers: the last
    # checkpoint's params bit for bit those of the plain run (so it is no resume key either)
    import subprocess

    from test_train import assert_same_params, final_params, run_args, write_corpus
    from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

    corpus = str(write_corpus(tmp_path / "corpus.txt", n_docs=60))
    tok = str(tmp_path / "tokenizer.json")
    BPETokenizer.train_from_files(corpus, 400, special_tokens=SPECIAL_TOKENS, progress=False).save(tok)
    runs = {}
    for name, extra in (("plain", []), ("recompute", ["--recompute"])):
        out = tmp_path / name
        subprocess.run(run_args(out, corpus, tok, "--steps", "6", "--save-every", "6", "--num-layers", "2",
                                "--dropout", "0.1", "--attention-dropout", "0.1", *extra),
                       check=True, capture_output=True, timeout=300)
        runs[name] = final_params(out)
    assert_same_params(runs["plain"], runs["recompute"])


def pretraining_run(path, tok, seed=11):
    """A pretraining run directory of a tiny random BERT with two layers and both dropouts on,
    so recomputation reruns more than one layer and has masks to redraw."""
    from minibert.checkpoint import save_checkpoint
    from minibert.model import BertConfig

    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_position=64, dropout=0.1, attention_dropout=0.1)
    model = BertForPreTraining(config, seed=seed)
    tok.save(str(path / "tokenizer.json"))
    save_checkpoint(str(path), "last", model.params, {}, {"kind": "minibert-pretraining", "config": config.to_dict(),
                                                          "step": 0, "tokenizer_fingerprint": tok.fingerprint()})
    return str(path)


def test_finetuning_run_with_recompute_ends_where_the_plain_run_ends(tmp_path):
    # scripts/finetune.py --recompute, two epochs with dropout on: the last checkpoint's params and
    # the evaluation bit for bit those of the plain run; and no resume key: the plain run resumes with it
    import json
    import os

    from test_finetune import run_script, synthetic_rows
    from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
    from test_train import assert_same_params, final_params

    text = " ".join(["the cat sat on the mat", "a dog ran to the park", "good great fine", "bad awful poor"] * 20)
    tok = BPETokenizer.train_from_iterator([text], 300, special_tokens=SPECIAL_TOKENS, progress=False)
    (tmp_path / "pt").mkdir()
    init = pretraining_run(tmp_path / "pt", tok)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(48, 5)))
    runs, results = {}, {}
    for name, extra in (("plain", []), ("recompute", ["--recompute"])):
        out = str(tmp_path / name)
        rc, stdout, stderr = run_script("finetune.py", "--from", init, "--train", str(data), "--epochs", "2",
                                        "--batch-size", "8", "--max-length", "24", "--lr", "1e-2", "--out", out,
                                        *extra)
        assert rc == 0, stderr
        assert ("activation recomputation" in stdout) == bool(extra)  # the flag reached the model
        runs[name] = final_params(out)
        with open(os.path.join(out, "results.json")) as f:
            results[name] = {k: v for k, v in json.load(f).items() if k != "elapsed_s"}
    assert_same_params(runs["plain"], runs["recompute"])
    assert results["plain"] == results["recompute"]
    rc, _, stderr = run_script("finetune.py", "--from", init, "--train", str(data), "--epochs", "2", "--batch-size",
                               "8", "--max-length", "24", "--lr", "1e-2", "--out", str(tmp_path / "plain"),
                               "--resume", "--recompute")
    assert rc == 0, stderr


@pytest.mark.parametrize("task", ["tag", "qa", "choice"])
def test_every_task_finetunes_bitwise_with_recompute(tmp_path, task):
    # the other task models through minibert.finetune (FinetuneConfig.recompute), one epoch, dropout on
    from dataclasses import replace

    from test_finetune_tasks import VOCAB, choice_examples, squad_examples, tagged_sentences
    from minibert.finetune import FinetuneConfig, finetune
    from minibert.wordpiece import WordPieceTokenizer
    from test_train import assert_same_params, final_params

    init = pretraining_run(tmp_path, WordPieceTokenizer(VOCAB))
    train, val = {"tag": (tagged_sentences(24, 0), tagged_sentences(8, 1)),
                  "qa": (squad_examples(24, 0), squad_examples(8, 1)),
                  "choice": (choice_examples(24, 0), choice_examples(8, 1))}[task]
    fc = FinetuneConfig(task=task, init=init, train=train, validation=val, epochs=1, lr=1e-2, batch_size=8,
                        max_length=32, doc_stride=8, out=str(tmp_path / "plain"))
    results = {}
    for out, recompute in (("plain", False), ("recompute", True)):
        model, _, res = finetune(replace(fc, out=str(tmp_path / out), recompute=recompute))
        assert model.recompute is recompute
        results[out] = {k: v for k, v in res.items() if k != "elapsed_s"}
    assert_same_params(final_params(tmp_path / "plain"), final_params(tmp_path / "recompute"))
    assert results["plain"] == results["recompute"]


def import_bench():
    """scripts/bench.py as a module (it imports bench_common from scripts/)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    try:
        import bench
        import bench_common
    finally:
        sys.path.pop(0)
    return bench, bench_common


def test_bench_table_keeps_its_columns_with_a_recompute_row(capsys):
    # scripts/bench.py --recompute: the minibert/recompute row's figures sit under the header's columns
    bench, _ = import_bench()
    row = dict(step_ms=812.5, tokens_per_s=5041.0, peak_rss_mb=480.0, mfu=0.25)
    r = {"config": {"name": "mini"}, "minibert": dict(row, matmul_bound_ms=300.0, step_over_bound=2.0),
         "minibert/recompute": dict(row, step_ms=1012.5), "torch": dict(row, attn="sdpa", step_ms=900.0),
         "ratios": dict(tokens_per_s=1.1, tokens_per_s_paired_median=1.1, at_bound=3.0, peak_rss=0.5)}
    bench.print_table([r])
    head, rule, *rows = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in rows] == ["minibert", "minibert/recompute", "torch/sdpa"]
    end = head.index("step ms") + len("step ms")  # right-aligned under its header
    assert [line[end - 6:end] for line in rows] == [" 812.5", "1012.5", " 900.0"]
    end = head.index("peak RSS MB") + len("peak RSS MB")
    assert all(line[end - 4:end] == " 480" for line in rows)
    assert len(rule) == len(head) and max(map(len, rows)) <= len(head)


def test_bench_trace_memory_counts_each_part():
    # scripts/bench.py --trace-memory: each part against a count made here from shapes
    from dataclasses import replace

    bench, bench_common = import_bench()
    a = np.zeros((4, 5), np.float32)
    assert bench.array_bytes([a, a[1:], {"t": a.T, "n": 3}, (a.reshape(20),)]) == 80  # a view counts its base once
    assert bench.array_bytes([a, np.ones(3)], skip={id(a)}) == 24
    c = bench_common.BenchConfig(name="t", L=2, H=32, A=2, I=64, V=128, T=16, B=4, dropout=0.1)
    model, _, _ = bench.build_minibert(c)
    n_params = sum(int(np.prod(p.shape)) for p in model.params.values()) * 4 / 2**20  # float32, MiB
    plain, rc = bench.trace_memory(c), bench.trace_memory(replace(c, recompute=True))
    for m in (plain, rc):
        assert m["params"] == m["grads"] == n_params and m["moments"] == 2 * n_params
        assert m["backward_peak"] >= 4 * n_params  # params, both moments and the grads are all alive by then
    # recompute keeps each layer's input (B, T, H) and the one padding bias (B, 1, 1, T) they share;
    # an input may be a view into a buffer one page longer (host.empty_apart), counted whole
    kept = (c.L * c.B * c.T * c.H + c.B * c.T) * 4
    assert kept <= rc["layers"] * 2**20 <= kept + c.L * 4096
    assert plain["layers"] > 4 * rc["layers"] and plain["cache"] - plain["layers"] == rc["cache"] - rc["layers"]
    assert rc["backward_peak"] < plain["backward_peak"] and rc["forward_peak"] < plain["forward_peak"]
