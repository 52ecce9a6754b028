"""Bad arguments raise ValueError naming the argument and what is allowed; failures are logged."""

import logging

import pytest
import torch
from conftest import TINY

from gpt4_lightning import GPT4

BAD_ARGS = [
    (dict(num_tokens=0), "num_tokens"),
    (dict(max_seq_len=-1), "max_seq_len"),
    (dict(dim=0), "dim"),
    (dict(depth=0), "depth"),
    (dict(dim_head=-8), "dim_head"),
    (dict(heads=0), "heads"),
    (dict(dim=64.0), "dim"),
    (dict(heads=4, alibi_num_heads=5), "alibi_num_heads"),
    (dict(alibi_num_heads=0), "alibi_num_heads"),
    (dict(dim_head=2), "dim_head"),  # rotary split: dim_head // 2 = 1 dim, not a pair
    (dict(dim_head=6), "dim_head"),  # rotary split: 3 dims, odd
    (dict(dim_head=2, rotary_xpos=False), "dim_head"),  # qk-norm on 2 dims
    (dict(rotary_emb_dim=32), "rotary_emb_dim"),  # more than dim_head=16
    (dict(attn_backend="cudnn"), "attn_backend"),
    (dict(rotary_xpos="yes"), "rotary_xpos"),
    (dict(ff_mult=0), "ff_mult"),
    (dict(attn_qk_norm_scale=-1.0), "attn_qk_norm_scale"),
    (dict(not_an_arg=1), "not_an_arg"),
]


@pytest.mark.parametrize(("bad", "name"), BAD_ARGS, ids=[f"{n}={next(iter(b.values()))}" for b, n in BAD_ARGS])
def test_bad_argument_is_named_and_logged(bad, name, caplog):
    with caplog.at_level(logging.ERROR, logger="gpt4_lightning"), pytest.raises(ValueError, match=name):
        GPT4(**{**TINY, **bad})
    assert any("construction failed" in r.message and name in r.message for r in caplog.records)


def test_valid_edge_cases_build():
    GPT4(**{**TINY, "alibi_num_heads": TINY["heads"]})
    GPT4(**{**TINY, "alibi_pos_bias": False, "alibi_num_heads": 99})  # unused when ALiBi is off
    GPT4(**{**TINY, "dim_head": 4})


@pytest.fixture(scope="module")
def model():
    return GPT4(**TINY)


BAD_TOKENS = [
    (lambda: torch.tensor([[0, 256]]), r"num_tokens=256"),
    (lambda: torch.tensor([[-1, 3]]), r"\[0, num_tokens=256\)"),
    (lambda: torch.rand(2, 8), "integer"),
    (lambda: torch.zeros(2, 8, dtype=torch.bool), "integer"),
    (lambda: torch.zeros(8, dtype=torch.long), r"\(batch, seq_len\)"),
    (lambda: torch.zeros(2, 3, 4, dtype=torch.long), r"\(batch, seq_len\)"),
    (lambda: torch.zeros(2, 0, dtype=torch.long), "seq_len 0"),
    (lambda: [[1, 2, 3]], "torch.Tensor"),
]


@pytest.mark.parametrize(("make", "message"), BAD_TOKENS)
def test_bad_tokens_raise_and_log(model, make, message, caplog):
    with caplog.at_level(logging.ERROR, logger="gpt4_lightning"), pytest.raises(ValueError, match=message):
        model(make())
    assert any("forward failed" in r.message for r in caplog.records)


def test_too_long_without_extrapolation():
    model = GPT4(**{**TINY, "use_abs_pos_emb": True, "max_seq_len": 16})
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), 7)
    # positions that extrapolate accept longer inputs
    GPT4(**{**TINY, "max_seq_len": 16})(torch.zeros(1, 40, dtype=torch.long))


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=257), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(eos_token=256), "eos_token"),
])
def test_bad_sampling_arguments(model, kwargs, name, caplog):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with caplog.at_level(logging.ERROR, logger="gpt4_lightning"), pytest.raises(ValueError, match=name):
        model.generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)
    assert any("generate failed" in r.message for r in caplog.records)


def test_loss_needs_two_tokens(model):
    with pytest.raises(ValueError, match=">= 2 tokens"):
        model.loss(torch.zeros(2, 1, dtype=torch.long))
