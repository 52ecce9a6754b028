"""Fixtures shared across the test folders: a fixed seed, the CLI tests' work directory (a small real corpus and a
cache), two prepared mixture sources, and a tiny trained checkpoint. A folder's own fixtures are in its conftest."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import run, train_args


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """A small real corpus (60 stdlib modules as jsonl) and a cache dir shared by the CLI tests."""
    import json

    from gpt4_lightning.data.prepare.corpus import stdlib_files

    root = tmp_path_factory.mktemp("cli")
    with open(root / "corpus.jsonl", "w") as f:
        for path in stdlib_files()[:60]:
            text = path.read_text(encoding="utf-8", errors="replace")
            f.write(json.dumps({"text": text}) + "\n")
    return root


@pytest.fixture(scope="session")
def mix_args(workdir) -> Callable[[list[str]], list[str]]:
    """Two prepared sources with one tokenizer — web (the corpus's first 45 documents) and code (the other 15) —
    and a function turning `train_args` into the same run on `data=mix` of them at 0.75/0.25."""
    lines = (workdir / "corpus.jsonl").read_text().splitlines(keepends=True)
    web, code = workdir / "mix" / "web", workdir / "mix" / "code"
    for path, part in ((workdir / "mix_web.jsonl", lines[:45]), (workdir / "mix_code.jsonl", lines[45:])):
        path.write_text("".join(part))
    run(workdir, "prepare", "data=files", f"data.path={workdir / 'mix_web.jsonl'}", f"data.dir={web}",
        "tokenizer.vocab_size=512", "data.val_fraction=0.1")
    run(workdir, "prepare", "data=files", f"data.path={workdir / 'mix_code.jsonl'}", f"data.dir={code}",
        "tokenizer=file", f"tokenizer.path={web / 'tokenizer.json'}", "data.val_fraction=0.1")
    sources = f"data.sources=[{{name:web,dir:{web},weight:0.75}},{{name:code,dir:{code},weight:0.25}}]"

    def on_mix(args: list[str]) -> list[str]:
        return [a for a in args if not a.startswith(("data=", "data.path="))] + ["data=mix", sources]
    return on_mix


@pytest.fixture(scope="session")
def tiny_checkpoint(workdir) -> Path:
    """A plain checkpoint of the tiny model after 8 steps (its prepared data in the workdir cache)."""
    run(workdir, "train", *train_args(workdir, 8), "run_name=tiny_checkpoint", "trainer.limit_val_batches=0")
    return workdir / "outputs" / "tiny_checkpoint" / "checkpoints" / "last.ckpt"
