"""Pre-LN (BertConfig.norm "pre"): layer norm before attention and before the FFN, inside the
residual, and a final layer norm after the last layer (Xiong et al. 2020).

Float64 central-difference gradient checks of the pre-LN layer and of whole pre-LN models
(every parameter, final_ln included) over Hypothesis shapes with a random upstream gradient;
the forward against a plain NumPy re-statement of the layer and a torch.nn.functional stack
with the same weights (forward and every gradient to 1e-10); the post-LN default as it was
(no new params, the same draws, the losses of the code before pre-LN existed); the Hugging
Face export refusal; a run directory's save and load, fill-mask, attention maps and
fine-tuning from a pre-LN pretraining run.
"""
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import erf

from conftest import make_batch, tiny_config
from test_task_heads import check_model, choice_batch, perturbed
from minibert import backend, hf_state, interop, layers, philox, rundir
from minibert.checkpoint import CheckpointError
from minibert.classifier import BertForSequenceClassification
from minibert.encoder import encoder_param_shapes
from minibert.finetune import FinetuneConfig, build_model
from minibert.gradcheck import GradientCheckError, check_directional, check_gradients
from minibert.inference import attention_maps, fill_mask, load_pretrained
from minibert.model import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel
from minibert.multiple_choice import BertForMultipleChoice
from minibert.optim import AdamW
from minibert.question_answering import BertForQuestionAnswering
from minibert.token_classifier import BertForTokenClassification
from minibert.tokenizer import SPECIAL_TOKENS, BPETokenizer

SETTINGS = settings(max_examples=5, deadline=None)
TOL = dict(eps=1e-5, rtol=1e-5, atol=1e-7)


def host(a):
    return np.asarray(backend.to_host(a))


def layer_params(rng, H, I):
    shapes = {"attn.w_qkv": (H, 3 * H), "attn.b_qkv": (3 * H,), "attn.w_o": (H, H), "attn.b_o": (H,),
              "ln1.w": (H,), "ln1.b": (H,), "ffn.w_fc": (H, I), "ffn.b_fc": (I,), "ffn.w_proj": (I, H),
              "ffn.b_proj": (H,), "ln2.w": (H,), "ln2.b": (H,)}
    return {k: backend.to_device(rng.standard_normal(s) * (0.5 if len(s) == 2 else 1.0)) for k, s in shapes.items()}


def bias_from(lengths, T):
    mask = np.array([[1.0] * n + [0.0] * (T - n) for n in lengths])  # (B, T)
    return (1.0 - mask)[:, None, None, :] * layers.MASK_VALUE  # (B, 1, 1, T)


# ----------------------------------------------------------------------------------------
# the layer


def numpy_pre_ln_layer(x, bias, p, A, eps, act):
    """The pre-LN layer written out in NumPy from the equations, none of minibert's ops."""
    def ln(z, w, b):
        mu = z.mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b

    def gelu(z):
        if act == "gelu_tanh":
            return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))

    B, T, H = x.shape
    D = H // A
    q, k, v = np.split(ln(x, p["ln1.w"], p["ln1.b"]) @ p["attn.w_qkv"] + p["attn.b_qkv"], 3, axis=-1)
    heads = lambda z: z.reshape(B, T, A, D).transpose(0, 2, 1, 3)  # (B, A, T, D)
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(D) + bias  # (B, A, T, T)
    e = np.exp(s - s.max(-1, keepdims=True))
    ctx = (e / e.sum(-1, keepdims=True)) @ heads(v)  # (B, A, T, D)
    h = x + ctx.transpose(0, 2, 1, 3).reshape(B, T, H) @ p["attn.w_o"] + p["attn.b_o"]
    hn = ln(h, p["ln2.w"], p["ln2.b"])
    return h + gelu(hn @ p["ffn.w_fc"] + p["ffn.b_fc"]) @ p["ffn.w_proj"] + p["ffn.b_proj"]


@st.composite
def layer_case(draw):
    A, D, B, T = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))  # 0: a fully padded row
    return B, T, A, D, lengths, draw(st.integers(0, 10**6))


@SETTINGS
@given(layer_case(), st.sampled_from([0.0, 0.2]), st.sampled_from(["gelu", "gelu_tanh"]))
def test_pre_ln_layer_gradients_and_forward(case, p_drop, act):
    B, T, A, D, lengths, seed = case
    H, I = A * D, 2 * A * D
    rng = np.random.default_rng(seed)
    p = layer_params(rng, H, I)
    x = backend.to_device(rng.standard_normal((B, T, H)))
    bias = backend.to_device(bias_from(lengths, T))

    def f_out():
        r = philox.rng(seed) if p_drop else None  # one fixed dropout stream: a fixed function
        return layers.pre_ln_encoder_layer_forward(x, bias, p, A, 1e-5, act, p_drop, p_drop, r)

    out, cache = f_out()
    if p_drop == 0.0:
        ref = numpy_pre_ln_layer(host(x), host(bias), {k: host(v) for k, v in p.items()}, A, 1e-5, act)
        np.testing.assert_allclose(host(out), ref, rtol=1e-11, atol=1e-11)
    dout = backend.to_device(np.random.default_rng(seed + 1).standard_normal(out.shape))  # random upstream
    dx, g = layers.pre_ln_encoder_layer_backward(dout, cache)
    assert set(g) == set(layers.ENCODER_LAYER_PARAMS)
    f = lambda: float((f_out()[0] * dout).sum())
    # eps 1e-6: at 1e-5 one drawn case (a tiny layer, H <= 9) missed by 2.3e-5 on a gradient of
    # 0.33, central differences' truncation error (it falls as eps^2); at 1e-6 it passes
    check_gradients(f, {"x": x, **p}, {"x": dx, **g}, eps=1e-6, rtol=1e-5, atol=1e-5)


def test_the_checker_fails_a_pre_ln_backward_that_drops_a_residual():
    """Leaving out `dx += dh` (the skip path x -> h) is caught."""
    rng = np.random.default_rng(3)
    p = layer_params(rng, 4, 8)
    x, bias = rng.standard_normal((2, 3, 4)), np.zeros((2, 1, 1, 3))
    out, cache = layers.pre_ln_encoder_layer_forward(x, bias, p, 2, 1e-5)
    dout = rng.standard_normal(out.shape)
    dx, g = layers.pre_ln_encoder_layer_backward(dout, cache)
    # the gradient at h: through the FFN branch and LN2, plus the skip path h -> out
    dh = dout + layers.layernorm_backward(layers.ffn_backward(dout, cache.c_ffn)[0], cache.c_ln2)[0]
    f = lambda: float((layers.pre_ln_encoder_layer_forward(x, bias, p, 2, 1e-5)[0] * dout).sum())
    check_gradients(f, {"x": x}, {"x": dx})
    with pytest.raises(GradientCheckError, match="'x' at index"):
        check_gradients(f, {"x": x}, {"x": dx - dh})


def test_both_layers_take_the_same_arguments_and_dropout_order():
    """ENCODER_LAYERS maps each norm to its pair; the pre-LN layer draws its three dropout
    masks in the post-LN layer's order, so one stream gives each the same masks."""
    assert layers.ENCODER_LAYERS["post"] == (layers.encoder_layer_forward, layers.encoder_layer_backward)
    assert layers.ENCODER_LAYERS["pre"] == (layers.pre_ln_encoder_layer_forward, layers.pre_ln_encoder_layer_backward)
    rng = np.random.default_rng(4)
    p, x = layer_params(rng, 4, 8), rng.standard_normal((2, 3, 4))
    bias = np.zeros((2, 1, 1, 3))
    _, c_post = layers.encoder_layer_forward(x, bias, p, 2, 1e-5, "gelu", 0.3, 0.3, philox.rng(5))
    _, c_pre = layers.pre_ln_encoder_layer_forward(x, bias, p, 2, 1e-5, "gelu", 0.3, 0.3, philox.rng(5))
    np.testing.assert_array_equal(c_post.c_attn.c_drop[0], c_pre.c_attn.c_drop[0])
    np.testing.assert_array_equal(c_post.c_drop1[0], c_pre.c_drop1[0])
    np.testing.assert_array_equal(c_post.c_drop2[0], c_pre.c_drop2[0])


# ----------------------------------------------------------------------------------------
# whole models


def pre_config(**kw):
    return tiny_config(norm="pre", **kw)


@settings(max_examples=4, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), heads=st.sampled_from([1, 2, 4]),
       dropout=st.sampled_from([0.0, 0.1]), act=st.sampled_from(["gelu", "gelu_tanh"]), seed=st.integers(0, 10**6))
def test_pre_ln_pretraining_model_gradients_every_param(B, T, heads, dropout, act, seed):
    rng = np.random.default_rng(seed)
    c = pre_config(num_heads=heads, dropout=dropout, attention_dropout=dropout, hidden_act=act)
    model = perturbed(BertForPreTraining(c, seed=seed), rng)
    assert {"final_ln.w", "final_ln.b"} <= set(model.params)
    batch = make_batch(rng, B, T, c.vocab_size)
    f = lambda: model.loss_and_grads(batch, rng=philox.rng(seed))[0]
    _, grads = model.loss_and_grads(batch, rng=philox.rng(seed))
    assert grads.keys() == model.params.keys()
    check_gradients(f, model.params, grads, max_coords=6, seed=seed, **TOL)
    check_directional(f, model.params, grads, seed=seed, **TOL)
    # final_ln in full: every coordinate
    fl = {k: model.params[k] for k in ("final_ln.w", "final_ln.b")}
    check_gradients(f, fl, {k: grads[k] for k in fl}, **TOL)


@settings(max_examples=3, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_pre_ln_masked_lm_and_bare_encoder_gradients(B, T, seed):
    rng = np.random.default_rng(seed)
    c = pre_config()
    mlm = perturbed(BertForMaskedLM(c, seed=seed), rng)
    batch = make_batch(rng, B, T, c.vocab_size)
    del batch["next_sentence_label"]
    f = lambda: mlm.loss_and_grads(batch, train=False)[0]
    grads = mlm.loss_and_grads(batch, train=False)[1]
    check_gradients(f, mlm.params, grads, max_coords=4, seed=seed, **TOL)
    check_directional(f, mlm.params, grads, seed=seed, **TOL)
    enc = perturbed(BertModel(c, seed=seed), rng)
    R1, R2 = rng.standard_normal((B, T, c.hidden_size)), rng.standard_normal((B, c.hidden_size))
    def f_enc():
        out = enc.predict(batch)
        return float((host(out["sequence_output"]) * R1).sum() + (host(out["pooled_output"]) * R2).sum())
    grads = enc.backward(enc.forward(batch, train=False)[1], dseq=R1, dpooled=R2)
    check_gradients(f_enc, enc.params, grads, max_coords=4, seed=seed, **TOL)
    check_directional(f_enc, enc.params, grads, seed=seed, **TOL)


@pytest.mark.parametrize("kind", ["seq", "token", "qa", "choice"])
def test_pre_ln_task_heads_gradients_every_param(kind):
    rng = np.random.default_rng(21)
    c = pre_config(dropout=0.1, attention_dropout=0.1)
    if kind == "seq":
        model, batch = BertForSequenceClassification(c, 3, seed=1), make_batch(rng, 3, 5, c.vocab_size, num_labels=3)
    elif kind == "token":
        model, batch = BertForTokenClassification(c, 3, seed=1), make_batch(rng, 3, 5, c.vocab_size, num_labels=3)
        batch["labels"] = np.where(rng.random((3, 5)) < 0.3, -100, rng.integers(0, 3, (3, 5)))
    elif kind == "qa":
        model, batch = BertForQuestionAnswering(c, seed=1), make_batch(rng, 3, 5, c.vocab_size, num_labels=2)
        del batch["labels"]
        batch["start_positions"], batch["end_positions"] = np.array([1, 0, 3]), np.array([2, 0, 4])
    else:
        model, batch = BertForMultipleChoice(c, seed=1), choice_batch(rng, 2, 3, 4, c.vocab_size)
    assert "final_ln.w" in model.params
    check_model(perturbed(model, rng), batch, 21, None)


def test_on_ready_hands_over_final_ln_once():
    rng = np.random.default_rng(13)
    model = BertForPreTraining(pre_config(), seed=13)
    batch = make_batch(rng, 2, 5, model.config.vocab_size, n_masked=2)
    handed = []
    grads = model.backward(model.forward(batch, train=False)[1], on_ready=lambda g: handed.extend(g))
    assert sorted(handed) == sorted(model.params) and len(set(handed)) == len(handed)
    assert handed.index("final_ln.w") < handed.index("layers.1.ln2.w")  # final before the layers below it
    assert grads.keys() == model.params.keys()


# ----------------------------------------------------------------------------------------
# an independent reference: the same stack from torch.nn.functional, autograd for the grads


def torch_pre_ln_bert(P, c, batch):
    """BertModel's outputs, pre-LN, from torch ops: embeddings + LN, L layers of
    x + attn(LN1(x)), h + ffn(LN2(h)), final LN, pooler."""
    import torch
    import torch.nn.functional as F
    ids, types = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["token_type_ids"])
    mask = torch.from_numpy(batch["attention_mask"]).double()
    B, T = ids.shape
    H, A, eps = c.hidden_size, c.num_heads, c.layer_norm_eps
    D = H // A
    ln = lambda z, name: F.layer_norm(z, (H,), P[name + ".w"], P[name + ".b"], eps)
    x = ln(P["emb.word"][ids] + P["emb.pos"][:T] + P["emb.type"][types], "emb.ln")
    bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
    heads = lambda z: z.reshape(B, T, A, D).transpose(1, 2)
    for l in range(c.num_layers):
        p = lambda k: P[f"layers.{l}.{k}"]
        q, k, v = (ln(x, f"layers.{l}.ln1") @ p("attn.w_qkv") + p("attn.b_qkv")).split(H, dim=-1)
        probs = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D) + bias, dim=-1)
        x = x + (probs @ heads(v)).transpose(1, 2).reshape(B, T, H) @ p("attn.w_o") + p("attn.b_o")
        approx = "tanh" if c.hidden_act == "gelu_tanh" else "none"
        f = F.gelu(ln(x, f"layers.{l}.ln2") @ p("ffn.w_fc") + p("ffn.b_fc"), approximate=approx)
        x = x + f @ p("ffn.w_proj") + p("ffn.b_proj")
    x = ln(x, "final_ln")
    return x, torch.tanh(x[:, 0] @ P["pool.w"] + P["pool.b"])


@pytest.mark.parametrize("act, lengths", [("gelu", [6, 3, 0]), ("gelu_tanh", [6, 6, 1])])
def test_pre_ln_matches_torch_forward_and_every_gradient(act, lengths):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    c = pre_config(num_layers=3, hidden_act=act)
    model = perturbed(BertModel(c, seed=7), rng)
    batch = make_batch(rng, 3, 6, c.vocab_size, lengths=lengths)
    out, cache = model.forward(batch, train=False)
    R1, R2 = rng.standard_normal((3, 6, c.hidden_size)), rng.standard_normal((3, c.hidden_size))
    grads = model.backward(cache, dseq=R1, dpooled=R2)

    P = {k: torch.tensor(host(v), dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
    seq, pooled = torch_pre_ln_bert(P, c, batch)
    np.testing.assert_allclose(host(out["sequence_output"]), seq.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(host(out["pooled_output"]), pooled.detach().numpy(), rtol=1e-10, atol=1e-10)
    ((seq * torch.from_numpy(R1)).sum() + (pooled * torch.from_numpy(R2)).sum()).backward()
    for k in model.params:
        np.testing.assert_allclose(host(grads[k]), P[k].grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=k)


# ----------------------------------------------------------------------------------------
# the post-LN default, as it was


def test_config_field_default_validation_and_old_configs():
    assert BertConfig().norm == "post" and BertConfig().to_dict()["norm"] == "post"
    old = {k: v for k, v in BertConfig(hidden_size=8, num_heads=2).to_dict().items() if k != "norm"}
    assert BertConfig.from_dict(old).norm == "post"  # saved before the field existed
    assert BertConfig.from_dict(pre_config().to_dict()) == pre_config()
    with pytest.raises(ValueError, match=r"BertConfig.norm must be 'post' .* or 'pre' .*got 'Pre'"):
        BertConfig(norm="Pre")


def test_post_ln_has_no_new_params_and_pre_ln_shifts_no_draw():
    post, pre = tiny_config(), pre_config()
    assert not any("final" in k for k in encoder_param_shapes(post))
    assert set(encoder_param_shapes(pre)) - set(encoder_param_shapes(post)) == {"final_ln.w", "final_ln.b"}
    a, b = BertForPreTraining(post, seed=5).params, BertForPreTraining(pre, seed=5).params
    for k in a:
        np.testing.assert_array_equal(host(a[k]), host(b[k]), err_msg=k)
    assert (host(b["final_ln.w"]) == 1).all() and (host(b["final_ln.b"]) == 0).all()


def _pinned_batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (3, 7))
    labels = np.full((3, 7), -100)
    labels[:, 2], labels[0, 5] = ids[:, 2], 3
    am = np.ones((3, 7), np.int64)
    am[1, 5:] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros((3, 7), np.int64), "attention_mask": am,
            "labels": labels, "next_sentence_label": np.array([0, 1, 0])}


@pytest.mark.parametrize("cls, loss", [(BertForPreTraining, 4.578839813034693), (BertForMaskedLM, 3.9143634425986265)])
def test_post_ln_losses_are_those_of_the_code_before_pre_ln(cls, loss):
    """Seeded float64 models with dropout: the losses the code gave before norm existed (commit
    2664795); bitwise on the machine that recorded them, to 1e-12 elsewhere (BLAS rounding)."""
    c = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=16,
                   dtype="float64")
    got, _ = cls(c, seed=3).loss_and_grads(_pinned_batch(), train=True)
    assert got == pytest.approx(loss, rel=1e-12)
    pre = cls(BertConfig(**dict(c.to_dict(), norm="pre")), seed=3).loss_and_grads(_pinned_batch(), train=True)[0]
    assert abs(pre - loss) > 1e-6  # the field is read


# ----------------------------------------------------------------------------------------
# Hugging Face: refused, saying why


REFUSAL = r"pre-LN .*cannot be exported to Hugging Face.*post-LN only.*no pre-LN BERT class.*different function"


def test_export_to_hugging_face_is_refused(tmp_path):
    model = BertForPreTraining(pre_config(), seed=0)
    with pytest.raises(ValueError, match=REFUSAL):
        interop.save_hf(model, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()  # nothing written
    with pytest.raises(ValueError, match=REFUSAL):
        hf_state.to_hf_state_dict(model)
    with pytest.raises(ValueError, match=REFUSAL):
        interop.config_to_hf(model.config)
    with pytest.raises(ValueError, match=REFUSAL):
        hf_state.from_hf_state_dict({}, model.config)
    interop.save_hf(BertForPreTraining(tiny_config(), seed=0), str(tmp_path / "post"))  # post-LN still writes


# ----------------------------------------------------------------------------------------
# a pre-LN run directory: save, load, fill-mask, export refused, fine-tuning

TEXT = "The parser reads the buffer. A socket writes a byte string. The queue yields the next item.\n"


@pytest.fixture
def pre_run(tmp_path):
    tok = BPETokenizer.train_from_iterator([TEXT], 256 + len(SPECIAL_TOKENS) + 8, special_tokens=SPECIAL_TOKENS,
                                           progress=False)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=12,
                        max_position=32, dtype="float64", norm="pre")
    model = perturbed(BertForPreTraining(config, seed=0), np.random.default_rng(0))
    path = tmp_path / "run"
    os.makedirs(path)
    tok.save(path / rundir.TOKENIZER_FILE)
    rundir.save(str(path), "last", rundir.PRETRAINING_KIND, model.params, {},
                {"config": config.to_dict(), "model_class": "BertForPreTraining", "step": 3}, tok)
    rundir.write_json(path / rundir.CONFIG_FILE, {"model": config.to_dict(), "train": {"heldout_fraction": 0.2}})
    return path, model, tok


def test_save_and_load_round_trip(pre_run):
    path, model, tok = pre_run
    loaded, _ = load_pretrained(str(path))
    assert type(loaded) is BertForPreTraining and loaded.config.norm == "pre"
    assert loaded.params.keys() == model.params.keys()
    for k in model.params:
        np.testing.assert_array_equal(host(loaded.params[k]), host(model.params[k]), err_msg=k)
    batch = make_batch(np.random.default_rng(2), 2, 6, model.config.vocab_size)
    np.testing.assert_array_equal(host(loaded.predict(batch)["mlm_logits"]), host(model.predict(batch)["mlm_logits"]))


def test_a_checkpoint_whose_params_disagree_with_its_norm_is_refused(pre_run, tmp_path):
    path, model, tok = pre_run
    post = dict(model.config.to_dict(), norm="post")
    rundir.save(str(path), "other", rundir.PRETRAINING_KIND, model.params, {}, {"config": post}, tok)
    with pytest.raises(CheckpointError, match=r"unexpected \['final_ln.b', 'final_ln.w'\]"):
        rundir.read_pretrained_encoder(str(path), "other")


def test_fill_mask_and_attention_maps_on_a_pre_ln_model(pre_run):
    path, _, _ = pre_run
    model, tok = load_pretrained(str(path))
    top = fill_mask(model, tok, "The parser [MASK] the buffer.", top_k=3)
    assert len(top) == 1 and len(top[0]) == 3
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-12
    tokens, maps = attention_maps(model, tok, "The queue yields")
    assert maps.shape == (2, 2, len(tokens), len(tokens))
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-12)


def test_export_run_of_a_pre_ln_run_is_refused(pre_run, tmp_path):
    path, _, _ = pre_run
    with pytest.raises(ValueError, match=REFUSAL):
        interop.export_run(str(path), str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()


def test_fine_tuning_from_a_pre_ln_run_trains(pre_run):
    path, pretrained, tok = pre_run
    fc = FinetuneConfig(init=str(path), max_length=16, dropout=0.0, dtype="float64")
    model, _, _ = build_model(fc, num_labels=3)
    assert isinstance(model, BertForSequenceClassification) and model.config.norm == "pre"
    for k in ("final_ln.w", "final_ln.b", "layers.1.ln1.w", "pool.w"):
        np.testing.assert_array_equal(host(model.params[k]), host(pretrained.params[k]), err_msg=k)
    batch = make_batch(np.random.default_rng(3), 4, 6, model.config.vocab_size, num_labels=3)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    loss0, grads = model.loss_and_grads(batch, train=False)
    assert np.abs(host(grads["final_ln.w"])).sum() > 0
    opt.step(grads)
    loss1, _ = model.loss_and_grads(batch, train=False)
    assert np.isfinite(loss1) and loss1 < loss0
