"""The same pretraining recipe in transformers: train Hugging Face's BertForPreTraining (or
BertForMaskedLM for --objective mlm) in PyTorch on CPU, on exactly the data and recipe of a
minibert run directory, for the same wall-clock time, and evaluate it with minibert's own
held-out evaluation. The figure it feeds is scripts/plot_pretraining.py's.

    python scripts/pretrain.py --out runs/mb ...                       # the minibert run
    python scripts/hf_pretrain.py --like runs/mb --out runs/hf         # the same, in transformers
    python scripts/plot_pretraining.py runs/mb:minibert runs/hf:transformers --out docs/figures/pretraining_curves.png

Matched (taken from RUN_DIR/config.json and tokenizer.json):
  - the model: the run's BertConfig as interop.config_to_hf maps it (shape, vocab, dropout,
    attention dropout, layer_norm_eps, max_position, type_vocab_size, hidden_act gelu =
    torch's exact erf GELU, tied word embeddings); minibert's float32 or float64 dtype;
  - the initial weights: minibert's own (train.build_model with the run's seed), copied in
    with hf_state.to_hf_state_dict, so both start from identical parameters;
  - the data: the same documents and held-out split (train.load_documents), the same
    tokenizer, the same training instances and masks (train.build_data with the run's
    TrainConfig), the same batches in the same order (train_data.batches from (0, 0));
  - the optimizer: torch.optim.AdamW with the run's lr, betas, eps and weight_decay; no
    decay exactly where minibert has none (optim.default_no_decay on minibert's parameters,
    carried over to the HF names by hf_state's mapping: biases and LayerNorm weights); the
    learning rate of each step from train.lr_for (optim.lr_at before lr_for existed);
    gradient clipping torch.nn.utils.clip_grad_norm_(tc.grad_clip) (minibert follows its
    rule); tc.accum micro-batches per step, each loss divided by accum;
  - the loss: masked-LM cross entropy (mean over labelled positions) + NSP cross entropy,
    which is what BertForPreTraining's `loss` is;
  - the evaluation: the torch weights copied back into a minibert model
    (hf_state.from_hf_state_dict) and heldout.evaluate on the run's held-out batches
    (heldout.heldout_batches: held_data.eval_batches(tc.batch_size, tc.eval_batches)).
  - the clock: elapsed_s counts from this script's start, everything included (reading the
    corpus, building the data, the model, and every evaluation), as minibert's elapsed_s
    counts from the start of pretrain() with its evaluations and checkpoint saves inside.
    One asymmetry: this clock also holds the import of torch and transformers (about 3 s
    on 2 CPU cores), minibert's starts after its imports (NumPy's: well under a second).
    The budget --seconds defaults to the run's last recorded elapsed_s; the step that
    crosses it is finished, then the final evaluation runs (outside the budget, as
    minibert's final evaluation is outside its last elapsed_s).

Differs:
  - dropout masks: torch's generator (torch.manual_seed(tc.seed)), not minibert's counter
    based Philox streams; with dropout 0 the two trainings compute the same function;
  - kernels and rounding: torch's GELU, softmax, layer norm, SDPA attention and its AdamW
    (which adds eps to sqrt(v_hat) where minibert folds the bias corrections into two
    scalars): the same formulas, different float rounding (float64: ~1e-15 per op);
  - the [PAD] row: config_to_hf names pad_token_id 0, which gives nn.Embedding a
    padding_idx that never gets gradient from the lookup; this script sets pad_token_id
    None, as minibert treats every row alike (padded positions carry no loss either way);
  - the HF MLM head scores every position, minibert's only the labelled ones (the same
    loss; more work for torch);
  - no checkpoints are written (minibert's run spends time saving them: in its clock).
  - --norm pre and --init-from runs are refused (transformers has no pre-norm BERT).

Writes OUT/metrics.jsonl in minibert's keys (training records: step, loss, mlm_loss,
nsp_loss, mlm_acc, nsp_acc, lr, grad_norm, ms_per_step, tokens_per_s, elapsed_s; eval
records: step, elapsed_s and eval_* as heldout.evaluate names them) and OUT/config.json
({"model", "train"} of the run it copies, plus "hf": what this script ran).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

T_START = time.time()  # the clock starts here: everything below is in the budget

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from minibert import backend, heldout, hf_state, interop, optim, rundir, train  # noqa: E402
from minibert.metrics import MetricsFile, log_line  # noqa: E402
from minibert.model import BertConfig  # noqa: E402
from minibert.tokenizer_files import load_tokenizer  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description="Train transformers' BERT on a minibert run's exact data and recipe.")
    p.add_argument("--like", required=True, help="a minibert pretraining run directory (config.json, tokenizer.json)")
    p.add_argument("--out", required=True, help="where to write metrics.jsonl and config.json")
    p.add_argument("--seconds", type=float, default=None, help="wall-clock budget from the start of this script "
                   "(default: the run's own, its last metrics record's elapsed_s)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: the run's)")
    p.add_argument("--eval-every", type=int, default=None, help="default: the run's eval_every")
    p.add_argument("--log-every", type=int, default=None, help="default: the run's log_every")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention implementation")
    return p


def run_budget(run_dir):
    """The run's training time: the elapsed_s of its last metrics record that has one."""
    last = None
    with open(os.path.join(run_dir, rundir.METRICS_FILE)) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                last = rec.get("elapsed_s", last)
    if last is None:
        raise ValueError(f"{run_dir}/{rundir.METRICS_FILE} has no elapsed_s: pass --seconds")
    return float(last)


def read_run(run_dir):
    """(TrainConfig, BertConfig) of a minibert run directory."""
    meta = rundir.read_config(run_dir)
    names = {f.name for f in dataclasses.fields(train.TrainConfig)}
    tc = train.TrainConfig(**{k: v for k, v in meta["train"].items() if k in names})
    tc = dataclasses.replace(tc, out=run_dir, resume=False, tokenizer=os.path.join(run_dir, rundir.TOKENIZER_FILE))
    config = BertConfig.from_dict(meta["model"])
    if getattr(config, "norm", "post") != "post":
        raise ValueError(f"{run_dir} is a pre-norm BERT: transformers' BertFor* are post-norm")
    if tc.init_from:
        raise ValueError(f"{run_dir} continued {tc.init_from}: only runs from a fresh initialisation are copied")
    return tc, config


def lr_of(tc, step):
    """train.lr_for where it exists, else the linear schedule it generalises."""
    if hasattr(train, "lr_for"):
        return train.lr_for(tc, step)
    return optim.lr_at(step, tc.lr, min(tc.warmup, tc.steps), tc.steps, tc.min_lr)


def hf_model(config, kind, attn):
    """A transformers BertForPreTraining / BertForMaskedLM of minibert's config (weights random)."""
    d = interop.config_to_hf(config, architectures=(kind,))
    d["pad_token_id"] = None  # minibert's [PAD] embedding row gets gradient like any other row
    d.pop("dtype", None)
    hf_config = transformers.BertConfig(**d)
    hf_config._attn_implementation = attn
    return getattr(transformers, kind)(hf_config).to(torch.float64 if config.dtype == "float64" else torch.float32)


def load_into_torch(model, mb_model):
    """Copy minibert's parameters into the torch model, checking every weight is set."""
    state = {k: torch.from_numpy(v) for k, v in hf_state.to_hf_state_dict(mb_model).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in (hf_state.DECODER_W, hf_state.DECODER_B)]
    if missing or unexpected:
        raise ValueError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    emb = model.bert.embeddings.word_embeddings.weight
    if model.cls.predictions.decoder.weight.data_ptr() != emb.data_ptr():
        raise ValueError("the MLM decoder is not tied to the word embeddings")


def to_minibert(model, mb_model, kind):
    """Copy the torch weights into mb_model's params (in place of its arrays)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    mb_model.params.update(hf_state.from_hf_state_dict(state, mb_model.config, kind=kind))
    return mb_model


def param_groups(model, mb_model, weight_decay):
    """AdamW groups: minibert's no-decay rule on minibert's names, carried to the HF names."""
    no_decay = set()
    for k, a in mb_model.params.items():
        if optim.default_no_decay(k, a):
            no_decay.update(hf_state.to_hf_state_dict(mb_model, {k: a}))
    named = dict(model.named_parameters())  # tied weights appear once
    decay = [p for n, p in named.items() if n not in no_decay]
    rest = [p for n, p in named.items() if n in no_decay]
    assert all(p.ndim >= 2 for p in decay) and all(p.ndim < 2 for p in rest)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def torch_batch(batch, nsp):
    keys = ["input_ids", "token_type_ids", "attention_mask", "labels"] + (["next_sentence_label"] if nsp else [])
    return {k: torch.from_numpy(np.asarray(batch[k], dtype=np.int64)) for k in keys}


def step_figures(out, tb, nsp):
    """(mlm_loss, nsp_loss, mlm_correct, mlm_count, nsp_correct, nsp_count) of one forward."""
    logits = out.prediction_logits if nsp else out.logits  # (B, T, V)
    labels = tb["labels"]
    sel = labels != -100
    mlm_loss = torch.nn.functional.cross_entropy(logits[sel], labels[sel]).item()
    mlm_correct = int((logits[sel].argmax(-1) == labels[sel]).sum())
    if not nsp:
        return mlm_loss, 0.0, mlm_correct, int(sel.sum()), 0, 0
    nsp_correct = int((out.seq_relationship_logits.argmax(-1) == tb["next_sentence_label"]).sum())
    return mlm_loss, out.loss.item() - mlm_loss, mlm_correct, int(sel.sum()), nsp_correct, len(labels)


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    backend.use("numpy")
    tc, config = read_run(args.like)
    seconds = args.seconds if args.seconds is not None else run_budget(args.like)
    steps = min(tc.steps, args.steps) if args.steps is not None else tc.steps
    eval_every = args.eval_every or tc.eval_every
    log_every = args.log_every or tc.log_every
    nsp = getattr(tc, "objective", "mlm+nsp") != "mlm"
    kind = "BertForPreTraining" if nsp else "BertForMaskedLM"

    # minibert's data, tokenizer and initial model, exactly as its run built them
    train_docs, heldout_docs = train.load_documents(tc)
    tok = load_tokenizer(tc.tokenizer)
    overrides = {k: v for k, v in config.to_dict().items()}
    mb_model = train.build_model(tc, tok, overrides)
    if mb_model.config != config:
        raise ValueError(f"rebuilt model config {mb_model.config} differs from the run's {config}")
    train_data, held_data = train.build_data(tc, tok, train_docs, heldout_docs)
    eval_set = heldout.heldout_batches(tc, held_data)

    torch.manual_seed(tc.seed)  # dropout masks: torch's own stream
    model = hf_model(config, kind, args.attn)
    load_into_torch(model, mb_model)
    # before TrainConfig had betas and eps, minibert's AdamW ran with its defaults, these
    betas = (getattr(tc, "beta1", 0.9), getattr(tc, "beta2", 0.999))
    opt = torch.optim.AdamW(param_groups(model, mb_model, tc.weight_decay), lr=tc.lr, betas=betas,
                            eps=getattr(tc, "eps", 1e-6))

    os.makedirs(args.out, exist_ok=True)
    hf_info = {"like": args.like, "seconds": seconds, "threads": args.threads, "attn": args.attn, "kind": kind,
               "torch": torch.__version__, "transformers": transformers.__version__}
    rundir.write_json(os.path.join(args.out, rundir.CONFIG_FILE),
                      {"model": config.to_dict(), "train": dataclasses.asdict(tc), "hf": hf_info})
    metrics = MetricsFile(os.path.join(args.out, rundir.METRICS_FILE))
    print(f"transformers {kind} (L={config.num_layers}, H={config.hidden_size}, A={config.num_heads}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {config.dtype}, {args.threads} threads; "
          f"up to {steps:,} steps or {seconds:.0f} s", flush=True)

    def evaluate(step):
        model.eval()
        ev = heldout.evaluate(to_minibert(model, mb_model, kind), eval_set)
        model.train()
        metrics.write({"step": step, "elapsed_s": time.time() - T_START, **{f"eval_{k}": v for k, v in ev.items()}})
        print(f"eval  step {step} | held-out mlm loss {ev['mlm_loss']:.3f} acc {ev['mlm_acc']:.3f} "
              f"ppl {ev['perplexity']:.1f}{heldout.nsp_text(ev)}", flush=True)
        return ev

    batches = train_data.batches(tc.batch_size, start=(0, 0))
    model.train()
    step, sums, t_win, n_win = 0, np.zeros(8), time.time(), 0  # sums: loss .. nsp_count, tokens
    ev, ev_step = None, None
    while step < steps and time.time() - T_START < seconds:
        lr = lr_of(tc, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(tc.accum):
            _, batch = next(batches)
            tb = torch_batch(batch, nsp)
            out = model(**tb)
            (out.loss / tc.accum).backward()
            loss_sum += out.loss.item() / tc.accum
            f = step_figures(out, tb, nsp)
            sums += [0.0, f[0] / tc.accum, f[1] / tc.accum, *f[2:], int(tb["attention_mask"].sum())]
        sums[0] += loss_sum
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        opt.step()
        step += 1
        n_win += 1
        if step % log_every == 0 or step == steps:
            dt = time.time() - t_win
            rec = {"step": step, "loss": sums[0] / n_win, "mlm_loss": sums[1] / n_win, "nsp_loss": sums[2] / n_win,
                   "mlm_acc": sums[3] / max(sums[4], 1), "nsp_acc": sums[5] / max(sums[6], 1), "lr": lr,
                   "grad_norm": norm, "ms_per_step": 1000 * dt / n_win, "tokens_per_s": sums[-1] / dt,
                   "elapsed_s": time.time() - T_START}
            if not nsp:
                del rec["nsp_loss"], rec["nsp_acc"]
            metrics.write(rec)
            print(log_line(step, steps, **{k: rec[k] for k in ("loss", "mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc",
                                                                "lr", "grad_norm", "ms_per_step", "tokens_per_s")
                                           if k in rec}), flush=True)
            sums, t_win, n_win = np.zeros(8), time.time(), 0
        if step % eval_every == 0:
            ev, ev_step = evaluate(step), step
    wall = time.time() - T_START
    if ev_step != step:
        ev = evaluate(step)
    print(f"done: {step} steps in {wall:.1f} s | held-out mlm acc {ev['mlm_acc']:.4f} loss {ev['mlm_loss']:.4f}"
          f"{' | nsp acc ' + format(ev['nsp_acc'], '.4f') if 'nsp_acc' in ev else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
