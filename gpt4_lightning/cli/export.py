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

from gpt4_lightning.cli.launch import launch
from gpt4_lightning.config import ExportConfig, to_typed
from gpt4_lightning.utils.files import check_writable_dir


def export(dict_cfg: DictConfig) -> Path:
    cfg: ExportConfig = to_typed(dict_cfg)
    out = Path(cfg.out)
    out_dir = out.parent if out.suffix == ".safetensors" else out
    if out.suffix == ".safetensors" and out.name != "model.safetensors":
        raise ValueError(f"out={out}: name the file model.safetensors (config.json goes beside it) or pass a directory")
    check_writable_dir(out_dir, "out")
    from gpt4_lightning.checkpoint.load import iter_weights
    from gpt4_lightning.data.prepare.tokenizer import run_tokenizer
    from gpt4_lightning.hf.export import export_hf

    config, meta, tensors = iter_weights(cfg.ckpt_path)
    tokenizer_json, eos_token = run_tokenizer(meta, cfg.tokenizer_path, cfg.eos_token)
    try:
        export_hf(out_dir, config, tensors, tokenizer_json, eos_token, cfg.dtype, cfg.max_shard_mb * 2**20)
    except OSError as e:
        raise ValueError(f"out={out}: cannot write the export ({e.strerror or e}); point out at a writable "
                         "directory") from e
    print(f"exported step {meta.get('global_step')} ({cfg.dtype}) with its tokenizer to {out_dir}: load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out_dir)!r}, trust_remote_code=True)")
    return out_dir


def main() -> None:
    launch("export", export)


if __name__ == "__main__":
    main()
