"""Weight-decay groups, the lr schedules (warmup-cosine, warmup-stable-decay) against their written-out definitions,
the FLOPs formula, and gradient accumulation against the larger batch; in process."""

import itertools
import math

import lightning as L
import pytest
import torch

from gpt4_lightning import GPT4, GPT4Config
from gpt4_lightning.training.flops import flops_per_token, matmul_params
from gpt4_lightning.training.module import GPT4LitModule
from gpt4_lightning.training.optim import lr_scheduler, weight_decay_groups
from gpt4_lightning.training.schedule import lr_multiplier
from tests.helpers.models import TINY
from tests.helpers.schedules import wsd_definition


def test_weight_decay_only_on_matmul_weights_and_embeddings():
    model = GPT4(**{**TINY, "use_abs_pos_emb": True})
    decay, no_decay = weight_decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    kept = sorted(names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay  # decay group: the optimizer's value
    assert all(n.endswith(("to_qkv.weight", "to_out.weight", "proj_in.weight", "proj_out.weight", "to_logits.weight",
                           "token_emb.weight", "abs_pos_emb.weight")) for n in decayed)
    assert all(n.endswith(("gamma", "bias", "q_scale", "k_scale")) for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))
    assert all(p.ndim >= 2 for p in decay["params"])


def test_warmup_then_cosine_to_the_floor():
    f = lr_multiplier(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # floor, then flat
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_multiplier(10, 100, 1.5)


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_wsd_lr_equals_its_definition_at_every_step(shape):
    """The scheduler as training steps it (LambdaLR on a real optimizer): lr at every step of warmup 10,
    stable to step 80, decay over the last 20 % of 100, then flat at the floor."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = lr_scheduler(optimizer, warmup_steps=10, total_steps=100, min_lr_ratio=0.05, decay_fraction=0.2,
                             decay_shape=shape)
    lrs = []
    for _ in range(120):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [2.0 * wsd_definition(s, 10, 100, 0.2, shape, 0.05) for s in range(120)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert lrs[10:80] == [2.0] * 70 and lrs[80] == 2.0 and lrs[99] > lrs[100] == pytest.approx(0.1)


def test_wsd_without_room_for_its_decay_is_refused():
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_multiplier(90, 100, 0.0, decay_fraction=0.2)  # the decay would start inside the warmup
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_multiplier(0, 100, 0.0, decay_fraction=0.001)  # rounds to no decay step
    with pytest.raises(ValueError, match="decay_shape"):
        lr_multiplier(0, 100, 0.0, decay_fraction=0.2, decay_shape="exp")


def test_flops_formula_counts_matmuls_and_attention():
    model = GPT4(**TINY)
    cfg = model.config
    n = matmul_params(model)
    dim, h, dh, kvh = cfg.dim, cfg.heads, cfg.dim_head, cfg.kv_heads
    per_layer = dim * (h + 2 * kvh) * dh + h * dh * dim + 2 * dim * cfg.ff_mult * dim
    assert n == cfg.depth * per_layer + dim * cfg.num_tokens
    assert flops_per_token(cfg, n, 64) == 6 * n + 12 * cfg.depth * h * dh * 64


def one_update(tokens: torch.Tensor, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    module = GPT4LitModule(GPT4Config(**TINY), optimizer=lambda groups: torch.optim.SGD(groups, lr=0.5))
    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(tokens, batch_size=batch_size))
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_gradient_accumulation_equals_the_larger_batch():
    tokens = torch.randint(0, TINY["num_tokens"], (8, 33))
    whole = one_update(tokens, batch_size=8, accumulate=1)
    accumulated = one_update(tokens, batch_size=4, accumulate=2)
    first_half = one_update(tokens, batch_size=4, accumulate=1)
    assert not torch.allclose(first_half["net.to_logits.weight"], whole["net.to_logits.weight"])  # not vacuous
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, atol=1e-6, rtol=1e-5, msg=name)
