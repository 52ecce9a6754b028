"""`export_hf`: a model's tensors + its tokenizer -> a directory transformers loads as it is.

    config.json                     GPT4LightningConfig: the GPT4 arguments, auto_map, architectures, dtype, EOS
    configuration_gpt4.py           \
    modeling_gpt4.py                 } the code `trust_remote_code=True` runs: hf/*.py and model/*.py of this
    gpt4.py, transformer.py, ...    /  package, copied (only the import of the model rewritten to the folder)
    model.safetensors               or model-0000k-of-0000N.safetensors + model.safetensors.index.json
    generation_config.json          EOS (and pad) for `generate`
    tokenizer.json, tokenizer_config.json, special_tokens_map.json

Tensors are written shard by shard as they arrive (an iterator of `(name, tensor)`), each cast to the export
dtype on the way: the export holds one shard in that dtype, never a second copy of the model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..model.config import GPT4Config

HF_DIR = Path(__file__).resolve().parent
MODEL_DIR = HF_DIR.parent / "model"
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size ("5GB")


def code_files() -> dict[str, str]:
    """The Python files of the export: every model/ module but `__init__`, and the two transformers files with
    `from ..model.` rewritten to `from .` (the model files sit beside them)."""
    files = {p.name: p.read_text() for p in sorted(MODEL_DIR.glob("*.py")) if p.name != "__init__.py"}
    for name in ("configuration_gpt4.py", "modeling_gpt4.py"):
        if name in files:
            raise ValueError(f"model/{name} would shadow the transformers file of the same name")
        files[name] = re.sub(r"^from \.\.model\.", "from .", (HF_DIR / name).read_text(), flags=re.M)
    return files


def hf_config(config: GPT4Config, dtype: torch.dtype, eos_id: int | None, pad_id: int | None) -> dict[str, Any]:
    kv_heads = 1 if config.attn_one_kv_head else config.heads
    return {
        **config.to_dict(), "model_type": "gpt4_lightning", "architectures": ["GPT4ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_gpt4.GPT4LightningConfig",
                     "AutoModelForCausalLM": "modeling_gpt4.GPT4ForCausalLM"},
        "vocab_size": config.num_tokens, "hidden_size": config.dim, "num_hidden_layers": config.depth,
        "num_attention_heads": config.heads, "num_key_value_heads": kv_heads, "head_dim": config.dim_head,
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": False, "use_cache": True,
        "eos_token_id": eos_id, "pad_token_id": pad_id, "bos_token_id": None,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _shards(tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, max_bytes: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors:
        tensor = tensor.detach().to(device="cpu", dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = tensor.contiguous()
        size += nbytes
    if shard:
        yield shard


def write_weights(out: Path, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """`model.safetensors`, or numbered shards + the index transformers reads when there is more than one;
    returns the file names. Each shard is written under a temporary name and renamed."""
    from safetensors.torch import save_file

    written: list[tuple[str, list[str], int]] = []
    for k, shard in enumerate(_shards(tensors, dtype, max_shard_bytes)):
        tmp = out / f".shard-{k:05d}.safetensors.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        written.append((tmp.name, list(shard), sum(t.numel() * t.element_size() for t in shard.values())))
        del shard
    count = len(written)
    names = [SINGLE] if count == 1 else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
    for (tmp, _, _), name in zip(written, names, strict=True):
        os.replace(out / tmp, out / name)
    (out / INDEX).unlink(missing_ok=True)
    if count > 1:
        index = {"metadata": {"total_size": sum(n for _, _, n in written)},
                 "weight_map": {key: name for (_, keys, _), name in zip(written, names, strict=True) for key in keys}}
        _write_text(out / INDEX, json.dumps(index, indent=2))
    return names


def write_tokenizer(out: Path, tokenizer_json: str, eos_token: str | None, model_max_length: int) -> None:
    """tokenizer.json as prepared, and the two small files AutoTokenizer reads beside it."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)
    pad = "<|pad|>" if "<|pad|>" in vocab else eos_token
    specials = {"eos_token": eos_token, "pad_token": pad}
    _write_text(out / "tokenizer.json", tokenizer_json)
    _write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2))
    _write_text(out / "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "bos_token": None, "unk_token": None,
         "model_max_length": model_max_length, "clean_up_tokenization_spaces": False, "add_bos_token": False,
         "add_eos_token": False}, indent=2))


def export_hf(out: Path, config: GPT4Config, tensors: Iterable[tuple[str, torch.Tensor]], tokenizer_json: str,
              eos_token: str = "<|endoftext|>", dtype: str = "fp32", max_shard_bytes: int = DEFAULT_SHARD_BYTES
              ) -> Path:
    """Write the transformers directory `out`: code, config, weights (streamed from `tensors`), tokenizer."""
    from tokenizers import Tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype} is not one of {', '.join(DTYPES)}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    eos_id = tokenizer.token_to_id(eos_token)
    pad_id = tokenizer.token_to_id("<|pad|>")
    pad_id = eos_id if pad_id is None else pad_id
    for name, text in code_files().items():
        _write_text(out / name, text)
    stale = [p for p in out.glob("model*.safetensors")]
    names = write_weights(out, tensors, DTYPES[dtype], max_shard_bytes)
    for path in stale:
        if path.name not in names:
            path.unlink()
    max_length = 1_000_000 if config.can_extrapolate else config.max_seq_len
    write_tokenizer(out, tokenizer_json, eos_token if eos_id is not None else None, max_length)
    _write_text(out / "generation_config.json", json.dumps(
        {"eos_token_id": eos_id, "pad_token_id": pad_id, "bos_token_id": None}, indent=2))
    _write_text(out / "config.json", json.dumps(hf_config(config, DTYPES[dtype], eos_id, pad_id), indent=2))
    return out


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
