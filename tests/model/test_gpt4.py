"""The seed's class (model/gpt4.py), in process: signature, default size on the meta device (vs x-transformers'
count), the usage snippet, init after a meta build and its scaling, save/from_pretrained."""

import inspect
import json

import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.xt_reference import build_xtransformers

SEED_SIGNATURE = [
    ("num_tokens", 50432), ("max_seq_len", 8192), ("dim", 2560), ("depth", 32), ("dim_head", 128),
    ("heads", 24), ("use_abs_pos_emb", False), ("alibi_pos_bias", True), ("alibi_num_heads", 12),
    ("rotary_xpos", True), ("attn_flash", True), ("attn_one_kv_head", True), ("qk_norm", True),
    ("attn_qk_norm", True), ("attn_qk_norm_dim_scale", True),
]


def test_signature_is_the_seeds():
    params = list(inspect.signature(GPT4).parameters.values())
    named = [(p.name, p.default) for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert named == SEED_SIGNATURE
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD  # decoder extras


def test_default_size_on_meta_matches_lineage_count(capsys):
    with torch.device("meta"):
        model = GPT4()
        reference = build_xtransformers(model.config)
    count = model.num_params()
    print(f"GPT4() parameters: {count:,}")
    assert count == sum(p.numel() for p in reference.parameters())
    assert 2.4e9 < count < 2.5e9
    assert all(p.device.type == "meta" for p in model.parameters())
    logits = model(torch.zeros(3, 8192, dtype=torch.long, device="meta"))
    assert logits.shape == (3, 8192, 50432)


def test_seed_usage_snippet_small():
    model = GPT4(num_tokens=512, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)
    tokens = torch.randint(0, 512, (3, 64))
    output = model.forward(tokens)
    assert output.shape == (3, 64, 512)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()


def test_unknown_decoder_kwarg_is_named():
    with pytest.raises(ValueError, match="attn_flashh"):
        GPT4(attn_flashh=True)


def test_init_weights_reinitialises_after_meta_build():
    with torch.device("meta"):
        model = GPT4(num_tokens=256, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)
    model.to_empty(device="cpu")
    model.init_weights()
    block = model.net.decoder.blocks[0]
    assert torch.equal(block.attn_norm.gamma, torch.ones(64))
    assert torch.allclose(block.attn.qk_norm.q_scale, torch.full_like(block.attn.qk_norm.q_scale, 16**0.25))
    assert 0.9 * (2 / (5 * 64)) ** 0.5 < model.net.to_logits.weight.std() < 1.1 * (2 / (5 * 64)) ** 0.5  # model/init.py
    assert torch.count_nonzero(model.net.decoder.alibi.slopes) == 2
    logits = model(torch.randint(0, 256, (2, 16)))
    assert torch.isfinite(logits).all()


def test_save_and_from_pretrained_round_trip_without_pickle(tmp_path):
    model = GPT4(num_tokens=256, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2,
                 use_abs_pos_emb=True)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    data = (tmp_path / "model.safetensors").read_bytes()  # safetensors: u64 header length, JSON header, raw data
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert header["net.abs_pos_emb.weight"] == {"dtype": "F32", "shape": [64, 64],
                                                "data_offsets": header["net.abs_pos_emb.weight"]["data_offsets"]}
    loaded = GPT4.from_pretrained(tmp_path)
    assert loaded.config == model.config
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model.eval()(tokens))
    with pytest.raises(ValueError, match=r"config\.json"):
        GPT4.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(("dim", "depth"), [(64, 2), (256, 8)])
def test_init_scales_with_fan_in_and_depth(dim, depth):
    """model/init.py: every matmul std sqrt(2 / (5 fan_in)), residual outputs that / sqrt(depth), embedding
    1/sqrt(dim), at every width and depth (GPT-2's fixed 0.02 did not scale)."""
    model = GPT4(num_tokens=2048, max_seq_len=64, dim=dim, depth=depth, dim_head=16, heads=dim // 16,
                 alibi_num_heads=2)
    block = model.blocks[0]
    small = lambda fan_in: (2 / (5 * fan_in)) ** 0.5
    expected = {"to_qkv": (block.attn.to_qkv.weight, small(dim)),
                "proj_in": (block.ff.proj_in.weight, small(dim)),
                "to_out": (block.attn.to_out.weight, small(dim) / depth ** 0.5),
                "proj_out": (block.ff.proj_out.weight, small(4 * dim) / depth ** 0.5),
                "to_logits": (model.net.to_logits.weight, small(dim)),
                "token_emb": (model.net.token_emb.weight, dim**-0.5)}
    for name, (weight, std) in expected.items():
        assert weight.std().item() == pytest.approx(std, rel=0.05), name
    assert torch.count_nonzero(block.ff.proj_in.bias) == 0
