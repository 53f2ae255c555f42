"""A look inside: attention maps read from the forward cache equal the softmax of the
scaled scores computed here by hand, and the head summary names the patterns it is shown."""
import numpy as np

from minibert import backend
from minibert.inference import attention_maps, attention_summary, head_pattern
from minibert.model import BertConfig, BertForPreTraining


class CharTokenizer:
    """One token per character, ids after the four specials: enough for attention_maps."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]

    def token_to_id(self, s):
        return self.specials.index(s)

    def encode(self, text):
        return [4 + ord(c) - ord("a") for c in text]

    def decode(self, ids):
        return "".join(self.specials[i] if i < 4 else chr(ord("a") + i - 4) for i in ids)


def test_layer_0_maps_equal_a_plain_softmax():
    c = BertConfig(vocab_size=30, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=16, max_position=16,
                   dtype="float64")
    model = BertForPreTraining(c, seed=1)
    p = {k: np.asarray(backend.to_host(v)) for k, v in model.params.items()}
    tokens, probs = attention_maps(model, CharTokenizer(), "abcab")
    assert tokens == ["[CLS]", "a", "b", "c", "a", "b", "[SEP]"] and probs.shape == (2, 3, 7, 7)
    ids = np.array([1, 4, 5, 6, 4, 5, 2])
    x = p["emb.word"][ids] + p["emb.pos"][:7] + p["emb.type"][0]  # (T, H)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + c.layer_norm_eps)
    x = x * p["emb.ln.w"] + p["emb.ln.b"]
    qkv = x @ p["layers.0.attn.w_qkv"] + p["layers.0.attn.b_qkv"]  # (T, 3H)
    for a in range(3):
        q, k = qkv[:, 4 * a:4 * a + 4], qkv[:, 12 + 4 * a:12 + 4 * a + 4]  # (T, D)
        s = q @ k.T / 2.0  # sqrt(D) = 2
        ref = np.exp(s - s.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        assert np.allclose(probs[0, a], ref, rtol=0, atol=1e-12), a
    assert np.allclose(probs.sum(-1), 1.0)


def test_head_pattern_names_what_it_is_shown():
    tokens = ["[CLS]", "a", "b", "c", "[SEP]"]
    T = len(tokens)
    prev = np.eye(T, k=-1)
    prev[0, 0] = 1.0
    nxt = np.eye(T, k=1)
    nxt[-1, -1] = 1.0
    sep = np.zeros((T, T))
    sep[:, 4] = 1.0
    cls = np.zeros((T, T))
    cls[:, 0] = 1.0
    assert head_pattern(tokens, prev)[0] == "previous token"
    assert head_pattern(tokens, nxt)[0] == "next token"
    assert head_pattern(tokens, np.eye(T))[0] == "itself"
    assert head_pattern(tokens, sep) == ("[SEP]", 1.0)
    assert head_pattern(tokens, cls) == ("[CLS]", 1.0)
    assert head_pattern(tokens, np.full((T, T), 1 / T))[0] == "broad"
    probs = np.stack([np.stack([prev, sep])])  # (1, 2, T, T)
    lines = attention_summary(tokens, probs).splitlines()
    assert lines[0].startswith("layer 0 head 0: previous token") and "b->a" in lines[0]
    assert lines[1].startswith("layer 0 head 1: [SEP] (100% of attention)")
