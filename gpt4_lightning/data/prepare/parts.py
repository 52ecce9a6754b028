"""A corpus prepared in parts, one machine each (`prepare num_parts=N part=k`), then merged into one directory.

Layout of `<out>` (the directory a one-part prepare would write):

    parts/part-0000k-of-0000N/   part k: a prepared directory of its own (manifest, shards, tokenizer, lock)
    parts/tokenizer.json         the BPE every part encodes with (tokenizer=bpe), trained once
    manifest.json                the merge's, over
    train_00000.bin -> parts/part-00000-of-00002/train_00000.bin   relative links, one per non-empty part shard

Why the merge holds the documents a one-part prepare holds, split for split and in order: part k is a
contiguous range of the corpus (`Corpus.part`), a document's split is a hash of its text (`is_val`), and the
tokenizer is the same for all parts (a file or hub tokenizer; or a BPE trained on the whole corpus's train
documents, as a one-part prepare trains it, by the first part to take `parts/`'s lock, while the others wait).

The merge reads each part's manifest and checksums file and links its shards: nothing is copied or hashed
again, so a thousand parts merge in seconds (bench/prepare_merge.py). A part is written as any prepared
directory is (manifest last), so a part killed mid-way has no manifest; the merge prepares such a part itself
(the same command without `part=`), as re-running that part does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from gpt4_lightning.data.config import PrepareCommandConfig
from gpt4_lightning.data.prepare.corpus import Corpus
from gpt4_lightning.data.prepare.directory import (
    TOKENIZER_FILE,
    describe_inputs,
    locked,
    remove_stale_shards,
    reusable,
    start_writing,
    summary,
    train_tokenizer,
    write_prepared,
)
from gpt4_lightning.data.shards import MANIFEST, SPLITS, DataError, Manifest, SplitShards
from gpt4_lightning.utils.files import atomic_writer, sha256_file

log = logging.getLogger(__name__)

PARTS = "parts"
_PART_NAME = re.compile(r"part-\d{5,}-of-(\d{5,})")
TOKENIZER_STAMP = "tokenizer.source"  # "<fingerprint> <sha256>" of parts/tokenizer.json: the inputs it is for


def part_dir(out: Path, index: int, count: int) -> Path:
    return out / PARTS / f"part-{index:05d}-of-{count:05d}"


def part_fingerprint(fp: str, index: int, count: int) -> str:
    return hashlib.sha256(f"{fp}/part-{index}-of-{count}".encode()).hexdigest()[:16]


def prepare_parts(cfg: PrepareCommandConfig, corpus: Corpus, tokenizer: Tokenizer | None, fp: str, out: Path,
                  current: dict[str, Any]) -> Path:
    """`part=k`: prepare (or reuse) part k and return its directory. No `part`: prepare the parts that are
    missing or incomplete, merge them all into `out` and return it."""
    count = cfg.num_parts
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    counts = {int(m.group(1)) for p in (out / PARTS).iterdir() if (m := _PART_NAME.fullmatch(p.name))}
    if counts - {count} and not cfg.overwrite:  # a merge of 4 parts would otherwise redo 8 prepared ones
        raise DataError(f"{out / PARTS} holds parts of num_parts={min(counts - {count})}, not {count}: give the "
                        f"num_parts they were prepared with (or overwrite=true to prepare {count} new parts there)")
    if tokenizer is None:
        tokenizer = shared_bpe(cfg, corpus, out, fp)
    if cfg.part is not None:
        path = prepare_part(cfg, corpus, tokenizer, fp, out, cfg.part)
        log.info("part %d of %d is in %s; the same command without part= merges the parts into %s",
                 cfg.part, count, path, out)
        return path
    manifests = []
    for index in range(count):
        manifest = None if cfg.overwrite else _complete_part(out, fp, index, count)
        if manifest is None:
            manifest = Manifest.load(prepare_part(cfg, corpus, tokenizer, fp, out, index), check_sizes=False)
        manifests.append(manifest)
    with locked(out):
        if not cfg.overwrite and reusable(out, fp, current):
            return out
        manifest = merge(out, manifests, fp, current, corpus)
    log.info("merged %d parts into %s in %.1f s: %s", count, out, manifest.stats["merge_seconds"], summary(manifest))
    return out


def prepare_part(cfg: PrepareCommandConfig, corpus: Corpus, tokenizer: Tokenizer, fp: str, out: Path,
                 index: int) -> Path:
    count = cfg.num_parts
    path, part_fp = part_dir(out, index, count), part_fingerprint(fp, index, count)
    part = corpus.part(index, count)
    current = {**describe_inputs(part, cfg), "part": index, "num_parts": count}
    if not cfg.overwrite and reusable(path, part_fp, current):
        return path
    (out / MANIFEST).unlink(missing_ok=True)  # a merge over this part's old shards no longer holds
    return write_prepared(path, part, tokenizer, cfg, part_fp, current, whole=False)


def _complete_part(out: Path, fp: str, index: int, count: int) -> Manifest | None:
    """Part `index`'s manifest (each shard's size checked) if it is complete and of these inputs; None if it
    has none (not started, or killed); an error if it is of other inputs or damaged."""
    path = part_dir(out, index, count)
    if not (path / MANIFEST).is_file():
        return None
    manifest = Manifest.load(path)
    if manifest.source.get("fingerprint") != part_fingerprint(fp, index, count):
        raise DataError(f"{path / MANIFEST} was prepared from other inputs than these; re-run with overwrite=true "
                        f"(re-prepares every part into {out / PARTS}), or set data.dir to a new directory")
    return manifest


def shared_bpe(cfg: PrepareCommandConfig, corpus: Corpus, out: Path, fp: str) -> Tokenizer:
    """The BPE all parts encode with: trained once, by the first part to take the lock of `out/parts` (the
    others wait for it, then load it); kept while its stamp names these inputs."""
    directory = out / PARTS
    path, stamp = directory / TOKENIZER_FILE, directory / TOKENIZER_STAMP
    with locked(directory):
        if stamp.is_file() and path.is_file():
            stamp_fp, _, sha256 = stamp.read_text().strip().partition(" ")
            if stamp_fp == fp and sha256_file(path) == sha256:
                log.info("using the BPE trained for these parts: %s", path)
                return Tokenizer.from_file(str(path))
        tokenizer = train_tokenizer(corpus, cfg)
        stamp.unlink(missing_ok=True)
        text = tokenizer.to_str()
        with atomic_writer(path, "w") as f:
            f.write(text)
        with atomic_writer(stamp, "w") as f:
            f.write(f"{fp} {hashlib.sha256(text.encode()).hexdigest()}\n")
    return tokenizer


def merge(out: Path, manifests: list[Manifest], fp: str, current: dict[str, Any], corpus: Corpus) -> Manifest:
    """One manifest in `out` over the shards of the parts (`manifests`, complete and of these inputs: parts
    0..count-1), linked; saved last. The parts must share one tokenizer."""
    start, count = time.perf_counter(), len(manifests)
    first, first_dir = manifests[0], part_dir(out, 0, count)
    for index, manifest in enumerate(manifests):
        if manifest.tokenizer_sha256 != first.tokenizer_sha256:
            raise DataError(f"parts 0 and {index} were encoded with different tokenizers ({first_dir / TOKENIZER_FILE}"
                            f" sha256 {first.tokenizer_sha256[:12]}, {part_dir(out, index, count) / TOKENIZER_FILE} "
                            f"{manifest.tokenizer_sha256[:12]}); re-run part {index} with overwrite=true")
    total_documents = sum(sum(m.stats["documents"].values()) for m in manifests)
    if total_documents == 0:
        raise DataError(f"no text found in {corpus.inputs()}; point data.path at non-empty text")

    start_writing(out)
    tokenizer_json = (first_dir / first.tokenizer_file).read_bytes()
    if hashlib.sha256(tokenizer_json).hexdigest() != first.tokenizer_sha256:
        raise DataError(f"{first_dir / first.tokenizer_file} does not match the sha256 in its manifest; re-run "
                        "part 0 with overwrite=true")
    with atomic_writer(out / TOKENIZER_FILE) as f:
        f.write(tokenizer_json)
    splits = {split: _link_split(out, split, count, manifests) for split in SPLITS}
    stats: dict[str, Any] = {key: {s: sum(m.stats[key][s] for m in manifests) for s in SPLITS}
                             for key in ("documents", "tokens")}
    for key in ("empty_documents", "skipped_files", "text_bytes", "encode_seconds", "seconds"):
        stats[key] = sum(m.stats.get(key, 0) for m in manifests)
    stats.update(skipped=[p for m in manifests for p in m.stats.get("skipped", [])][:100], parts=count,
                 mb_per_s=round(stats["text_bytes"] / 1e6 / max(stats["seconds"], 1e-9), 3))
    manifest = Manifest(dtype=first.dtype, vocab_size=first.vocab_size, eos_id=first.eos_id,
                        tokenizer_file=TOKENIZER_FILE, tokenizer_sha256=first.tokenizer_sha256, splits=splits,
                        source={"name": corpus.name, "fingerprint": fp, **current, "num_parts": count}, stats=stats)
    manifest.stats["merge_seconds"] = round(time.perf_counter() - start, 3)
    manifest.save(out)  # last
    remove_stale_shards(out, manifest)
    return manifest


def _link_split(out: Path, split: str, count: int, manifests: list[Manifest]) -> SplitShards:
    """Link every non-empty shard of `split`, parts in order, as the merged `split_<j>.bin`; their token counts
    and sha256s from the parts' manifests. A split empty in every part keeps part 0's empty shard (a one-part
    prepare has one too)."""
    targets: list[str] = []
    tokens: list[np.ndarray] = []
    sha256: list[str] = []
    for index, manifest in enumerate(manifests):
        shards = manifest.splits[split]
        keep = np.flatnonzero(shards.tokens > 0)
        prefix = f"{PARTS}/{part_dir(out, index, count).name}/"
        digests = shards.sha256
        targets += [prefix + shards.file(i) for i in keep.tolist()]
        tokens.append(shards.tokens[keep])
        sha256 += [digests[i] for i in keep.tolist()]
    if not targets:
        shards = manifests[0].splits[split]
        targets, tokens, sha256 = [f"{PARTS}/{part_dir(out, 0, count).name}/{shards.file(0)}"], [shards.tokens[:1]], \
            shards.sha256[:1]
    merged = SplitShards(split, np.concatenate(tokens), sha256)
    directory = os.open(out, os.O_RDONLY)  # names relative to it: no path built per link
    try:
        for j, target in enumerate(targets):
            _link(directory, merged.file(j), target)
    finally:
        os.close(directory)
    return merged


def _link(directory: int, name: str, target: str) -> None:
    """`name` -> `target` in `directory` (relative, so the directory can be moved whole); an existing entry that
    points elsewhere (an older merge's link, a one-part prepare's shard) is replaced atomically."""
    try:
        os.symlink(target, name, dir_fd=directory)  # a fresh directory: one system call
        return
    except FileExistsError:
        with contextlib.suppress(OSError):  # OSError: a regular file, not a link
            if os.readlink(name, dir_fd=directory) == target:
                return
    tmp = f".{name}.link.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=directory)
    os.symlink(target, tmp, dir_fd=directory)
    os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
