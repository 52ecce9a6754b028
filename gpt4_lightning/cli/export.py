"""`python -m gpt4_lightning.export ckpt_path=<checkpoint> out=<dir or .safetensors>`

Consolidates a training checkpoint — a plain Lightning `.ckpt` or a sharded FSDP directory (any
number of ranks) — into one `model.safetensors` + `config.json` that `GPT4.from_pretrained` loads
in one process. Nothing is unpickled (weights_only / DCP tensors) and nothing pickled is written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..checkpoint.load import load_model
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
    model, meta = load_model(cfg.ckpt_path)
    try:
        model.save_pretrained(out_dir)
    except OSError as e:
        raise ValueError(f"out={out}: cannot write the export ({e.strerror or e}); point out at a writable "
                         "directory") from e
    print(f"exported {model.num_params():,} parameters (step {meta.get('global_step')}) to "
          f"{out_dir / 'model.safetensors'} + {out_dir / 'config.json'}")
    return out_dir


def main() -> None:
    launch("export", export)


if __name__ == "__main__":
    main()
