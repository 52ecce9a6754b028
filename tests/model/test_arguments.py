"""Bad arguments to the model (construction, forward, generate, loss) raise ValueError naming the argument and what
is allowed; failures are logged. In process, on the tiny model."""

import logging
import re

import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.models import TINY


def positive(name: str, value: object) -> str:
    """The positive-size check's own message (model/config.py `_check_positive_int`), exactly: other checks'
    messages name the same fields (e.g. `must be in [1, heads=0]`), so the field's name alone proves nothing."""
    return re.escape(f"{name} must be a positive integer (>= 1), got {value!r}")


# (bad arguments, the argument the error must name, the message (a regex) the error and its log line must match)
BAD_ARGS = [
    (dict(num_tokens=0), "num_tokens", positive("num_tokens", 0)),
    (dict(max_seq_len=-1), "max_seq_len", positive("max_seq_len", -1)),
    (dict(dim=0), "dim", positive("dim", 0)),
    (dict(depth=0), "depth", positive("depth", 0)),
    (dict(dim_head=-8), "dim_head", positive("dim_head", -8)),
    (dict(heads=0), "heads", positive("heads", 0)),
    # with ALiBi, rotary-xPos and qk-norm off no other check could name these two: without the size check
    # the model would build
    (dict(heads=0, alibi_pos_bias=False), "heads", positive("heads", 0)),
    (dict(dim_head=-8, alibi_pos_bias=False, rotary_xpos=False, qk_norm=False), "dim_head", positive("dim_head", -8)),
    (dict(dim=64.0), "dim", positive("dim", 64.0)),
    (dict(heads=4, alibi_num_heads=5), "alibi_num_heads", r"alibi_num_heads=5 must be in \[1, heads=4\]"),
    (dict(alibi_num_heads=0), "alibi_num_heads", positive("alibi_num_heads", 0)),
    (dict(dim_head=2), "dim_head", r"dim_head=2 is too small for the rotary-xPos split"),  # dim_head // 2 = 1
    (dict(dim_head=6), "dim_head", r"dim_head=6 is too small for the rotary-xPos split"),  # 3 dims, odd
    (dict(dim_head=2, rotary_xpos=False), "dim_head", r"dim_head=2 is too small for qk-norm"),
    (dict(rotary_emb_dim=32), "rotary_emb_dim", r"rotary_emb_dim=32\) must be an even number"),  # > dim_head=16
    (dict(attn_backend="cudnn"), "attn_backend", r"attn_backend must be one of .*got 'cudnn'"),
    (dict(rotary_xpos="yes"), "rotary_xpos", r"rotary_xpos must be True or False, got 'yes'"),
    (dict(ff_mult=0), "ff_mult", positive("ff_mult", 0)),
    (dict(attn_qk_norm_scale=-1.0), "attn_qk_norm_scale", r"attn_qk_norm_scale must be a finite number > 0"),
    (dict(not_an_arg=1), "not_an_arg", r"unknown GPT4 argument\(s\) \['not_an_arg'\]"),
]


def case_id(bad: dict) -> str:
    (name, value), *rest = bad.items()
    return f"{name}={value}" + "".join(f",{k}={v}" for k, v in rest)


@pytest.mark.parametrize(("bad", "name", "message"), BAD_ARGS, ids=[case_id(b) for b, _, _ in BAD_ARGS])
def test_bad_argument_is_named_and_logged(bad, name, message, caplog):
    with caplog.at_level(logging.ERROR, logger="gpt4_lightning"), pytest.raises(ValueError, match=message) as err:
        GPT4(**{**TINY, **bad})
    assert name in str(err.value)
    assert any("construction failed" in r.message and re.search(message, r.message) for r in caplog.records)


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
