"""`prepare` for the data tests: its config, its CLI in a subprocess, code-like documents as jsonl, the documents
a prepared directory holds (decoded from its shards), and a kill of a prepare process at a chosen point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from gpt4_lightning.config import compose_config
from gpt4_lightning.data.shards import Manifest
from tests.helpers.wait import wait_until


def config(*overrides: str):
    return compose_config("prepare", list(overrides))


def cli(*args: str, cwd: Path, cache: Path | None = None, timeout: float = 300, **env: str):
    """Run `python -m gpt4_lightning.prepare` from `cwd` (not the repo)."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(GPT4_LIGHTNING_CACHE=str(cache or cwd / "cache"), **env)
    return subprocess.run([sys.executable, "-m", "gpt4_lightning.prepare", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def make_docs(n: int, seed: int = 0, words: int = 60) -> list[str]:
    """Code-like documents with non-ASCII text, newlines and indentation (byte-level BPE must keep all)."""
    rng = np.random.default_rng(seed)
    vocab = ["def", "return", "self", "x", "=", "(", ")", ":", "naïve", "жук", "数据", "😀", "\n", "    ", "\t", "  "]
    return ["".join(f"{w} " if w.strip() else w for w in rng.choice(vocab, size=int(rng.integers(5, words))))
            + f"# doc {i}" for i in range(n)]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def documents(out: Path, split: str) -> list[str]:
    """The split's documents decoded from the shards (EOS-separated)."""
    manifest = Manifest.load(out, verify=True)
    tokenizer = Tokenizer.from_file(str(out / manifest.tokenizer_file))
    arrays = [np.asarray(m) for m in manifest.memmaps(out, split)]
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=manifest.dtype)
    ends = np.flatnonzero(ids == manifest.eos_id)
    assert len(ids) == 0 or ends[-1] == len(ids) - 1, "a split must end with EOS"
    return [tokenizer.decode(doc[:-1].tolist(), skip_special_tokens=False) for doc in np.split(ids, ends + 1)[:-1]]


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL the prepare `proc` as soon as `ready()` holds (it must not end before)."""
    wait_until(ready, timeout, interval_s=0.005, what="the kill point", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
