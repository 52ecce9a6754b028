"""`python -m gpt4_lightning.export` writes a transformers directory: loaded in a process that cannot import
gpt4_lightning (tests/helpers/hf_check.py), its tokenizer gives our ids, its logits are ours (fp32, 1e-5), greedy
`generate` (transformers' KV cache, and without it) equals ours for 20 tokens, and `pipeline` runs; GPT4 reads
the same directory back, also in shards and in bf16 (the FSDP-sharded case: tests/distributed/)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer

from gpt4_lightning import GPT4
from gpt4_lightning.checkpoint.load import iter_weights, load_model
from gpt4_lightning.hf.export import INDEX, export_hf
from tests.helpers.cli import run
from tests.helpers.hf import transformers_matches


@pytest.mark.slow
def test_export_of_a_plain_checkpoint_loads_in_transformers_alone(workdir, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint
    out = tmp_path / "export"
    done = run(workdir, "export", f"ckpt_path={ckpt}", f"out={out}")
    assert "trust_remote_code=True" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "configuration_gpt4.py", "modeling_gpt4.py", "gpt4.py", "transformer.py"} <= names, names
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt4.GPT4ForCausalLM"
    assert config["vocab_size"] == config["num_tokens"] and config["dtype"] == "float32"
    assert config["eos_token_id"] == Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<|endoftext|>")
    transformers_matches(out, ckpt, tmp_path)

    trained, _ = load_model(ckpt)
    tokens = torch.randint(0, trained.config.num_tokens, (2, 32))
    with torch.no_grad():
        assert torch.equal(GPT4.from_pretrained(out)(tokens), trained(tokens))
    bf16 = tmp_path / "bf16"
    run(workdir, "export", f"ckpt_path={ckpt}", f"out={bf16}", "dtype=bf16")
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert {p.dtype for p in GPT4.from_pretrained(bf16).parameters()} == {torch.bfloat16}


def test_weights_above_the_shard_size_are_split_with_an_index_and_read_back(tmp_path):
    model = GPT4(num_tokens=300, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2).eval()
    tokenizer_json = Tokenizer.from_str(_tiny_tokenizer()).to_str()
    export_hf(tmp_path, model.config, model.state_dict().items(), tokenizer_json, max_shard_bytes=100_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / INDEX).read_text())
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == {
        p.name for p in shards}
    tokens = torch.randint(0, 300, (1, 24))
    with torch.no_grad():
        assert torch.equal(GPT4.from_pretrained(tmp_path)(tokens), model(tokens))
    export_hf(tmp_path, model.config, model.state_dict().items(), tokenizer_json)  # again, unsplit: no stale shard
    assert sorted(p.name for p in tmp_path.glob("model*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / INDEX).exists()


def test_iter_weights_streams_a_checkpoint_one_tensor_at_a_time(tmp_path):
    """What keeps the export's memory at one shard: the weights arrive one by one, memory-mapped."""
    model = GPT4(num_tokens=300, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "gpt4_config": model.config.to_dict()}, ckpt)
    config, _, tensors = iter_weights(ckpt)
    assert config == model.config
    first_name, first = next(tensors)
    assert first_name == next(iter(model.state_dict())) and torch.equal(first, model.state_dict()[first_name])
    assert [name for name, _ in tensors] == list(model.state_dict())[1:]


def _tiny_tokenizer() -> str:
    from gpt4_lightning.data.config import TokenizerConfig
    from gpt4_lightning.data.prepare.tokenizer import train_bpe

    return train_bpe(["def f(x):\n    return x\n" * 20], TokenizerConfig(vocab_size=300)).to_str()
