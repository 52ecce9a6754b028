"""The three attention paths (reference math, SDPA, FlexAttention) agree, and all are causal."""

import pytest
import torch
from conftest import TINY, perturb_

from gpt4_lightning import GPT4

PATHS = {"reference": dict(attn_flash=False), "sdpa": dict(attn_backend="sdpa"), "flex": dict(attn_backend="flex")}
FLAG_SETS = {
    "all_on": {},
    "multi_kv_heads": dict(attn_one_kv_head=False),
    "alibi_all_heads": dict(alibi_num_heads=4),
    "no_alibi": dict(alibi_pos_bias=False),
    "no_qk_norm": dict(qk_norm=False),
}


def same_weights(flags: dict) -> dict[str, GPT4]:
    models = {name: GPT4(**{**TINY, **flags, **path}) for name, path in PATHS.items()}
    perturb_(models["reference"])
    for model in models.values():
        model.load_state_dict(models["reference"].state_dict())
    return models


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_paths_agree(flags):
    models = same_weights(flags)
    tokens = torch.randint(0, TINY["num_tokens"], (2, 128))
    with torch.no_grad():
        expected = models["reference"](tokens)
        for name in ("sdpa", "flex"):
            torch.testing.assert_close(models[name](tokens), expected, atol=1e-5, rtol=1e-5, msg=name)


def test_chunked_sdpa_matches_reference_past_the_chunk_size():
    from gpt4_lightning.model.kernels import CAUSAL_CHUNK

    models = same_weights({})
    n = CAUSAL_CHUNK + 45  # more than one query chunk, the last one partial
    tokens = torch.randint(0, TINY["num_tokens"], (1, n + 1))
    with torch.no_grad():
        torch.testing.assert_close(models["sdpa"](tokens[:, :n]), models["reference"](tokens[:, :n]),
                                   atol=1e-5, rtol=1e-5)
    losses = {name: models[name].loss(tokens) for name in ("sdpa", "reference")}
    torch.testing.assert_close(losses["sdpa"], losses["reference"])
    for loss in losses.values():
        loss.backward()
    k_grad = lambda name: models[name].net.decoder.blocks[0].attn.to_qkv.weight.grad
    torch.testing.assert_close(k_grad("sdpa"), k_grad("reference"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_causal_on_every_path(path):
    model = same_weights({})[path]
    tokens = torch.randint(0, TINY["num_tokens"], (1, 300))  # past one SDPA query chunk
    with torch.no_grad():
        base = model(tokens)
        for t in (0, 17, 255, 256, 299):
            changed = tokens.clone()
            changed[0, t] = (tokens[0, t] + 1) % TINY["num_tokens"]
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)  # bit-identical before t
            assert not torch.allclose(out[:, t], base[:, t])


def test_sdpa_path_trains_and_matches_reference_gradients():
    models = same_weights({})
    tokens = torch.randint(0, TINY["num_tokens"], (2, 65))
    grads = {}
    for name in ("reference", "sdpa"):
        models[name].zero_grad()
        models[name].loss(tokens).backward()
        grads[name] = {n: p.grad for n, p in models[name].named_parameters()}
    for n, g in grads["reference"].items():
        torch.testing.assert_close(grads["sdpa"][n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_alibi_bias_is_built_once_per_sequence_length():
    model = GPT4(**TINY)
    alibi = model.net.decoder.alibi
    tokens = torch.randint(0, TINY["num_tokens"], (2, 32))
    model(tokens)
    first = alibi._cache[1]
    model(tokens)
    assert alibi._cache[1] is first  # reused, not rebuilt
    assert first.shape == (1, TINY["heads"], 32, 32)  # 4-D: SDPA's fused kernel takes it
    assert torch.all(first[0, TINY["alibi_num_heads"]:].nan_to_num(neginf=0) == 0)  # causal-only heads


@pytest.mark.slow
def test_compiled_flex_matches_reference(monkeypatch):
    """The CUDA path compiles FlexAttention; compile it on CPU too (forward) and compare."""
    from torch.nn.attention.flex_attention import flex_attention

    from gpt4_lightning.model import kernels

    compiled = torch.compile(flex_attention, dynamic=False)
    monkeypatch.setattr(kernels, "_flex_kernel", lambda device_type: compiled)
    models = same_weights({})
    tokens = torch.randint(0, TINY["num_tokens"], (2, 128))
    with torch.no_grad():
        torch.testing.assert_close(models["flex"](tokens), models["reference"](tokens), atol=1e-5, rtol=1e-5)
