"""`python -m gpt4_lightning.prepare [data=stdlib|files|hf_hub] [tokenizer=bpe|file|hub] [key=value ...]`

Tokenizes a corpus into shards (see `gpt4_lightning.data.prepare`), or finds them already
prepared. Prints a summary line and, last, the prepared directory, so scripts can take it
with `DIR=$(python -m gpt4_lightning.prepare ... | tail -n 1)`.

Bad input or config exits with status 1 and a single line `error: <message>` on stderr (the
message names the file or key and the fix); a traceback helps nobody there. Set
HYDRA_FULL_ERROR=1 to get the traceback anyway. Hydra catches exceptions raised from the task
function itself, so they are handled here.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .data.prepare import prepare, summary
from .data.shards import Manifest


def error_line(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key or "a value"
        return f"{key} is required (it is ??? in the config); add {key}=<value> to the command line"
    return str(exc).replace("\n", " ").strip() or type(exc).__name__


@hydra.main(config_path="pkg://gpt4_lightning.conf", config_name="prepare", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        out = prepare(cfg)
        manifest = Manifest.load(out)
    except (ValueError, OSError, OmegaConfBaseException) as e:  # DataError is a ValueError
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)
    print(summary(manifest))
    print(out)


if __name__ == "__main__":
    main()
