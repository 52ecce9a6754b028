"""`python -m gpt4_lightning.prepare [data=stdlib|files|hf_hub] [tokenizer=bpe|file|hub] [num_parts=N [part=k]] ...`

Tokenizes a corpus into shards (see `gpt4_lightning.data.prepare.pipeline`), or finds them already prepared; with
`num_parts`, one part (`part=k`) or the missing parts and then their merge (`data/prepare/parts.py`). Prints a summary
line and, last, the prepared directory (a part's, with `part=k`), so scripts can take it with
`DIR=$(python -m gpt4_lightning.prepare ... | tail -n 1)`.

Bad input or config exits with status 1 and a single line `error: <message>` on stderr (the
message names the file or key and the fix); a traceback helps nobody there. Set
HYDRA_FULL_ERROR=1 to get the traceback anyway. Hydra catches exceptions raised from the task
function itself, so they are handled here.
"""

from __future__ import annotations

from omegaconf import DictConfig

from gpt4_lightning.cli.launch import launch
from gpt4_lightning.config import to_typed
from gpt4_lightning.data.prepare.directory import summary
from gpt4_lightning.data.prepare.pipeline import prepare
from gpt4_lightning.data.shards import Manifest


def run(cfg: DictConfig) -> None:
    out = prepare(to_typed(cfg))
    print(summary(Manifest.load(out)))
    print(out)


def main() -> None:
    launch("prepare", run)


if __name__ == "__main__":
    main()
