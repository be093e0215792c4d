"""The encoder's CPU dropout: the cheaper mask keeps each element with probability 1 − p
(every lane of the random words alike), scales the kept ones, replays under a seed, and
the attention path that uses it computes what SDPA computes."""
import pytest
import torch

from minbert import BertConfig, BertModel
from minbert import model as model_module
from minbert.model import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_mask_drops_a_share_p_in_every_lane_and_scales_the_rest(p):
    torch.manual_seed(0)
    n = 4_000_000
    out = dropout(torch.ones(n), p, training=True)
    dropped = out == 0
    se = (p * (1 - p) / (n / 4)) ** 0.5  # one lane's share: a quarter of the draws
    for lane in range(4):  # the top 16-bit lane of each word has a bit fewer random bits
        assert abs(dropped[lane::4].float().mean().item() - p) < 5 * se
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)))
    # neighbours are independent: the chance both are dropped is p²
    both = (dropped[:-1] & dropped[1:]).float().mean().item()
    assert abs(both - p * p) < 0.01 * p


def test_eval_mode_and_p_0_are_the_identity_and_a_seed_replays_the_mask():
    x = torch.randn(3, 7, 5)
    assert torch.equal(dropout(x, 0.1, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    torch.manual_seed(1)
    a = Dropout(0.3)(x)
    torch.manual_seed(1)
    assert torch.equal(Dropout(0.3)(x), a)
    layer = Dropout(0.3).eval()
    assert torch.equal(layer(x), x) and "p=0.3" in repr(layer)


def test_the_gradient_passes_the_kept_elements_scaled():
    torch.manual_seed(2)
    x = torch.randn(1000, requires_grad=True)
    out = dropout(x, 0.2, training=True)
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.8))
    assert torch.all(x.grad[~kept] == 0)


def test_the_spelt_out_attention_computes_what_sdpa_computes(monkeypatch):
    """In training on a CPU the attention weights are dropped by our mask; with that mask
    made the identity, the layer equals SDPA without dropout (padding masked alike)."""
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    model = BertModel(config)
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    calls = []

    def identity(x, p, training):
        calls.append(p)
        return x
    monkeypatch.setattr(model_module, "dropout", identity)
    spelt_out = model.train()(ids, mask)[0]
    assert calls.count(0.1) == 2  # one per layer: the spelt-out path ran
    sdpa = model.eval()(ids, mask)[0]
    real = mask.bool()
    torch.testing.assert_close(spelt_out[real], sdpa[real], atol=1e-5, rtol=1e-5)
