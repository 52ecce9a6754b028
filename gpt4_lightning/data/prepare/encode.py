"""Encoding text into token arrays for `prepare`, in a pool of worker processes with bounded memory."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from gpt4_lightning.data.shards import SPLITS

BATCH_CHARS = 1 << 20  # text per encoding task: large enough to amortise IPC, small enough for a live progress bar
BATCH_DOCS = 1024


class _Encoder:
    """Texts -> one token array with EOS after each document, plus (documents, UTF-8 bytes)."""

    def __init__(self, tokenizer_json: str, eos: int, dtype: str) -> None:
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        # special-token text inside a document ("<|endoftext|>" quoted in a web page) is encoded as
        # plain text, so EOS ids mark exactly the document boundaries this module adds
        self.tokenizer.encode_special_tokens = True
        self.eos, self.dtype = eos, np.dtype(dtype)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, int, int]:
        # add_special_tokens=False: a hub tokenizer's template (BOS, ...) is not wanted; EOS is added here
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        out = np.empty(sum(map(len, ids)) + len(ids), dtype=self.dtype)
        pos = 0
        for doc in ids:
            out[pos : pos + len(doc)] = doc
            out[pos + len(doc)] = self.eos
            pos += len(doc) + 1
        return out, len(texts), sum(len(t.encode("utf-8")) for t in texts)


_worker: _Encoder | None = None


def _init_worker(tokenizer_json: str, eos: int, dtype: str, parent: int) -> None:
    global _worker
    # submitit ignores SIGTERM in its jobs and forked workers inherit that; Pool.terminate() would then
    # wait for ever on a worker that cannot be stopped
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    _worker = _Encoder(tokenizer_json, eos, dtype)


def _die_with_parent(parent: int) -> None:
    """Pool workers wait on a pipe they also hold open, so a SIGKILLed parent would leave them
    blocked forever; on Linux ask the kernel to kill them with it (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, int, int]:
    assert _worker is not None
    return _worker(texts)


def batches(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Group (split, text) into per-split batches of about BATCH_CHARS characters."""
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    for split, text in pairs:
        texts[split].append(text)
        chars[split] += len(text)
        if chars[split] >= BATCH_CHARS or len(texts[split]) >= BATCH_DOCS:
            yield split, texts[split]
            texts[split], chars[split] = [], 0
    yield from ((s, texts[s]) for s in SPLITS if texts[s])


@contextlib.contextmanager
def _sigterm_not_ignored() -> Iterator[None]:
    """Fork the workers with SIGTERM's default action when this process ignores it (submitit jobs do): a worker
    that had not yet run its initializer (which restores the default too) when `Pool.terminate()` signals it
    would otherwise ignore the SIGTERM and be waited for forever. The window is the pool's start-up."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def encode(batches: Iterable[tuple[str, list[str]]], tokenizer_json: str, eos: int, dtype: str,
            num_proc: int) -> Iterator[tuple[str, np.ndarray, int, int]]:
    """(split, tokens, documents, bytes) per batch, in input order. With num_proc > 1 the batches
    are encoded by a process pool while this process reads the corpus and writes shards; at most
    2 * num_proc batches are in flight, so memory stays bounded for any corpus size."""
    if num_proc <= 1:  # in-process (tokenizers may still use its own threads)
        encoder = _Encoder(tokenizer_json, eos, dtype)
        yield from ((split, *encoder(texts)) for split, texts in batches)
        return
    # fork where safe (cheap: no re-import); the children must not use the tokenizers thread pool
    # that BPE training started here (it does not survive fork), hence TOKENIZERS_PARALLELISM=false
    # in their environment, which also silences tokenizers' fork warning.
    method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform != "darwin" else "spawn"
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with _sigterm_not_ignored():
            pool = mp.get_context(method).Pool(num_proc, _init_worker, (tokenizer_json, eos, dtype, os.getpid()))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    with pool:  # leaving early (an error, a generator close) terminates the workers
        pending: deque[tuple[str, Any]] = deque()
        for split, texts in batches:
            pending.append((split, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= 2 * num_proc:
                split_done, result = pending.popleft()
                yield split_done, *result.get()
        while pending:
            split_done, result = pending.popleft()
            yield split_done, *result.get()
