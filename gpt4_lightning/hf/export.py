"""`export_hf`: a model's tensors + its tokenizer -> a directory transformers loads as it is.

    config.json                     GPT4LightningConfig: the GPT4 arguments, auto_map, architectures, dtype, EOS
    configuration_gpt4.py           \
    modeling_gpt4.py                 } the code `trust_remote_code=True` runs: hf/*.py and model/*.py of this
    gpt4.py, transformer.py, ...    /  package, copied (only the import of the model rewritten to the folder)
    model.safetensors               or model-0000k-of-0000N.safetensors + model.safetensors.index.json
    generation_config.json          EOS (and pad) for `generate`
    tokenizer.json, tokenizer_config.json, special_tokens_map.json

Tensors are written as they arrive (an iterator of `(name, tensor)` in `state_dict` order), each cast to the
export dtype on the way and dropped once written: the files' headers come from the model's shapes alone, so the
export holds one tensor at a time, never the model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from gpt4_lightning.model.config import GPT4Config
from gpt4_lightning.utils.files import atomic_path, write_text
from gpt4_lightning.utils.names import DTYPE_NAMES, torch_dtype

HF_DIR = Path(__file__).resolve().parent
MODEL_DIR = HF_DIR.parent / "model"
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
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


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
                      torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}


def plan_shards(entries: list[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int
                ) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Consecutive runs of `(name, shape, dtype)` of at most `max_bytes` each (a larger tensor alone), as
    huggingface_hub's `split_torch_state_dict_into_shards` (transformers' own rule) plans them from meta tensors."""
    from huggingface_hub import split_torch_state_dict_into_shards

    meta = {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape, dtype in entries}
    plan = split_torch_state_dict_into_shards(meta, max_shard_size=max_bytes)
    by_name = {name: (name, shape, dtype) for name, shape, dtype in entries}
    return [[by_name[name] for name in names] for names in plan.filename_to_tensors.values()]


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]],
                       tensors: Iterator[tuple[str, torch.Tensor]]) -> int:
    """One safetensors file (8-byte header size, JSON header, the raw little-endian data) written as the tensors
    arrive: the header is known from the shapes alone, so no tensor is kept after it is written. Not
    `safetensors.torch.save_file`: it takes every tensor of the file at once (a 5 GB shard in memory, gathered from
    FSDP shards first)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, tensor_dtype in entries:
        nbytes = math.prod(shape) * tensor_dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor_dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, shape, tensor_dtype in entries:
            got, tensor = next(tensors)
            if got != name or tuple(tensor.shape) != shape:
                raise ValueError(f"export: expected tensor {name} {shape}, got {got} {tuple(tensor.shape)}")
            tensor = tensor.detach().to(device="cpu", dtype=tensor_dtype).contiguous()
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    return offset


def write_weights(out: Path, config: GPT4Config, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """`model.safetensors`, or numbered shards + the index transformers reads when there is more than one;
    returns the file names. `tensors` must come in the model's `state_dict` order (shapes from `config`);
    floating tensors are cast to `dtype` one at a time. Each file is written under a temporary name and
    renamed."""
    from gpt4_lightning.model import GPT4

    with torch.device("meta"):
        expected = GPT4.from_config(config).state_dict()
    entries = [(k, tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in expected.items()]
    shards = plan_shards(entries, max_shard_bytes)
    count = len(shards)
    names = [SINGLE] if count == 1 else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
    stream = iter(tensors)
    total = 0
    for shard, name in zip(shards, names, strict=True):
        with atomic_path(out / name) as tmp:
            total += _write_safetensors(tmp, shard, stream)
    (out / INDEX).unlink(missing_ok=True)
    if count > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {key: name for shard, name in zip(shards, names, strict=True) for key, _, _ in shard}}
        write_text(out / INDEX, json.dumps(index, indent=2))
    return names


PAD_TOKEN = "<|pad|>"


def special_tokens(tokenizer: Any, eos_token: str | None) -> dict[str, str | None]:
    """EOS (None if the vocabulary lacks it) and pad (the BPE's `<|pad|>`, else EOS) of a `tokenizers.Tokenizer`:
    what the export's tokenizer files and `evals.harness` hand transformers."""
    eos = eos_token if eos_token is not None and tokenizer.token_to_id(eos_token) is not None else None
    return {"eos_token": eos, "pad_token": PAD_TOKEN if tokenizer.token_to_id(PAD_TOKEN) is not None else eos}


def model_max_length(config: GPT4Config) -> int:
    """The tokenizer's `model_max_length`: unbounded (1e6) when the positions extrapolate, else max_seq_len."""
    return 1_000_000 if config.can_extrapolate else config.max_seq_len


def write_tokenizer(out: Path, tokenizer_json: str, specials: dict[str, str | None], max_length: int) -> None:
    """tokenizer.json as prepared, and the two small files AutoTokenizer reads beside it."""
    write_text(out / "tokenizer.json", tokenizer_json)
    write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2))
    write_text(out / "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "bos_token": None, "unk_token": None,
         "model_max_length": max_length, "clean_up_tokenization_spaces": False, "add_bos_token": False,
         "add_eos_token": False}, indent=2))


def export_hf(out: Path, config: GPT4Config, tensors: Iterable[tuple[str, torch.Tensor]], tokenizer_json: str,
              eos_token: str = "<|endoftext|>", dtype: str = "fp32", max_shard_bytes: int = DEFAULT_SHARD_BYTES
              ) -> Path:
    """Write the transformers directory `out`: code, config, weights (streamed from `tensors`), tokenizer."""
    from tokenizers import Tokenizer

    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype} is not one of {', '.join(DTYPE_NAMES)}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    specials = special_tokens(tokenizer, eos_token)
    eos_id, pad_id = (tokenizer.token_to_id(specials[k]) if specials[k] else None for k in ("eos_token", "pad_token"))
    for name, text in code_files().items():
        write_text(out / name, text)
    stale = [p for p in out.glob("model*.safetensors")]
    names = write_weights(out, config, tensors, torch_dtype(dtype), max_shard_bytes)
    for path in stale:
        if path.name not in names:
            path.unlink()
    write_tokenizer(out, tokenizer_json, specials, model_max_length(config))
    write_text(out / "generation_config.json", json.dumps(
        {"eos_token_id": eos_id, "pad_token_id": pad_id, "bos_token_id": None}, indent=2))
    write_text(out / "config.json", json.dumps(hf_config(config, torch_dtype(dtype), eos_id, pad_id), indent=2))
    return out
