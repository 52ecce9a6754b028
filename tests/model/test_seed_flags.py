"""Each seed flag changes the computation as its lineage documents, and turns off cleanly: in process, the tiny
model and the flags' own modules against hand-computed values."""

import pytest
import torch

from gpt4_lightning import GPT4
from gpt4_lightning.model.attention import QKNorm
from gpt4_lightning.model.kernels import KERNELS, reference_attention
from gpt4_lightning.model.positional import RotaryXPos, alibi_slopes, apply_rotary
from tests.helpers.models import TINY


def tiny(**flags) -> GPT4:
    return GPT4(**{**TINY, **flags})


def attention_probs_from_bias(model: GPT4, n: int) -> torch.Tensor:
    """Attention weights when q·k = 0 everywhere: what the positional bias alone does. (h, n, n)."""
    decoder = model.net.decoder
    bias = decoder.attention_bias(KERNELS["reference"], n, n, torch.device("cpu"), torch.float32)
    h = model.config.heads
    eye = torch.eye(n)[None, None].expand(1, h, n, n)  # v = identity: output rows are the weights
    zeros = torch.zeros(1, h, n, n)
    return reference_attention(zeros, zeros[:, :1], eye[:, :1], bias)[0]


# --- ALiBi -------------------------------------------------------------------------------------


def test_alibi_biases_only_the_first_alibi_num_heads_heads():
    model = tiny(heads=4, alibi_num_heads=2)
    probs = attention_probs_from_bias(model, 16)
    causal_uniform = torch.tril(torch.ones(16, 16)) / torch.arange(1, 17)[:, None]
    for head in (2, 3):  # no bias: uniform over the causal prefix
        torch.testing.assert_close(probs[head], causal_uniform)
    slopes = model.net.decoder.alibi.slopes
    distance = torch.arange(15, -1, -1.0)
    for head in (0, 1):  # biased: weight decays with distance as softmax(-slope * distance)
        row = probs[head, 15]
        assert torch.all(row[1:] > row[:-1])
        torch.testing.assert_close(row, (-slopes[head] * distance).softmax(-1))
    assert probs[0, 15, 0] < probs[1, 15, 0]  # head 0 has the steeper slope


def test_alibi_slopes_are_the_geometric_sequence():
    torch.testing.assert_close(alibi_slopes(4, 6), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 0.0, 0.0]))
    s12 = alibi_slopes(12, 24)  # not a power of 2: 8 slopes of 2^-1.., then odd ones of the 16-series
    assert torch.count_nonzero(s12) == 12
    torch.testing.assert_close(s12[:8], torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    torch.testing.assert_close(s12[8:12], torch.tensor([2.0 ** -(0.5 + i) for i in range(4)]))


def test_alibi_off_means_no_positional_bias():
    model = tiny(alibi_pos_bias=False, rotary_xpos=False)
    assert model.net.decoder.alibi is None
    probs = attention_probs_from_bias(model, 8)
    torch.testing.assert_close(probs[0], torch.tril(torch.ones(8, 8)) / torch.arange(1, 9)[:, None])


# --- rotary xPos -------------------------------------------------------------------------------


def test_xpos_scales_queries_and_keys_with_opposite_powers():
    rot = RotaryXPos(rot_dim=8, dim_head=16, use_xpos=True, scale_base=512, center=64)
    t = rot(0, 128)
    pair = slice(0, 8, 2)  # one entry per rotated pair
    q_scale = (t.q_cos[:, pair] ** 2 + t.q_sin[:, pair] ** 2).sqrt()  # (n, rot/2): s^((pos - center) / base)
    k_scale = (t.k_cos[:, pair] ** 2 + t.k_sin[:, pair] ** 2).sqrt()
    torch.testing.assert_close(q_scale * k_scale, torch.ones_like(q_scale))
    pos = torch.arange(128.0)[:, None]
    expected = rot.xpos_scale ** ((pos - 64) / 512)
    torch.testing.assert_close(q_scale, expected)
    assert torch.all(rot.xpos_scale < 1)  # decays for positions past the center: long-range damping
    assert torch.all(q_scale[100] < q_scale[10]) and torch.all(k_scale[100] > k_scale[10])


def test_rotary_scores_depend_only_on_distance_and_decay_with_it():
    rot = RotaryXPos(rot_dim=16, dim_head=16, use_xpos=True, scale_base=512, center=64)
    t = rot(0, 128)
    q = torch.randn(1, 1, 1, 16).expand(1, 1, 128, 16)  # the same content at every position
    k = q.clone()
    q_r, k_r = apply_rotary(q, t.q_cos, t.q_sin), apply_rotary(k, t.k_cos, t.k_sin)
    scores = (q_r @ k_r.transpose(-1, -2))[0, 0]
    torch.testing.assert_close(scores[40, 30], scores[90, 80])  # same distance, same score
    torch.testing.assert_close(scores[20, 20], scores[100, 100])
    # xPos multiplies each rotated pair's contribution by its scale^(distance / scale_base):
    # with content only in pair 0, the score is plain rotary's times s_0^((i - j) / 512)
    one_pair = torch.zeros(1, 1, 128, 16)
    one_pair[..., :2] = torch.randn(2)
    plain = RotaryXPos(rot_dim=16, dim_head=16, use_xpos=False, scale_base=512, center=64)(0, 128)
    xpos = (apply_rotary(one_pair, t.q_cos, t.q_sin) @ apply_rotary(one_pair, t.k_cos, t.k_sin).mT)[0, 0]
    plain_k = apply_rotary(one_pair, plain.k_cos, plain.k_sin)
    base = (apply_rotary(one_pair, plain.q_cos, plain.q_sin) @ plain_k.mT)[0, 0]
    distance = torch.arange(128.0)[:, None] - torch.arange(128.0)[None, :]
    torch.testing.assert_close(xpos, base * rot.xpos_scale[0] ** (distance / 512), atol=1e-5, rtol=1e-4)


def test_rotary_rotates_only_the_first_half_of_each_head():
    model = tiny()
    assert model.net.decoder.rotary.rot_dim == TINY["dim_head"] // 2
    t = model.net.decoder.rotary(5, 4)
    x = torch.randn(1, 2, 4, TINY["dim_head"])
    y = apply_rotary(x, t.q_cos, t.q_sin)
    half = TINY["dim_head"] // 2
    torch.testing.assert_close(y[..., half:], x[..., half:])
    assert not torch.allclose(y[..., :half], x[..., :half])


def test_rotary_off_removes_it():
    model, plain = tiny(), tiny(rotary_xpos=False)
    assert plain.net.decoder.rotary is None
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (1, 32))
    assert not torch.allclose(model(tokens), plain(tokens))


# --- multi-query attention ---------------------------------------------------------------------


def test_one_kv_head_shrinks_kv_projections_and_cache():
    d, dh, h = TINY["dim"], TINY["dim_head"], TINY["heads"]
    mqa, mha = tiny(), tiny(attn_one_kv_head=False)
    assert mqa.net.decoder.blocks[0].attn.to_qkv.weight.shape == ((h + 2) * dh, d)  # k, v: dim -> dim_head
    assert mha.net.decoder.blocks[0].attn.to_qkv.weight.shape == (3 * h * dh, d)
    assert mqa.config.kv_heads == 1 and mha.config.kv_heads == h
    per_layer = 2 * (h - 1) * dh * d + (h - 1) * dh  # k/v projections + qk-norm key gains
    assert mha.num_params() - mqa.num_params() == TINY["depth"] * per_layer


def test_one_kv_head_shares_keys_across_query_heads():
    """Swapping two query heads' q-projections swaps their outputs exactly (same keys/values)."""
    model = tiny(alibi_pos_bias=False, qk_norm=False)
    attn = model.net.decoder.blocks[0].attn
    x = torch.randn(1, 8, TINY["dim"])
    rotary = model.net.decoder.rotary(0, 8)
    bias = model.net.decoder.attention_bias(KERNELS["sdpa"], 8, 8, x.device, x.dtype)
    captured = {}
    attn.to_out.register_forward_hook(lambda m, inp, out: captured.__setitem__("heads", inp[0]))
    attn(x, rotary, bias, KERNELS["sdpa"])
    before = captured["heads"].view(1, 8, 4, 16)
    with torch.no_grad():
        w = attn.to_qkv.weight
        w[:16], w[16:32] = w[16:32].clone(), w[:16].clone()
    attn(x, rotary, bias, KERNELS["sdpa"])
    after = captured["heads"].view(1, 8, 4, 16)
    torch.testing.assert_close(after[:, :, 0], before[:, :, 1])
    torch.testing.assert_close(after[:, :, 1], before[:, :, 0])


# --- qk-norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim_scale", [True, False])
def test_qk_norm_bounds_scores_by_the_learned_scale(dim_scale):
    norm = QKNorm(heads=4, kv_heads=1, dim_head=16, dim_scale=dim_scale, init_scale=10.0)
    with torch.no_grad():
        for p in norm.parameters():
            p.mul_(torch.rand_like(p) + 0.5)
    if dim_scale:  # max over dims of the q·k gain product, times the softmax scale d^-0.5
        bound = (norm.q_scale * norm.k_scale).abs().amax(-1).view(1, 4, 1) * 16**-0.5
    else:
        bound = norm.temperature.view(1, 4, 1)
    q, k = torch.randn(2, 4, 8, 16) * 1e4, torch.randn(2, 1, 8, 16) * 1e4  # huge activations
    qn, kn = norm(q, k)  # the softmax scale is folded into q
    scores = qn @ kn.transpose(-1, -2)
    assert torch.all(scores.abs().amax(-1) <= bound + 1e-4)
    # the bound is reached when q and k point along the dimension of largest gain
    best = int((norm.q_scale * norm.k_scale)[0, 0].abs().argmax()) if dim_scale else 0
    one_hot = torch.nn.functional.one_hot(torch.tensor(best), 16).float() * 1e4
    qn, kn = norm(one_hot.expand(1, 4, 1, 16), one_hot.expand(1, 1, 1, 16))
    top = (qn @ kn.transpose(-1, -2))[0, 0, 0, 0]
    torch.testing.assert_close(top, bound[0, 0, 0])


@pytest.mark.parametrize(("qk_norm", "attn_qk_norm", "on"),
                         [(True, True, True), (False, True, False), (True, False, False), (False, False, False)])
def test_qk_norm_needs_both_switches(qk_norm, attn_qk_norm, on):
    model = tiny(qk_norm=qk_norm, attn_qk_norm=attn_qk_norm)
    assert model.config.use_qk_norm is on
    assert (model.net.decoder.blocks[0].attn.qk_norm is not None) is on


def test_dim_scale_chooses_per_dimension_gains_or_a_temperature():
    with_scale = tiny().net.decoder.blocks[0].attn.qk_norm
    without = tiny(attn_qk_norm_dim_scale=False).net.decoder.blocks[0].attn.qk_norm
    assert with_scale.q_scale.shape == (4, 1, 16) and with_scale.k_scale.shape == (1, 1, 16)
    assert without.temperature.shape == (4, 1, 1) and not hasattr(without, "q_scale")
    # dim_scale only refines qk-norm: with qk-norm off it adds nothing
    assert tiny(qk_norm=False).num_params() == tiny(qk_norm=False, attn_qk_norm_dim_scale=False).num_params()


# --- absolute positions ------------------------------------------------------------------------


def test_abs_pos_emb_gives_order_where_nothing_else_does():
    """With no rotary or ALiBi, one causal attention layer sees the prefix as a set: swapping the
    first two tokens leaves later logits unchanged. Learned absolute positions break that symmetry."""
    tokens = torch.randint(0, 256, (1, 12))
    swapped = tokens.clone()
    swapped[0, [0, 1]] = tokens[0, [1, 0]]
    bag = tiny(alibi_pos_bias=False, rotary_xpos=False, depth=1)
    torch.testing.assert_close(bag(tokens)[:, 2:], bag(swapped)[:, 2:], atol=1e-5, rtol=1e-5)
    ordered = tiny(alibi_pos_bias=False, rotary_xpos=False, use_abs_pos_emb=True, depth=1)
    assert ordered.net.abs_pos_emb.weight.shape == (TINY["max_seq_len"], TINY["dim"])
    assert not torch.allclose(ordered(tokens)[:, 2:], ordered(swapped)[:, 2:], atol=1e-4)


# --- attn_flash --------------------------------------------------------------------------------


def test_attn_flash_selects_fused_kernel_and_off_falls_back_to_reference():
    fused, plain = tiny(), tiny(attn_flash=False)
    cpu = torch.device("cpu")
    assert fused.net.decoder.kernel_for(cpu, 8, 8).name == "sdpa"
    assert fused.net.decoder.kernel_for(torch.device("cuda"), 8, 8).name == "flex"
    assert fused.net.decoder.kernel_for(torch.device("cuda"), 1, 9).name == "sdpa"  # cached decoding step
    assert plain.net.decoder.kernel_for(cpu, 8, 8).name == "reference"
    plain.load_state_dict(fused.state_dict())
    tokens = torch.randint(0, 256, (2, 64))
    torch.testing.assert_close(fused(tokens), plain(tokens), atol=1e-5, rtol=1e-5)
