"""Generation (model/autoregressive.py, the KV cache): the cache is exact against full forwards; temperature / top-k /
top-p / EOS do what they are named. In process, on the tiny model."""

import pytest
import torch

from gpt4_lightning import GPT4
from gpt4_lightning.model.autoregressive import filter_top_k, filter_top_p, sample
from tests.helpers.models import TINY, perturb_


@pytest.mark.parametrize("flags", [{}, dict(use_abs_pos_emb=True), dict(attn_one_kv_head=False),
                                   dict(attn_flash=False), dict(alibi_pos_bias=False)],
                         ids=["all_on", "abs_pos", "multi_kv", "reference_path", "rotary_only"])
def test_cached_greedy_equals_uncached(flags):
    model = perturb_(GPT4(**{**TINY, **flags}))
    prompt = torch.randint(0, TINY["num_tokens"], (3, 7))
    cached = model.generate(prompt, 40, temperature=0)
    uncached = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (3, 40)
    assert torch.equal(cached, uncached)


def test_cached_logits_equal_full_forward():
    from gpt4_lightning.model import KVCache

    model = perturb_(GPT4(**TINY)).eval()
    tokens = torch.randint(0, TINY["num_tokens"], (2, 30))
    cfg = model.config
    cache = KVCache(cfg.depth, 2, cfg.kv_heads, 30, cfg.dim_head, tokens.device, torch.float32)
    with torch.no_grad():
        steps = [model.net(tokens[:, :10], cache)] + [model.net(tokens[:, i : i + 1], cache) for i in range(10, 30)]
        torch.testing.assert_close(torch.cat(steps, 1), model(tokens), atol=1e-5, rtol=1e-5)


def test_generate_accepts_1d_prompt_and_restores_train_mode():
    model = GPT4(**TINY).train()
    out = model.generate(torch.tensor([1, 2, 3]), 5, temperature=0)
    assert out.shape == (1, 5) and model.training


def test_top_k_one_is_greedy():
    model = GPT4(**TINY)
    prompt = torch.randint(0, TINY["num_tokens"], (2, 5))
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_k=1), greedy)


def test_top_k_samples_only_the_k_most_likely():
    logits = torch.randn(4, 50)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, 5, None, gen) for _ in range(300)], 1)  # (4, 300)
    top5 = logits.topk(5, dim=-1).indices
    assert all(set(draws[r].tolist()) <= set(top5[r].tolist()) for r in range(4))
    assert all(len(set(draws[r].tolist())) == 5 for r in range(4))  # and all of them occur
    assert torch.isinf(filter_top_k(logits, 5)).sum() == 4 * 45


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_top_p(logits, p))[0].tolist()
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.75) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocab must not matter
    assert torch.isfinite(filter_top_p(shuffled, 0.75))[0].tolist() == [False, True, False, True]


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        draws = torch.stack([sample(logits.expand(1000, 4), temperature, None, None, gen) for _ in range(10)])
        freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
        torch.testing.assert_close(freq, (logits[0] / temperature).softmax(-1), atol=0.02, rtol=0)
    assert torch.equal(sample(logits, 0, None, None), torch.tensor([0]))


def first_index(row: torch.Tensor, token: int) -> int | None:
    hits = (row == token).nonzero()
    return int(hits[0]) if len(hits) else None


def test_eos_stops_and_fills():
    model = perturb_(GPT4(**TINY))
    prompt = torch.randint(0, TINY["num_tokens"], (2, 6))
    sampled = lambda **eos: model.generate(prompt, 30, generator=torch.Generator().manual_seed(1), **eos)
    free = sampled()
    at = next(i for i in range(3, 30) if first_index(free[0], int(free[0, i])) == i)
    eos = int(free[0, at])  # row 0 emits it first at step `at`
    out = sampled(eos_token=eos)
    firsts = [first_index(free[r], eos) for r in range(2)]
    stop = max(f if f is not None else 29 for f in firsts) + 1
    assert out.shape == (2, stop)  # stops once every row has emitted EOS (or at max_new_tokens)
    for r, first in enumerate(firsts):
        end = stop if first is None else first + 1
        assert torch.equal(out[r, :end], free[r, :end])  # same samples up to and including EOS
        assert torch.all(out[r, end:] == eos)  # EOS-filled after


def test_generation_extrapolates_past_max_seq_len_without_abs_positions():
    model = GPT4(**{**TINY, "max_seq_len": 16})
    prompt = torch.randint(0, 256, (1, 10))
    out = model.generate(prompt, 20, temperature=0)
    assert out.shape == (1, 20)
    assert torch.equal(out, model.generate(prompt, 20, temperature=0, use_cache=False))
