"""The gradient path of the model, in process: a tiny GPT4 memorises one batch; the loss is next-token cross-entropy
(against a log-softmax + mask reference); every parameter gets a gradient."""

import math

import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.models import TINY


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


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, ignore: int) -> torch.Tensor:
    """Mean over the counted targets of -log softmax(logits)[target], from log_softmax and a boolean mask
    (no cross_entropy, no ignore_index)."""
    keep = targets != ignore
    nll = -logits.float().log_softmax(-1)[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    return nll.sum() / keep.sum()


def test_loss_is_next_token_cross_entropy_with_ignore_index():
    model = GPT4(**TINY)
    with torch.no_grad():
        model.net.to_logits.weight.mul_(20)  # peaked predictions: -log p differs from token to token
    assert model.ignore_index == -100  # the default, as in F.cross_entropy and x-transformers
    tokens = torch.randint(0, TINY["num_tokens"], (2, 17))
    with torch.no_grad():
        logits = model(tokens[:, :-1])
        torch.testing.assert_close(model.loss(tokens), reference_loss(logits, tokens[:, 1:], -100))

        # a padded window: row 0's last target is -100 (inputs are tokens[:, :-1], so only the last column
        # can be -100): 2 * 16 - 1 = 31 targets count, and the logits are those of the unpadded inputs
        padded = tokens.clone()
        padded[0, -1] = -100
        got = model.loss(padded)
        expected = reference_loss(logits, padded[:, 1:], -100)
        assert int((padded[:, 1:] != -100).sum()) == 31
        torch.testing.assert_close(got, expected)
        # not the loss with the ignored target counted (as token 0 or as itself): it differs by > 0.01 here
        as_zero = padded[:, 1:].clamp(min=0)
        assert abs(got - reference_loss(logits, as_zero, -100)) > 0.01

        # ignored targets anywhere in the window (an ignore_index that is a valid id, so the inputs stay valid):
        # the loss is the mean over the other targets only
        model.ignore_index = ignore = 7
        interior = tokens.masked_fill(tokens == ignore, 8)  # no 7 by chance
        interior[0, 3:9] = ignore  # targets 2..7 of row 0
        interior[1, 10] = ignore  # target 9 of row 1 (and the input at position 10)
        logits = model(interior[:, :-1])
        assert int((interior[:, 1:] != ignore).sum()) == 2 * 16 - 7
        got = model.loss(interior)
        torch.testing.assert_close(got, reference_loss(logits, interior[:, 1:], ignore))
        assert abs(got - reference_loss(logits, interior[:, 1:], -100)) > 0.01  # counting them would differ


def test_every_parameter_gets_a_gradient():
    model = GPT4(**{**TINY, "use_abs_pos_emb": True, "attn_qk_norm_dim_scale": False})
    model.loss(torch.randint(0, TINY["num_tokens"], (2, 20))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
