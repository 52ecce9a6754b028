"""The gradient path: a tiny GPT4 memorises one batch; the loss is next-token cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from gpt4_lightning import GPT4


@pytest.mark.parametrize("flags", [{}, dict(attn_flash=False)], ids=["sdpa", "reference"])
def test_overfits_one_batch(flags):
    model = GPT4(**{**TINY, **flags})
    tokens = torch.randint(0, TINY["num_tokens"], (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.loss(tokens)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(first - math.log(TINY["num_tokens"])) < 0.5  # starts near uniform
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_loss_is_next_token_cross_entropy_with_ignore_index():
    model = GPT4(**TINY)
    tokens = torch.randint(0, TINY["num_tokens"], (2, 17))
    logits = model(tokens[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(model.loss(tokens), expected)
    # ignored targets do not count
    padded = torch.cat((tokens, torch.full((2, 3), -100)), dim=1)
    masked_in = padded.clone()
    masked_in[:, -3:] = 0  # inputs must be valid ids; targets -100 are skipped
    logits = model(masked_in[:, :-1])
    expected = F.cross_entropy(logits[:, :16].flatten(0, 1), tokens[:, 1:].flatten())
    targets = padded[:, 1:]
    got = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=model.ignore_index)
    torch.testing.assert_close(got, expected)


def test_every_parameter_gets_a_gradient():
    model = GPT4(**{**TINY, "use_abs_pos_emb": True, "attn_qk_norm_dim_scale": False})
    model.loss(torch.randint(0, TINY["num_tokens"], (2, 20))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
