"""The merge of `prepare num_parts=N`: how long the command takes once every part is prepared.

Builds N synthetic complete parts (`<root>/out/parts/part-0000k-of-0000N/`, the project's own manifest code,
the fingerprints the real command computes for a corpus of N one-line files, sparse shard files of the
default `data.shard_tokens`), then runs `python -m gpt4_lightning.prepare ... num_parts=N` (it finds every part
complete and merges) in a fresh process, and beside it, in the same run, two raw floors: one `os.symlink`
per shard into an empty directory (the links alone, no checks) and one `Manifest.load` of the merged directory
(one stat per shard, what every training start does anyway).

    python bench/prepare_merge.py                          # 1000 parts of 8 train shards + 1 val shard
    python bench/prepare_merge.py --parts 1000 --shards-per-part 8 100 --out /tmp/merge.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine_info import machine_info

from gpt4_lightning.data.shards import shard_name

REPO = Path(__file__).resolve().parent.parent
SHARD_TOKENS = 16_777_216  # the default data.shard_tokens


def command(root: Path, parts: int) -> list[str]:
    return ["data=files", f"data.path={root / 'corpus'}", "tokenizer=file", f"tokenizer.path={root / 'tok.json'}",
            f"data.dir={root / 'out'}", f"num_parts={parts}"]


def build(root: Path, parts: int, shards_per_part: int) -> int:
    """N one-line files, a tokenizer, and N complete parts of `shards_per_part` sparse train shards each (the
    last one shorter) and one val shard; returns the number of shards."""
    from tokenizers import Tokenizer, models

    from gpt4_lightning.config import compose_config, to_typed
    from gpt4_lightning.data.prepare.corpus import Corpus
    from gpt4_lightning.data.prepare.directory import describe_inputs, fingerprint
    from gpt4_lightning.data.prepare.parts import part_dir, part_fingerprint
    from gpt4_lightning.data.shards import Manifest, SplitShards
    from gpt4_lightning.utils.files import sha256_file

    shutil.rmtree(root, ignore_errors=True)
    (root / "corpus").mkdir(parents=True)
    for k in range(parts):
        (root / "corpus" / f"{k:07d}.txt").write_text(f"document {k}\n")
    Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>")).save(str(root / "tok.json"))
    cfg = to_typed(compose_config("prepare", command(root, parts)))
    corpus = Corpus(cfg.data)
    fp = fingerprint(corpus, cfg.tokenizer, cfg.data.val_fraction, cfg.data.shard_tokens)
    tokenizer_sha = sha256_file(root / "tok.json")
    zero_sha = {}
    shards = 0
    for k in range(parts):
        out = part_dir(root / "out", k, parts)
        out.mkdir(parents=True)
        shutil.copy(root / "tok.json", out / "tokenizer.json")
        sizes = {"train": [SHARD_TOKENS] * (shards_per_part - 1) + [SHARD_TOKENS // 3], "val": [SHARD_TOKENS // 50]}
        splits = {}
        for split, tokens in sizes.items():
            names = SplitShards(split, tokens)
            for i, n in enumerate(tokens):
                with open(out / names.file(i), "wb") as f:
                    f.truncate(2 * n)  # sparse: no blocks written
                if n not in zero_sha:
                    zero_sha[n] = sha256_file(out / names.file(i))
            splits[split] = SplitShards(split, tokens, [zero_sha[n] for n in tokens])
            shards += len(tokens)
        part = corpus.part(k, parts)
        current = {**describe_inputs(part, cfg), "part": k, "num_parts": parts}
        docs = {"train": 10, "val": 1}
        Manifest(dtype="uint16", vocab_size=2, eos_id=0, tokenizer_file="tokenizer.json",
                 tokenizer_sha256=tokenizer_sha, splits=splits,
                 source={"name": "files", "fingerprint": part_fingerprint(fp, k, parts), **current},
                 stats={"documents": docs, "tokens": {s: sum(v) for s, v in sizes.items()}, "empty_documents": 0,
                        "skipped_files": 0, "skipped": [], "text_bytes": 100, "encode_seconds": 1.0,
                        "seconds": 1.0}).save(out)
    return shards


def raw_symlinks(directory: Path, targets: list[str]) -> float:
    """Seconds to make one link per target in a new directory (then removed)."""
    directory.mkdir()
    start = time.perf_counter()
    for j, target in enumerate(targets):
        os.symlink(target, directory / shard_name("train", j))
    seconds = time.perf_counter() - start
    shutil.rmtree(directory)
    os.sync()
    return seconds


def measure(root: Path, parts: int, shards_per_part: int) -> dict:
    from gpt4_lightning.data.prepare.parts import part_dir

    started = time.perf_counter()
    shards = build(root, parts, shards_per_part)
    build_s = time.perf_counter() - started
    os.sync()  # the build's writes reach the disk before anything is timed (this VM's disk stalls under them)
    targets = [f"parts/{part_dir(root, k, parts).name}/{shard_name('train', i)}"
               for k in range(parts) for i in range(shards // parts)]
    before = raw_symlinks(root / "links", targets)
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(root / "cache"), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.prepare", *command(root, parts)],
                          cwd=root, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    os.sync()
    after = raw_symlinks(root / "links", targets)  # before and after the merge: the disk's drift shows
    from gpt4_lightning.data.shards import Manifest

    out = root / "out"
    merged = json.loads((out / "manifest.json").read_text())
    start = time.perf_counter()
    manifest = Manifest.load(out)
    load_s = time.perf_counter() - start
    assert sum(len(s) for s in manifest.splits.values()) == shards
    return {"parts": parts, "shards": shards, "build_s": round(build_s, 1), "command_s": round(command_s, 2),
            "merge_s": merged["stats"]["merge_seconds"], "symlink_s": [round(before, 3), round(after, 3)],
            "manifest_load_s": round(load_s, 3), "tokens": int(sum(manifest.num_tokens(s) for s in manifest.splits))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=int, default=1000)
    p.add_argument("--shards-per-part", type=int, nargs="+", default=[8])
    p.add_argument("--root", type=Path, default=Path("/tmp/gpt4l-prepare-merge"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prepare_merge.json")
    args = p.parse_args(argv)
    rows = []
    for per_part in args.shards_per_part:
        rows.append(measure(args.root, args.parts, per_part))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| parts | shards | tokens | `prepare num_parts=N` s | of which merge s | raw os.symlink s (before, "
          "after) | merge × raw | Manifest.load s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        raw = sum(r["symlink_s"]) / 2
        print(f"| {r['parts']} | {r['shards']} | {r['tokens']:.2e} | {r['command_s']:.2f} | {r['merge_s']:.2f} | "
              f"{r['symlink_s'][0]:.2f}, {r['symlink_s'][1]:.2f} | {r['merge_s'] / max(raw, 1e-9):.1f} | "
              f"{r['manifest_load_s']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "shard_tokens": SHARD_TOKENS, "rows": rows},
                                   indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
