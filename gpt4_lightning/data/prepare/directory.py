"""The prepared directory: where it is (a fingerprint of every input the tokens depend on), whether a complete one
is there to reuse, and writing one under its lock.

The output directory is `data.dir`, else `<cache>/<data.name>-<fingerprint>`, where the fingerprint hashes
everything the tokens depend on (the inputs — for files their paths, sizes and mtimes —, text_field, val_fraction,
shard_tokens, the tokenizer config). So a second prepare with the same inputs finds a complete, checked output and
returns at once, and changed inputs get a fresh directory instead of silently reusing stale tokens.

Crash safety (a SIGKILL at any point leaves something a re-run repairs, never a manifest over partial shards):
inputs are read (and the BPE trained) before anything is written, so bad inputs fail with the old output intact;
the old manifest is removed before the first new file is written; every file goes through `atomic_writer`; the
manifest is written last; shards left over from an older, larger run are removed only after the new manifest is in
place. A lock file serialises concurrent prepares of one directory (e.g. several ranks starting at once).

Train/val split is by document, by a hash of the document's text (`is_val`): deterministic, streamable (no need to
know the corpus size), the same in the BPE pass and the encoding pass, and the same wherever a document sits, so a
corpus prepared in parts (`parts`) splits exactly as it does whole (and exact duplicates never straddle train and
val).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tqdm import tqdm

from gpt4_lightning.data.config import PrepareConfig, TokenizerConfig
from gpt4_lightning.data.prepare import tokenizer as tok
from gpt4_lightning.data.prepare.corpus import Corpus
from gpt4_lightning.data.prepare.encode import batches as _batches
from gpt4_lightning.data.prepare.encode import encode as _encode
from gpt4_lightning.data.shards import MANIFEST, SPLITS, DataError, Manifest, ShardWriter, token_dtype
from gpt4_lightning.utils.env import default_cache_dir
from gpt4_lightning.utils.files import atomic_writer, sha256_file
from gpt4_lightning.utils.locks import Timeout, exclusive_lock

log = logging.getLogger(__name__)

SHARD_FORMAT = 1
# how documents are split (in the fingerprint and the manifest); outputs without it split by document index
SPLIT_RULE = "content-blake2b"

TOKENIZER_FILE = "tokenizer.json"
LOCK_FILE = ".prepare.lock"
_SHARD = re.compile(r"^(train|val)_\d{5,}\.bin$")  # 5 digits, more past 99 999 shards
_TEMPORARY = re.compile(r"^\.((train|val)_\d{5,}\.bin|tokenizer\.json|manifest\.json|checksums\.sha256)\..+\.tmp$")


def _num_proc(cfg: PrepareConfig) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if cfg.num_proc is None else cfg.num_proc



def fingerprint(corpus: Corpus, tok_cfg: TokenizerConfig, val_fraction: float, shard_tokens: int) -> str:
    # "format_version" is the shards' format (1 still: manifest version 2 only lists them compactly); "split" the
    # split rule, so an output split by an older rule is not taken for one split by this rule
    payload = {"format_version": SHARD_FORMAT, "split": SPLIT_RULE, "inputs": corpus.describe(),
               "text_field": corpus.text_field, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
               "tokenizer": tok.describe(tok_cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def output_dir(cfg: PrepareConfig, fp: str) -> Path:
    if cfg.data.dir:
        return Path(cfg.data.dir).expanduser().absolute()
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(cfg.data.name)).strip("-.") or "data"
    return (cache / f"{name}-{fp}").absolute()


def is_val(text: str, val_fraction: float) -> bool:
    """Whether a document is held out, by a hash of its text: independent of its position in the corpus (or of
    the part it is prepared in)."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=b"gpt4l-split").digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def split_documents(docs: Iterable[str], val_fraction: float, small_corpus_rules: bool = True
                    ) -> Iterator[tuple[str, str]]:
    """(split, text) per document by `is_val`, order kept within a split. `small_corpus_rules` (a corpus prepared
    whole) keeps both splits non-empty where the hash alone would not: if no document hashes to train, the first
    one trains; if none hashes to val (with >= 2 documents and val_fraction > 0), the last one is held out. The
    leading val documents and the latest train document are held back until the rule is decided. A part cannot
    know whether the whole corpus needs a rule, so parts apply none: only a corpus of fewer than ~1/val_fraction
    documents prepares differently whole and in parts."""
    leading_val: list[str] = []  # val documents before the first train one
    held: str | None = None
    count = val = 0
    for text in docs:
        count += 1
        if is_val(text, val_fraction):
            val += 1
            if small_corpus_rules and held is None:
                leading_val.append(text)
            else:
                yield "val", text
            continue
        yield from (("val", t) for t in leading_val)
        leading_val = []
        if not small_corpus_rules:
            yield "train", text
            continue
        if held is not None:
            yield "train", held
        held = text
    if leading_val:  # nothing hashed to train
        yield "train", leading_val[0]
        yield from (("val", t) for t in leading_val[1:])
    elif held is not None:
        yield ("val" if val_fraction > 0 and val == 0 and count >= 2 else "train"), held


def train_tokenizer(corpus: Corpus, cfg: PrepareConfig) -> Tokenizer:
    """The BPE of `cfg.tokenizer`, trained on the documents `is_val` keeps for training (so the same whether the
    corpus is prepared whole or in parts), or on the first `tokenizer.train_bytes` of them, with the files in
    `Corpus.spread` order so that sample spans the corpus."""
    cap = cfg.tokenizer.train_bytes
    sample = corpus.spread() if cap else corpus

    def texts() -> Iterator[str]:
        seen = 0
        for text in sample:
            if is_val(text, cfg.data.val_fraction):
                continue
            yield text
            seen += len(text.encode("utf-8", "surrogatepass"))
            if cap and seen >= cap:
                return

    tokenizer = tok.train_bpe(texts(), cfg.tokenizer)
    if sample.stats.documents == 0:
        raise DataError(f"no text found in {corpus.inputs()}; point data.path at non-empty text")
    return tokenizer


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out` (released by the OS even on SIGKILL) while one process writes it."""
    lock = exclusive_lock(out / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another prepare of %s to finish", out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def reusable(out: Path, fp: str, current: dict[str, Any], verify: bool = False) -> bool:
    """True if `out` holds a complete output for these inputs; False if there is none; an error (naming the file)
    if there is one that is broken or from other inputs. O(shards) stats, no hashing: `data.verify=true` (or
    `verify`) reads every byte."""
    path = out / MANIFEST
    if not path.exists():
        return False
    manifest = Manifest.load(out, verify=verify)
    if manifest.source.get("fingerprint") != fp:
        raise DataError(_other_inputs(out, manifest, current))
    tokenizer = out / manifest.tokenizer_file
    if not tokenizer.is_file() or sha256_file(tokenizer) != manifest.tokenizer_sha256:
        raise DataError(f"{tokenizer} is missing or does not match the sha256 in {path}; re-run prepare with "
                        "overwrite=true (re-tokenizes the corpus into it)")
    log.info("reusing %s: %s", out, summary(manifest))
    return True


def _other_inputs(out: Path, manifest: Manifest, current: dict[str, Any]) -> str:
    """Which prepare input differs from the ones `out` was prepared from, and the two ways on: neither destroys
    anything without saying so."""
    saved = manifest.source
    changed = [f"{key} {saved.get(key)!r} there, {value!r} now" for key, value in current.items()
               if key in saved and saved.get(key) != value]
    if "split" not in saved:
        changed.insert(0, "documents split by their index there (an older gpt4_lightning), by their text now")
    what = "; ".join(changed) if changed else "the input files changed (sizes or modification times)"
    tokens = sum(manifest.num_tokens(split) for split in manifest.splits)
    shards = sum(len(shards) for shards in manifest.splits.values())
    return (f"{out / MANIFEST} was prepared from other inputs ({what}). To train on it as it is, pass "
            f"data.dir={out} to train (a prepared directory is used as its manifest says); to prepare these "
            "inputs, set data.dir to a new directory (or drop data.dir for one in the cache); overwrite=true "
            f"re-tokenizes these inputs into {out}, deleting its {shards} shards ({tokens:,} tokens)")


def describe_inputs(corpus: Corpus, cfg: PrepareConfig) -> dict[str, Any]:
    """What the manifest's `source` records of the inputs (and what a mismatch is explained by)."""
    return {**corpus.describe(detailed=False), "split": SPLIT_RULE, "val_fraction": cfg.data.val_fraction,
            "shard_tokens": cfg.data.shard_tokens, "tokenizer": tok.describe(cfg.tokenizer)}


def write_prepared(out: Path, corpus: Corpus, tokenizer: Tokenizer, cfg: PrepareConfig, fp: str,
                   current: dict[str, Any], whole: bool, start: float | None = None) -> Path:
    """Encode `corpus` into the prepared directory `out` (under its lock; reused if another process finished it
    meanwhile). `whole`: the corpus is all there is (not a part): it must hold text, and `split_documents`'
    small-corpus rules apply."""
    start = time.perf_counter() if start is None else start
    documents: Iterable[tuple[str, str]] = split_documents(corpus, cfg.data.val_fraction, small_corpus_rules=whole)
    if whole:
        first = next(iter(documents), None)
        if first is None:
            raise DataError(f"no text found in {corpus.inputs()}; point data.path at non-empty text")
        documents = _chain(first, documents)
    tokenizer_seconds = time.perf_counter() - start
    eos = tok.eos_id(tokenizer, cfg.tokenizer.eos_token, "the trained BPE")

    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        if not cfg.overwrite and reusable(out, fp, current):  # another process finished it while we read
            return out
        manifest = _write(out, corpus, documents, tokenizer, eos, cfg, fp, current)
    manifest.stats.update(tokenizer_seconds=round(tokenizer_seconds, 3))
    seconds = time.perf_counter() - start
    text_mb = manifest.stats["text_bytes"] / 1e6
    manifest.stats.update(seconds=round(seconds, 3), mb_per_s=round(text_mb / max(seconds, 1e-9), 3))
    manifest.save(out)  # last: the shards, tokenizer and stats are all in place
    remove_stale_shards(out, manifest)
    log.info("prepared %s: %s", out, summary(manifest))
    return out


def _chain(first: tuple[str, str], rest: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    yield first
    yield from rest


def _write(out: Path, corpus: Corpus, documents: Iterable[tuple[str, str]], tokenizer: Tokenizer, eos: int,
           cfg: PrepareConfig, fp: str, current: dict[str, Any]) -> Manifest:
    """Tokenizer and shards into `out`; returns the manifest (not yet saved)."""
    start_writing(out)
    shard_tokens, num_proc = cfg.data.shard_tokens, _num_proc(cfg)
    tokenizer_json = tokenizer.to_str()
    with atomic_writer(out / TOKENIZER_FILE, "w") as f:
        f.write(tokenizer_json)
    vocab = tok.vocab_size(tokenizer)
    dtype = token_dtype(vocab)
    writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    docs, tokens = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    text_bytes, encode_start, bar = 0, time.perf_counter(), None
    for split, ids, n_docs, n_bytes in _encode(_batches(documents), tokenizer_json, eos, dtype.name, num_proc):
        writers[split].add(ids)
        docs[split] += n_docs
        tokens[split] += len(ids)
        text_bytes += n_bytes
        if bar is None:  # created on the first result, so errors before it print no bar
            bar = tqdm(desc=f"tokenizing {corpus.name}", unit="B", unit_scale=True, file=sys.stderr, mininterval=1)
        bar.update(n_bytes)
        bar.set_postfix_str(f"{sum(docs.values()):,} docs, {sum(tokens.values()):,} tokens", refresh=False)
    if bar is not None:
        bar.close()
    splits = {s: writer.close() for s, writer in writers.items()}
    stats = corpus.stats
    return Manifest(
        dtype=dtype.name, vocab_size=vocab, eos_id=eos, tokenizer_file=TOKENIZER_FILE,
        tokenizer_sha256=sha256_file(out / TOKENIZER_FILE), splits=splits,
        source={"name": corpus.name, "fingerprint": fp, **current},
        stats={"documents": docs, "tokens": tokens, "empty_documents": stats.empty_documents,
               "skipped_files": len(stats.skipped_files), "skipped": stats.skipped_files[:100],
               "text_bytes": text_bytes, "num_proc": num_proc,
               "encode_seconds": round(time.perf_counter() - encode_start, 3)})


def start_writing(out: Path) -> None:
    """Before the first new file in `out`: the old manifest goes (it must never describe new, partial shards),
    and so do the temporaries of a killed run."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.iterdir():
        if _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)


def remove_stale_shards(out: Path, manifest: Manifest) -> None:
    """Shards (or links) left from an older, larger output: after the new manifest is in place."""
    current = {shards.file(i) for shards in manifest.splits.values() for i in range(len(shards))}
    for path in out.iterdir():
        if _SHARD.match(path.name) and path.name not in current:
            path.unlink(missing_ok=True)


def summary(manifest: Manifest) -> str:
    """One line: documents, tokens, text size and throughput."""
    st = manifest.stats
    docs, tokens = st.get("documents", {}), st.get("tokens", {})
    return (f"{sum(docs.values()):,} documents ({docs.get('train', 0):,} train, {docs.get('val', 0):,} val), "
            f"{sum(tokens.values()):,} tokens ({tokens.get('train', 0):,} train, {tokens.get('val', 0):,} val), "
            f"vocab {manifest.vocab_size:,} ({manifest.dtype}), {st.get('text_bytes', 0) / 1e6:.1f} MB of text in "
            f"{st.get('seconds', 0):.1f} s ({st.get('mb_per_s', 0):.2f} MB/s), "
            f"{st.get('skipped_files', 0)} files skipped")
