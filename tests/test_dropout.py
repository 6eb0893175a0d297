"""The cheap CPU dropout (lit_imit.nets.dropout) and ACT's use of it: same distribution and gradients as dropout,
attention maths equal to scaled_dot_product_attention's."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_imit.nets.act import ACT, Attention
from lit_imit.nets.dropout import FastDropout, dropout, keep_mask, quantised_drop_probability


def test_drop_probability_is_rounded_to_sixteen_bits():
    assert quantised_drop_probability(0.1) == 6554 / 65536
    assert quantised_drop_probability(0.5) == 0.5
    assert quantised_drop_probability(1e-6) == 0.0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_drops_at_the_quantised_rate_and_dropout_keeps_the_mean(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of the four uniforms per random word
    mask = keep_mask((n,), p)
    p_q = quantised_drop_probability(p)
    assert torch.unique(mask).tolist() == [0.0, 1.0]
    dropped = 1.0 - mask.double().mean().item()
    sigma = math.sqrt(p_q * (1 - p_q) / n)
    assert abs(dropped - p_q) < 5 * sigma
    out = dropout(torch.ones(n, dtype=torch.float64), p, training=True)
    assert abs(out.mean().item() - 1.0) < 5 * sigma / (1 - p_q)


def test_masks_are_independent_across_positions_and_reproducible_from_the_seed():
    torch.manual_seed(3)
    a = keep_mask((200, 500), 0.5)
    torch.manual_seed(3)
    b = keep_mask((200, 500), 0.5)
    assert torch.equal(a, b)
    # neighbouring elements come from the same 64-bit word: they must still be uncorrelated
    kept = (a > 0).float().flatten()
    corr = torch.corrcoef(torch.stack([kept[:-1], kept[1:]]))[0, 1].item()
    assert abs(corr) < 0.01
    assert keep_mask((200, 500), 0.5).ne(a).any()  # the generator moved on


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_multiplies_by_its_mask_forward_and_backward(dtype):
    x = torch.randn(64, 300, dtype=dtype, requires_grad=True)
    torch.manual_seed(7)
    y = dropout(x, 0.2, training=True)
    torch.manual_seed(7)
    keep = keep_mask(x.shape, 0.2, dtype)
    scale = 1.0 / (1.0 - quantised_drop_probability(0.2))
    assert y.dtype == dtype
    # scaled after masking in float32 arithmetic, rounded once to x's dtype (not x times a bf16-rounded scale)
    scale32 = torch.tensor(scale, dtype=torch.float32)
    assert torch.equal(y, (x.detach().float() * keep.float() * scale32).to(dtype))
    y.sum().backward()
    assert torch.equal(x.grad, (keep.float() * scale32).to(dtype))


def test_dropout_is_the_identity_in_eval_or_at_zero():
    x = torch.randn(10, 10)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    layer = FastDropout(0.3).eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.5)


def test_attention_with_cheap_dropout_computes_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.0)
    q, k, v = (torch.randn(2, 4, n, 8) for n in (5, 7, 7))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # padded keys of the second sample
    ours = attn._attend_with_cheap_dropout(q, k, v, mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_act_chooses_its_dropout_layers_and_trains_with_either():
    def build(fast: bool) -> ACT:
        torch.manual_seed(0)
        return ACT(state_dim=14, action_dim=14, n_cameras=0, chunk_size=10, dim_model=32, n_heads=4,
                   dim_feedforward=64, n_encoder_layers=2, n_vae_encoder_layers=1, dropout=0.1, fast_dropout=fast)

    fast, plain = build(True), build(False)
    kinds = lambda net: {type(m) for m in net.modules() if isinstance(m, (nn.Dropout, FastDropout))}  # noqa: E731
    assert kinds(fast) == {FastDropout} and kinds(plain) == {nn.Dropout}
    assert all(a.fast_dropout for a in fast.modules() if isinstance(a, Attention))
    qpos, actions = torch.randn(4, 14), torch.randn(4, 10, 14)
    fast.eval(), plain.eval()
    # same weights, no dropout at evaluation: the same actions
    assert torch.equal(fast(qpos, [], actions=None).actions, plain(qpos, [], actions=None).actions)
    fast.train()
    out = fast(qpos, [], actions=actions, action_is_pad=torch.zeros(4, 10, dtype=torch.bool))
    loss = (out.actions - actions).abs().mean()
    loss.backward()
    grads = [p.grad for p in fast.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
