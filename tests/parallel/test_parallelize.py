"""Parallelism applied from outside (parallel/parallelize.py): activation checkpointing and compile change the graph,
not the loss or the gradients; in process, one CPU process."""

import copy

import pytest
import torch

from gpt4_lightning import GPT4
from gpt4_lightning.parallel.config import ParallelConfig
from gpt4_lightning.parallel.parallelize import parallelize
from tests.helpers.models import TINY


def loss_and_grads(model: GPT4, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model.loss(tokens)
    loss.backward()
    # parameter names as in the state dict (the AC wrapper adds a level to named_parameters)
    return loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone()
                           for n, p in model.named_parameters()}


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_keeps_loss_grads_and_names(every):
    model = GPT4(**{**TINY, "depth": 4})
    checkpointed = parallelize(copy.deepcopy(model), ParallelConfig(activation_checkpointing=True, ac_every=every))
    wrapped = [type(b).__name__ for b in checkpointed.net.decoder.blocks]
    assert wrapped == ["CheckpointWrapper" if i % every == 0 else "DecoderBlock" for i in range(4)]
    assert checkpointed.state_dict().keys() == model.state_dict().keys()  # checkpoints stay interchangeable
    tokens = torch.randint(0, TINY["num_tokens"], (2, 33))
    loss, grads = loss_and_grads(model, tokens)
    ac_loss, ac_grads = loss_and_grads(checkpointed, tokens)
    torch.testing.assert_close(ac_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(ac_grads[name], grad, msg=name)


def test_bad_parallel_config_is_named():
    with pytest.raises(ValueError, match=r"parallel\.ac_every"):
        ParallelConfig(ac_every=0)
    with pytest.raises(ValueError, match=r"parallel\.param_dtype"):
        ParallelConfig(param_dtype="bf17")


@pytest.mark.slow
def test_compile_keeps_loss_and_grads():
    model = GPT4(**TINY)
    compiled = parallelize(copy.deepcopy(model), ParallelConfig(compile=True, activation_checkpointing=True))
    assert compiled.state_dict().keys() == model.state_dict().keys()
    tokens = torch.randint(0, TINY["num_tokens"], (2, 33))
    loss, grads = loss_and_grads(model, tokens)
    c_loss, c_grads = loss_and_grads(compiled, tokens)
    torch.testing.assert_close(c_loss, loss, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(c_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_seeded_init_depends_on_names_not_on_wrappers_or_order():
    a = GPT4(**TINY)
    a.init_weights(seed=7)
    b = parallelize(GPT4(**TINY), ParallelConfig(activation_checkpointing=True))
    torch.randn(100)  # consuming the global RNG in between changes nothing
    b.init_weights(seed=7)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c = GPT4(**TINY)
    c.init_weights(seed=8)
    assert not torch.equal(c.net.to_logits.weight, a.net.to_logits.weight)


def test_auto_mixed_precision_follows_the_trainer_precision():
    auto = ParallelConfig(param_dtype="auto", reduce_dtype="auto")
    assert (auto.for_precision("bf16-mixed").param_dtype, auto.for_precision("bf16-mixed").reduce_dtype) == (
        "bf16", "fp32")
    for precision in ("32-true", "bf16-true"):
        resolved = auto.for_precision(precision)
        assert (resolved.param_dtype, resolved.reduce_dtype) == (None, None)
    explicit = ParallelConfig(param_dtype="fp32", reduce_dtype=None).for_precision("bf16-mixed")
    assert (explicit.param_dtype, explicit.reduce_dtype) == ("fp32", None)  # a user's choice is kept
