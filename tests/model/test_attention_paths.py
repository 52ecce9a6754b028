"""The three attention paths (reference math, SDPA, FlexAttention) agree with the reference math, and all are causal
(document masks too); in process, on the tiny model."""

import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.models import TINY, perturb_

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


EOS = 3


def windows_with_documents(first_doc: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """One window: `first_doc`, EOS, then `rest` (the next document, running to the window's end)."""
    return torch.cat([first_doc, torch.tensor([EOS]), rest])[None]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("flags", [{}, dict(alibi_pos_bias=False)], ids=["alibi", "no_alibi"])
def test_document_mask_isolates_a_document_from_the_one_before(path, flags):
    """With document masking, the second document's logits do not change when the document before it does:
    exactly for the same length (same positions), to float tolerance for another length (positions shift;
    ALiBi and rotary-xPos see only distances). Without masking they do change (the test can fail)."""
    from gpt4_lightning.model.kernels import document_ids

    model = same_weights(flags)[path]
    vocab = TINY["num_tokens"]
    second = torch.randint(EOS + 1, vocab, (200,))  # past one SDPA query chunk in all
    first_a, first_b = torch.randint(EOS + 1, vocab, (60,)), torch.randint(EOS + 1, vocab, (60,))
    first_c = torch.randint(EOS + 1, vocab, (45,))
    outputs = {}
    with torch.no_grad():
        for name, first in (("a", first_a), ("b", first_b), ("c", first_c)):
            tokens = windows_with_documents(first, second)
            documents = document_ids(tokens, EOS)
            assert documents[0, len(first)] == 1  # the EOS opens the second document
            outputs[name] = model(tokens, documents)[0, len(first):]  # the EOS and the second document
            outputs[name + "_unmasked"] = model(tokens)[0, len(first):]
    torch.testing.assert_close(outputs["b"], outputs["a"], atol=0, rtol=0)
    torch.testing.assert_close(outputs["c"], outputs["a"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outputs["b_unmasked"], outputs["a_unmasked"], atol=1e-3)


def test_document_mask_is_causal_attention_on_each_document_alone():
    """Two documents in one window, masked: each one's logits equal the model run on that document alone
    (the second with its EOS first), on the reference path."""
    from gpt4_lightning.model.kernels import document_ids

    model = same_weights({})["sdpa"]
    first, second = torch.randint(EOS + 1, 64, (30,)), torch.randint(EOS + 1, 64, (40,))
    tokens = windows_with_documents(first, second)
    with torch.no_grad():
        masked = model(tokens, document_ids(tokens, EOS))[0]
        torch.testing.assert_close(masked[:30], model(first[None])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked[30:], model(tokens[:, 30:])[0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_the_compiled_document_block_mask_is_the_eager_one_and_compiles_once():
    """CUDA builds the per-batch document block mask compiled (eager, torch materialises the whole (b, 1, n, n)
    mask): run here on CPU, the compiled one equals the eager one block for block, and new batches of the same
    shape (a new closure over new ids each time) reuse the one graph rather than compile again."""
    from torch._dynamo.utils import counters

    from gpt4_lightning.model.kernels import document_block_mask, document_ids

    torch._dynamo.reset()
    counters.clear()
    for _ in range(3):
        documents = document_ids(torch.randint(0, 12, (2, 384)), EOS)
        compiled, eager = document_block_mask(documents, compiled=True), document_block_mask(documents, compiled=False)
        assert torch.equal(compiled.to_dense(), eager.to_dense())
        assert torch.equal(compiled.kv_num_blocks, eager.kv_num_blocks)
        assert torch.equal(compiled.full_kv_num_blocks, eager.full_kv_num_blocks)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("precision", ["autocast_bf16", "bf16_true"])
def test_every_path_runs_in_bf16_and_agrees_with_fp32(path, precision, monkeypatch):
    """bf16 as training runs it: CPU autocast (fp32 weights; qk-norm gains and rotary tables are fp32, so q and k
    would come out fp32 beside a bf16 v: FlexAttention needs one dtype) and bf16-true (every weight bf16). The
    logits agree with fp32 within bf16's precision; backward runs (FlexAttention has none on CPU: forward only)."""
    import copy

    fp32 = same_weights({})[path]
    tokens = torch.randint(0, TINY["num_tokens"], (2, 96))
    with torch.no_grad():
        expected = fp32(tokens)
    model = copy.deepcopy(fp32).to(torch.bfloat16) if precision == "bf16_true" else fp32
    from gpt4_lightning.model.attention import Attention

    seen, forward = [], Attention.forward

    def recording(self, x, rotary, bias, kernel, cache=None):  # the dtypes each kernel call receives
        def kernel_seen(q, k, v, b):
            seen.append((q.dtype, k.dtype, v.dtype))
            return kernel(q, k, v, b)
        return forward(self, x, rotary, bias, kernel_seen, cache)

    monkeypatch.setattr(Attention, "forward", recording)
    with torch.set_grad_enabled(path != "flex"), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                  enabled=precision == "autocast_bf16"):
        logits = model(tokens)
    assert logits.dtype == torch.bfloat16
    assert seen and set(seen) == {(torch.bfloat16,) * 3}, seen  # q, k, v of one dtype: the compute dtype
    torch.testing.assert_close(logits.float(), expected, atol=0.15, rtol=0.05)
    if path != "flex":
        logits.float().logsumexp(-1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
