"""`python -m gpt4_lightning.export ckpt_path=<checkpoint> out=<dir> [dtype=fp32|bf16|fp16] [tokenizer_path=...]`

Writes a directory the Hugging Face ecosystem reads as it is (`gpt4_lightning.hf.export`):
`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`, `AutoTokenizer.from_pretrained(out)`,
`lm_eval --model hf --model_args pretrained=out,trust_remote_code=True`, `GPT4.from_pretrained(out)`. The
checkpoint is a plain Lightning `.ckpt` or a sharded FSDP directory (any number of ranks); its tensors are
streamed into the export dtype one at a time, and nothing is unpickled (weights_only / DCP tensors). The
tokenizer is the one of the checkpoint's prepared data (`tokenizer_path=` to give another).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..config import ExportConfig, to_typed
from ..data.shards import check_writable_dir
from .launch import launch


def export(dict_cfg: DictConfig) -> Path:
    cfg: ExportConfig = to_typed(dict_cfg)
    out = Path(cfg.out)
    out_dir = out.parent if out.suffix == ".safetensors" else out
    if out.suffix == ".safetensors" and out.name != "model.safetensors":
        raise ValueError(f"out={out}: name the file model.safetensors (config.json goes beside it) or pass a directory")
    check_writable_dir(out_dir, "out")
    from ..checkpoint.load import iter_weights
    from ..hf.export import export_hf

    config, meta, tensors = iter_weights(cfg.ckpt_path)
    tokenizer_json, eos_token = _tokenizer(cfg, meta)
    try:
        export_hf(out_dir, config, tensors, tokenizer_json, eos_token, cfg.dtype, cfg.max_shard_mb * 2**20)
    except OSError as e:
        raise ValueError(f"out={out}: cannot write the export ({e.strerror or e}); point out at a writable "
                         "directory") from e
    print(f"exported step {meta.get('global_step')} ({cfg.dtype}) with its tokenizer to {out_dir}: load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out_dir)!r}, trust_remote_code=True)")
    return out_dir


def _tokenizer(cfg: ExportConfig, meta: dict) -> tuple[str, str]:
    """tokenizer.json text and the EOS token: `tokenizer_path`, else the checkpoint's prepared data's."""
    from tokenizers import Tokenizer

    from ..data.shards import Manifest

    if cfg.tokenizer_path:
        path = Path(cfg.tokenizer_path)
        if not path.is_file():
            raise ValueError(f"tokenizer_path={path} does not exist; point it at the tokenizer.json the model was "
                             "trained with")
        return path.read_text(), cfg.eos_token
    sources = meta.get("data_sources") or []
    data_dir = meta.get("data_dir") or (sources[0]["dir"] if sources else None)
    if data_dir is None or not Path(data_dir, "manifest.json").is_file():
        raise ValueError(f"the checkpoint's data directory ({data_dir}) is not here to take the tokenizer from; pass "
                         "tokenizer_path=<the tokenizer.json the model was trained with>")
    manifest = Manifest.load(data_dir, check_sizes=False)
    text = Path(data_dir, manifest.tokenizer_file).read_text()
    return text, Tokenizer.from_str(text).id_to_token(manifest.eos_id)


def main() -> None:
    launch("export", export)


if __name__ == "__main__":
    main()
