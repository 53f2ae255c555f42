"""The pretraining program end to end: loss falls, exact resume after kill -9 at any moment
and after Ctrl-C, one writer per run directory, refusals with clear messages, fill-mask and
evaluation on the result."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from minibert import backend
from minibert.checkpoint import load_checkpoint
from minibert.inference import fill_mask, load_pretrained
from minibert.interop import save_hf
from minibert.model import IGNORE_INDEX
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer
from minibert.train import TrainConfig, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position=64)
SMALL_ARGS = ["--num-layers", "1", "--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "64",
              "--max-position", "64"]


def write_corpus(path, n_docs=150, seed=0):
    """A synthetic corpus in BERT's format: a sentence per line, blank line between documents."""
    rng = np.random.default_rng(seed)
    subjects = ["the parser", "a socket", "the module", "this function", "the queue", "an iterator"]
    verbs = ["returns", "reads", "writes", "closes", "opens", "yields"]
    objects = ["the next item", "a byte string", "the buffer", "a new list", "the file", "an integer"]
    with open(path, "w") as f:
        for _ in range(n_docs):
            for _ in range(rng.integers(2, 7)):
                s, v, o = rng.choice(subjects), rng.choice(verbs), rng.choice(objects)
                f.write(f"{s.capitalize()} {v} {o}.\n")
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt"))


def small_tc(out, corpus, **kw):
    base = dict(corpus=[corpus], out=str(out), vocab_size=600, steps=60, batch_size=8, seq_len=32,
                max_predictions=5, warmup=5, lr=3e-3, log_every=10, eval_every=30, save_every=30,
                eval_batches=4, fill_mask_examples=0)
    base.update(kw)
    return TrainConfig(**base)


def run_args(out, corpus, tokenizer, *extra):
    return [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--corpus", corpus, "--out", str(out),
            "--tokenizer", tokenizer, "--seq-len", "32", "--batch-size", "8", "--max-predictions", "5",
            "--warmup", "5", "--lr", "3e-3", "--log-every", "5", "--eval-every", "1000", "--eval-batches", "2",
            "--fill-mask-examples", "0", "--backend", backend.name, *SMALL_ARGS, *extra]


def test_short_run_loss_falls(tmp_path, corpus):
    model, tok, ev, _ = pretrain(small_tc(tmp_path, corpus, steps=300, eval_every=150, save_every=150), dict(SMALL))
    recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = [r for r in recs if "mlm_loss" in r and "eval_mlm_loss" not in r]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 1.0  # it learns
    assert {"step", "loss", "mlm_acc", "nsp_acc", "lr", "grad_norm", "ms_per_step", "tokens_per_s"} <= set(train[0])
    assert any("eval_mlm_acc" in r for r in recs)
    assert os.path.exists(tmp_path / "best.json") and os.path.exists(tmp_path / "last.json")

    m2, t2 = load_pretrained(str(tmp_path))
    preds = fill_mask(m2, t2, "The parser [MASK] the buffer.", top_k=3)
    probs = [p for _, p in preds[0]]
    assert len(preds) == 1 and len(probs) == 3
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1 + 1e-9
    # the trained model has learnt the corpus' verbs for the verb slot
    assert preds[0][0][0].strip() in {"returns", "reads", "writes", "closes", "opens", "yields"}


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    BPETokenizer.train_from_files(corpus, 600, special_tokens=SPECIAL_TOKENS, progress=False).save(str(path))
    return str(path)


def final_params(out):
    return load_checkpoint(str(out), "last")[0]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"  # bitwise


def train_steps(out):
    """The steps of metrics.jsonl's training lines, in file order."""
    return [r["step"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]


RESUME_STEPS = ["--steps", "300", "--save-every", "10"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, corpus, trained_tokenizer):
    """An uninterrupted run that interrupted ones must reproduce: (run dir, its wall time)."""
    full = tmp_path_factory.mktemp("full") / "run"
    t0 = time.time()
    subprocess.run(run_args(full, corpus, trained_tokenizer, *RESUME_STEPS), check=True, capture_output=True,
                   timeout=300)
    return full, time.time() - t0


def last_step(out):
    return json.loads((out / "last.json").read_text())["meta"]["step"]


def test_kill_9_at_any_moment_then_resume_is_exact(tmp_path, corpus, trained_tokenizer, full_run):
    """kill -9 at moments spread over a run's life (imports, tokenizer, data, steps, saves):
    each time the run directory either resumes or, before its first checkpoint, --resume is
    refused with a clear message; the run resumed to the end matches the uninterrupted one
    bitwise, and its metrics.jsonl has each logged step once."""
    full, wall = full_run
    part = tmp_path / "part"
    args = run_args(part, corpus, trained_tokenizer, *RESUME_STEPS)

    # killed before any checkpoint: --resume is refused, clearly; a fresh start is not
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (part / "last.json").exists()
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: --resume: no checkpoint"), r.stderr
    assert "Traceback" not in r.stderr

    # killed as soon as a mid-run checkpoint exists
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        rec = part / "last.json"
        if rec.exists() and 10 <= json.loads(rec.read_text())["meta"]["step"] < 300:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    killed_at = last_step(part)
    assert killed_at < 300, "the run finished before it could be killed"

    # resumed, and killed again at moments spread over what is left; then resumed to the end
    resumed = [killed_at]
    for frac in (0.15, 0.35, 0.55, 0.75):
        proc = subprocess.Popen([*args, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(frac * wall)
        proc.kill()
        rc = proc.wait()
        assert rc in (0, -signal.SIGKILL)
        resumed.append(last_step(part))
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed {part} at step {resumed[-1]}" in r.stdout
    assert_same_params(final_params(full), final_params(part))
    assert train_steps(part) == train_steps(full)  # no line lost, none written twice, none cut short


def test_ctrl_c_saves_then_resumes(tmp_path, corpus, trained_tokenizer, full_run):
    """Ctrl-C finishes the step, saves last.json and exits 130; --resume then reaches the
    final parameters of the uninterrupted run, bitwise."""
    full, _ = full_run
    out = tmp_path / "run"
    # no periodic checkpoint: the only one is the one Ctrl-C saves
    args = run_args(out, corpus, trained_tokenizer, "--steps", "300", "--save-every", "100000")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    step = last_step(out)
    assert f"interrupted: saved {out}/last.json at step {step}" in stdout
    assert 5 <= step < 300, "the run finished before Ctrl-C reached it"
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed {out} at step {step}" in r.stdout
    assert last_step(out) == 300
    assert_same_params(final_params(full), final_params(out))


def test_one_writer_per_run_directory(tmp_path, corpus, trained_tokenizer):
    """Two scripts/pretrain.py with the same --out, as a user might start them: the second,
    and a --resume of the running one, stop at once with a message naming the directory and
    the PID of the run that holds it; the first is not disturbed."""
    out = tmp_path / "dup"
    args = run_args(out, corpus, trained_tokenizer, "--steps", "100000", "--save-every", "100000")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        lock = out / ".lock"
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.01)
        for extra in ([], ["--resume"]):
            second = subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                stdout, stderr = second.communicate(timeout=60)  # it stops at once: well within this
            except subprocess.TimeoutExpired:
                second.kill()
                second.communicate()
                pytest.fail(f"a second writer {extra} was not stopped: it ran on, writing into {out}")
            assert second.returncode == 1, (extra, stdout, stderr)
            assert stderr.startswith(f"error: {out} is in use: another minibert run (PID {first.pid})"), stderr
            assert stdout == ""  # it stopped before doing anything: no corpus read, no tokenizer written
        assert first.poll() is None  # the first run goes on
        while time.time() < deadline + 120 and not (out / "metrics.jsonl").exists():
            time.sleep(0.05)  # let it log a step before stopping it
    finally:
        first.send_signal(signal.SIGINT)
        stdout, _ = first.communicate(timeout=60)
    assert first.returncode == 130 and "interrupted: saved" in stdout
    steps = train_steps(out)
    assert steps == sorted(set(steps))  # one run's metrics, not two interleaved


def test_refusals(tmp_path, corpus, trained_tokenizer):
    out = tmp_path / "run"
    tc = small_tc(out, corpus, tokenizer=trained_tokenizer, steps=10, eval_every=1000, eval_batches=1)
    pretrain(tc, dict(SMALL))
    with pytest.raises(ValueError, match="--resume"):  # an existing run is not overwritten
        pretrain(tc, dict(SMALL))
    resume = replace(tc, resume=True, steps=20)
    with pytest.raises(ValueError, match="model config fields differ"):
        pretrain(resume, dict(SMALL, hidden_size=64))
    with pytest.raises(ValueError, match="batch_size"):  # exact resume needs the same batches
        pretrain(replace(resume, batch_size=4), dict(SMALL))
    with pytest.raises(ValueError, match="no checkpoint"):
        pretrain(replace(resume, out=str(tmp_path / "none")), dict(SMALL))
    # a truncated checkpoint, through the program: exit 1, a clear error naming the file, no traceback
    tensors = next(p for p in os.listdir(out) if p.startswith("last.") and p.endswith(".safetensors"))
    with open(out / tensors, "r+b") as f:
        f.truncate(100)
    r = subprocess.run(run_args(out, corpus, trained_tokenizer, "--steps", "20", "--resume"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error:"), r.stderr
    assert tensors in r.stderr and "Traceback" not in r.stderr


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point of the test
def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path, corpus, trained_tokenizer):
    out = tmp_path / "run"
    tc = small_tc(out, corpus, tokenizer=trained_tokenizer, steps=5, save_every=5, eval_every=1000, eval_batches=1)
    pretrain(tc, dict(SMALL))
    before = (out / "last.json").read_text()
    # an absurd learning rate overflows the weights within a step or two of the resume at step 5, so
    # the next checkpoint (step 10) is never reached: the run stops before saving the broken step
    blow_up = replace(tc, steps=40, resume=True, lr=1e38, warmup=0, grad_clip=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step ([6-9]|10) ") as e:
        pretrain(blow_up, dict(SMALL))
    assert f"{out}/last.json (step 5)" in str(e.value)  # the message names the last good checkpoint
    assert (out / "last.json").read_text() == before  # and that is what is on disk
    assert all(np.isfinite(v).all() for v in final_params(out).values())


def test_evaluate_script(tmp_path, corpus, trained_tokenizer):
    out = tmp_path / "run"
    subprocess.run(run_args(out, corpus, trained_tokenizer, "--steps", "5"), check=True, capture_output=True, timeout=300)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--model", str(out),
                        "--max-batches", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= ev["mlm_acc"] <= 1 and ev["perplexity"] > 1
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fill_mask.py"), "--model", str(out),
                        "The parser [MASK] the buffer."], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "[MASK] #1" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fill_mask.py"), "--model", str(out),
                        "no mask here"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no [MASK]" in r.stderr


def test_gradient_accumulation_and_hf_export(tmp_path, corpus, trained_tokenizer):
    out = tmp_path / "run"
    model, tok, ev, _ = pretrain(small_tc(out, corpus, tokenizer=trained_tokenizer, steps=6, batch_size=4, accum=2,
                                          eval_every=6, save_every=6), dict(SMALL))
    recs = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert recs[0]["step"] == 6 and np.isfinite(recs[0]["loss"])
    # a trained minibert exports to Hugging Face: weights through interop, tokenizer as GPT-2 files
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    m, t = load_pretrained(str(out))
    save_hf(m, str(tmp_path / "hf"))
    t.save_gpt2_files(str(tmp_path / "hf"))
    hf, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert os.path.exists(tmp_path / "hf" / "vocab.json") and os.path.exists(tmp_path / "hf" / "merges.txt")
    ids = [t.token_to_id("[CLS]")] + t.encode("The parser reads the file.") + [t.token_to_id("[SEP]")]
    with torch.no_grad():
        hf_nsp = hf.eval()(torch.tensor([ids])).seq_relationship_logits.numpy()
    T = len(ids)
    batch = {"input_ids": np.array([ids]), "token_type_ids": np.zeros((1, T), np.int64),
             "attention_mask": np.ones((1, T), np.int64), "labels": np.full((1, T), IGNORE_INDEX),
             "next_sentence_label": np.zeros(1, np.int64)}
    ours = backend.to_host(m.predict(batch)["nsp_logits"])
    np.testing.assert_allclose(ours, hf_nsp, rtol=1e-4, atol=1e-5)


# every way a CuPy array's values reach the host; cupy.asnumpy goes through get
_HOST_READS = ("get", "__float__", "__int__", "__bool__", "__index__", "item", "tolist")


@pytest.mark.skipif(backend.name != "cupy", reason="counts device-to-host reads: MINIBERT_BACKEND=cupy on a GPU")
def test_steps_read_nothing_back_from_the_device(tmp_path, corpus, trained_tokenizer, monkeypatch):
    """Between log, eval and save steps a training step reads nothing back from the GPU:
    the losses and the grad-norm probe stay device scalars. Counted by wrapping each method
    through which a cupy.ndarray reaches the host; two runs that log, evaluate and save only
    at their last step, one of 4 steps and one of 12, must make the same number of reads."""
    import cupy
    reads = []

    def count(name):
        orig = getattr(cupy.ndarray, name, None)
        if orig is None:  # CuPy 14's ndarray has no __index__, for one
            return

        def counted(self, *args, **kwargs):
            reads.append(name)
            return orig(self, *args, **kwargs)
        try:
            monkeypatch.setattr(cupy.ndarray, name, counted)
        except TypeError:  # before CuPy 13 cupy.ndarray is an extension type: nothing to wrap
            pytest.skip(f"cupy {cupy.__version__}: cupy.ndarray.{name} cannot be wrapped")
    for name in _HOST_READS:
        count(name)

    def run(steps):
        reads.clear()
        pretrain(small_tc(tmp_path / f"run{steps}", corpus, tokenizer=trained_tokenizer, steps=steps,
                          log_every=steps, eval_every=steps, save_every=steps), dict(SMALL))
        return len(reads)
    short, long = run(4), run(12)
    assert short > 0  # the counting works: the last step's log line reads the loss
    assert long == short, f"{long - short} more device reads in 8 more steps"
