"""Hugging Face checkpoint interop without torch: round trips, legacy names, clear errors.

The parity with real transformers (logits, losses, gradients) is in test_parity.py."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minibert import backend, hf_state, interop
from minibert.model import BertConfig, BertForPreTraining


def small_config(dtype="float64", **kw):
    base = dict(vocab_size=37, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=20,
                max_position=16, type_vocab_size=3, dropout=0.0, attention_dropout=0.0, dtype=dtype)
    base.update(kw)
    return BertConfig(**base)


def random_model(config, seed=0):
    """Every param random, biases and LayerNorm included, so no swap or transpose can hide
    behind zeros and ones (or behind a square matrix equal to its transpose)."""
    model = BertForPreTraining(config, seed=seed)
    rng = np.random.default_rng(seed)
    for k, p in model.params.items():
        model.params[k] = backend.to_device(rng.normal(0.0, 1.0, size=p.shape), dtype=config.dtype)
    return model


def assert_params_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = backend.to_host(a[k]), backend.to_host(b[k])
        assert x.dtype == y.dtype, k
        assert np.array_equal(x, y), k


def write_dir(path, hf_config, state):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(path, "model.safetensors"))
    return str(path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_save_load_round_trip_is_bitwise(tmp_path, dtype, act):
    model = random_model(small_config(dtype, hidden_act=act, dropout=0.1, layer_norm_eps=1e-7))
    interop.save_hf(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temporaries left
    loaded = interop.load_hf(tmp_path, dtype=dtype)
    assert loaded.config == model.config
    assert_params_equal(loaded.params, model.params)


@pytest.mark.parametrize("fail_on", [1, 2])
def test_crash_during_export_keeps_previous(tmp_path, monkeypatch, fail_on):
    """os.replace raising on its 1st (weights) or 2nd (config) call of save_hf leaves the
    earlier export's file in place, whole, and no temporary file behind."""
    old = random_model(small_config("float32"), seed=0)
    interop.save_hf(old, tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_on:
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        interop.save_hf(random_model(small_config("float32", num_layers=1), seed=1), tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    failed = os.path.basename(calls[-1])
    assert (tmp_path / failed).read_bytes() == before[failed]  # the file being written is the old one, whole


def test_saved_files_look_like_transformers(tmp_path):
    model = random_model(small_config("float32", hidden_act="gelu_tanh"))
    interop.save_hf(model, tmp_path)
    with open(tmp_path / "config.json") as f:
        d = json.load(f)
    assert d["model_type"] == "bert" and d["architectures"] == ["BertForPreTraining"]
    assert d["hidden_act"] == "gelu_new" and d["num_hidden_layers"] == 2 and d["num_attention_heads"] == 3
    assert d["tie_word_embeddings"] is True
    state = load_file(tmp_path / "model.safetensors")
    # the tied decoder is not written, exactly as transformers 5.x saves it
    assert "cls.predictions.decoder.weight" not in state and "cls.predictions.decoder.bias" not in state
    H, I = 12, 20
    assert state["bert.encoder.layer.1.intermediate.dense.weight"].shape == (I, H)  # torch's (out, in)
    assert state["cls.seq_relationship.weight"].shape == (2, H)
    w_qkv = backend.to_host(model.params["layers.0.attn.w_qkv"])
    q = state["bert.encoder.layer.0.attention.self.query.weight"]
    v = state["bert.encoder.layer.0.attention.self.value.weight"]
    assert np.array_equal(q, w_qkv[:, :H].T) and np.array_equal(v, w_qkv[:, 2 * H:].T)


def test_state_dict_maps_are_inverse():
    config = small_config()
    model = random_model(config, seed=3)
    state = hf_state.to_hf_state_dict(model)
    assert len(state) == len(model.params) + 4 * config.num_layers  # w_qkv and b_qkv split in three
    # from . to = identity on minibert params
    assert_params_equal(hf_state.from_hf_state_dict(state, config), model.params)
    # to . from = identity on an HF state dict drawn independently of minibert
    rng = np.random.default_rng(7)
    hf = {k: rng.normal(size=v.shape) for k, v in state.items()}
    back = hf_state.to_hf_state_dict(model, hf_state.from_hf_state_dict(hf, config))
    assert back.keys() == hf.keys()
    for k in hf:
        assert np.array_equal(back[k], hf[k]), k


def test_to_hf_state_dict_maps_grads_and_partial_dicts():
    config = small_config()
    model = random_model(config)
    batch = {"input_ids": np.array([[1, 2, 3, 4]]), "token_type_ids": np.zeros((1, 4), int),
             "attention_mask": np.ones((1, 4), int), "labels": np.array([[-100, 5, -100, -100]]),
             "next_sentence_label": np.array([1])}
    _, grads = model.loss_and_grads(batch, train=False)
    g = hf_state.to_hf_state_dict(model, grads)
    assert g.keys() == hf_state.to_hf_state_dict(model).keys()
    assert np.array_equal(g["bert.pooler.dense.weight"], backend.to_host(grads["pool.w"]).T)
    part = hf_state.to_hf_state_dict(model, {"emb.word": model.params["emb.word"]})
    assert list(part) == ["bert.embeddings.word_embeddings.weight"]
    with pytest.raises(ValueError, match="no_such"):
        hf_state.to_hf_state_dict(model, {"no_such": model.params["emb.word"]})


def test_legacy_gamma_beta_and_tied_decoder_copies_load(tmp_path):
    config = small_config()
    model = random_model(config, seed=1)
    state = hf_state.to_hf_state_dict(model)
    legacy = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[k] = v
    assert sum("gamma" in k for k in legacy) == 2 * config.num_layers + 2
    # older checkpoints also carry the tied decoder copies and the position_ids buffer
    legacy["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    legacy["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    legacy["bert.embeddings.position_ids"] = np.arange(config.max_position)[None]
    path = write_dir(tmp_path, interop.config_to_hf(config), legacy)
    assert_params_equal(interop.load_hf(path, dtype="float64").params, model.params)


def test_untied_decoder_is_refused(tmp_path):
    config = small_config()
    state = hf_state.to_hf_state_dict(random_model(config))
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"] + 1.0
    path = write_dir(tmp_path, interop.config_to_hf(config), state)
    with pytest.raises(ValueError, match="untied decoder"):
        interop.load_hf(path)


def test_bert_model_directory_without_prefix_loads_as_encoder(tmp_path):
    config = small_config()
    model = random_model(config, seed=2)
    state = hf_state.to_hf_state_dict(model)
    encoder = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}  # BertModel's names
    path = write_dir(tmp_path / "enc", interop.config_to_hf(config, ["BertModel"]), encoder)
    c, params = interop.load_hf_encoder_params(path, dtype="float64")
    assert c == config
    assert_params_equal(params, {k: v for k, v in model.params.items() if k.split(".")[0] in ("emb", "layers", "pool")})
    # the pretraining loader needs the heads, and names them
    with pytest.raises(ValueError, match="cls.seq_relationship.weight"):
        interop.load_hf(path)
    # the encoder loader ignores task heads outside "bert." (here the pretraining heads)
    full = write_dir(tmp_path / "full", interop.config_to_hf(config), state)
    _, params2 = interop.load_hf_encoder_params(full, dtype="float64")
    assert_params_equal(params2, params)


def test_missing_weight_is_named(tmp_path):
    config = small_config()
    state = hf_state.to_hf_state_dict(random_model(config))
    del state["bert.encoder.layer.1.attention.self.key.bias"]
    path = write_dir(tmp_path, interop.config_to_hf(config), state)
    with pytest.raises(ValueError, match=r"missing \['bert\.encoder\.layer\.1\.attention\.self\.key\.bias'\], unexpected \[\]"):
        interop.load_hf(path)
    with pytest.raises(ValueError, match=r"layer\.1\.attention\.self\.key\.bias"):
        interop.load_hf_encoder_params(path)


def test_unexpected_and_misshapen_weights_are_named(tmp_path):
    config = small_config()
    state = hf_state.to_hf_state_dict(random_model(config))
    extra = dict(state, **{"bert.encoder.layer.0.crossattention.self.query.weight": np.zeros((12, 12))})
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['bert\.encoder\.layer\.0\.crossattention"):
        hf_state.from_hf_state_dict(extra, config)
    bad = dict(state, **{"bert.pooler.dense.weight": np.zeros((12, 13))})
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense\.weight.*\(12, 13\)"):
        hf_state.from_hf_state_dict(bad, config)
    # a config that disagrees with the tensors (a third layer that is not there)
    path = write_dir(tmp_path, interop.config_to_hf(small_config(num_layers=3)), state)
    with pytest.raises(ValueError, match=r"layer\.2\."):
        interop.load_hf(path)


@pytest.mark.parametrize("change, match", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"is_decoder": True}, "is_decoder"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"model_type": "roberta"}, "model_type"),
    ({"num_attention_heads": 5}, "divisible"),
])
def test_unrepresentable_config_is_refused(tmp_path, change, match):
    config = small_config()
    hf_config = dict(interop.config_to_hf(config), **change)
    path = write_dir(tmp_path, hf_config, hf_state.to_hf_state_dict(random_model(config)))
    with pytest.raises(ValueError, match=match):
        interop.load_hf(path)


def test_config_mapping_of_activations():
    for hf_act, mb_act in [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh")]:
        c = interop.config_from_hf({"hidden_act": hf_act, "hidden_size": 8, "num_attention_heads": 2})
        assert c.hidden_act == mb_act and c.hidden_size == 8 and c.num_layers == 12  # HF's default
    assert interop.config_to_hf(small_config(hidden_act="gelu_tanh"))["hidden_act"] == "gelu_new"


def test_no_safetensors_is_a_clear_error(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(interop.config_to_hf(small_config()), f)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors"):
        interop.load_hf(tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        interop.load_hf(tmp_path / "nowhere")


def test_sharded_checkpoint_loads(tmp_path):
    config = small_config()
    model = random_model(config, seed=4)
    state = hf_state.to_hf_state_dict(model)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fn, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / fn)
    index = {"metadata": {}, "weight_map": {k: fn for fn, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(interop.config_to_hf(config)))
    assert_params_equal(interop.load_hf(tmp_path, dtype="float64").params, model.params)


def test_converted_arrays_do_not_alias_their_source():
    config = small_config()
    model = random_model(config)
    state = hf_state.to_hf_state_dict(model)
    state["bert.embeddings.LayerNorm.bias"][:] = 7.0  # writing into the export ...
    assert not np.any(backend.to_host(model.params["emb.ln.b"]) == 7.0)  # ... leaves the model alone
    params = hf_state.from_hf_state_dict(state, config)
    state["bert.embeddings.LayerNorm.bias"][:] = 8.0  # and the reverse
    assert np.all(backend.to_host(params["emb.ln.b"]) == 7.0)


class _Trap:
    """Unpickling this would write the file named in it: proof that nothing was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pytorch_model_bin_is_refused_unread(tmp_path):
    import pickle
    with open(tmp_path / "config.json", "w") as f:
        json.dump(interop.config_to_hf(small_config()), f)
    sprung = tmp_path / "sprung"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(str(sprung))))
    for load in (interop.load_hf, interop.load_hf_model, interop.load_hf_encoder_params):
        with pytest.raises(ValueError, match=r"pytorch_model\.bin, a Python pickle.*never unpickles.*"
                                             r"save_pretrained\('.*'\)"):
            load(str(tmp_path))
    assert not sprung.exists()
    assert interop.is_hf_dir(str(tmp_path))  # recognised as a transformers directory all the same


def test_kind_is_told_from_the_weights(tmp_path):
    config = small_config()
    state = hf_state.to_hf_state_dict(random_model(config))
    enc = {k: v for k, v in state.items() if k.startswith("bert.")}
    mlm = {k: v for k, v in state.items() if not k.startswith(("bert.pooler", "cls.seq"))}
    assert hf_state.kind_of(state) == "BertForPreTraining" and hf_state.kind_of(mlm) == "BertForMaskedLM"
    assert hf_state.kind_of({k[5:]: v for k, v in enc.items()}) == "BertModel"
    assert hf_state.kind_of(dict(enc, **{"classifier.weight": np.zeros((2, 12))})) == "BertForSequenceClassification"
    # legacy gamma/beta spellings and the decoder-only bias of old conversions count too
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in mlm.items()}
    old["cls.predictions.decoder.bias"] = old.pop("cls.predictions.bias")
    assert hf_state.kind_of(old) == "BertForMaskedLM"
    # config.json's "architectures" does not decide: bert-base-uncased says BertForMaskedLM
    path = write_dir(tmp_path, interop.config_to_hf(config, ["BertForMaskedLM"]), state)
    assert type(interop.load_hf_model(path)).__name__ == "BertForPreTraining"
    assert type(interop.load_hf_model(path, kind="BertForMaskedLM")).__name__ == "BertForMaskedLM"
