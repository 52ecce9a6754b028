"""`prepare`: corpora -> tokenizer + shards + manifest, through the real CLI where the behaviour is
the CLI's (cache reuse, exit status, SIGKILL), in-process elsewhere. Real tokenizers, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gpt4_lightning.data.prepare.corpus import Corpus, read_python_source
from gpt4_lightning.data.prepare.directory import output_dir, split_documents
from gpt4_lightning.data.prepare.pipeline import prepare
from gpt4_lightning.data.prepare.tokenizer import train_bpe
from gpt4_lightning.data.shards import MANIFEST, DataError, Manifest
from gpt4_lightning.utils.env import default_cache_dir
from tests.helpers.prepare import cli, config, documents, kill_when, make_docs, write_jsonl

SMALL = ["tokenizer.vocab_size=300", "data.val_fraction=0.2"]


def expected_splits(docs: list[str], val_fraction: float) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for split, text in split_documents(docs, val_fraction):
        splits[split].append(text)
    return splits


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("*_*.bin"))


# ---------------------------------------------------------------------------------------------- stdlib, via the CLI


@pytest.mark.slow
def test_stdlib_cli_prepares_once_then_reuses_and_round_trips(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    start = time.perf_counter()
    first = cli(cwd=elsewhere)
    first_s = time.perf_counter() - start
    assert first.returncode == 0, first.stderr
    out = Path(first.stdout.strip().splitlines()[-1])
    assert out.parent == tmp_path / "elsewhere" / "cache" and out.name.startswith("stdlib-")
    manifest = Manifest.load(out, verify=True)
    st = manifest.stats
    print(f"\nstdlib prepare (CLI, cold): {first_s:.1f} s wall; {manifest.num_tokens('train'):,} train + "
          f"{manifest.num_tokens('val'):,} val tokens; {st['text_bytes'] / 1e6:.1f} MB, {st['mb_per_s']} MB/s")
    assert manifest.vocab_size == 8192 and manifest.dtype == "uint16"
    assert st["documents"]["train"] > 1000 and st["documents"]["val"] >= 1
    assert manifest.num_tokens("train") > 1_000_000

    # every document decodes back to its text, the PEP 263-encoded (latin-1, koi8-r) modules included
    corpus = Corpus(config().data)
    expected = expected_splits(list(corpus), float(config().data.val_fraction))
    for split in ("train", "val"):
        assert documents(out, split) == expected[split]
    koi8 = corpus.root / "test" / "encoded_modules" / "module_koi8_r.py"
    assert read_python_source(koi8) == koi8.read_bytes().decode("koi8-r")
    assert read_python_source(koi8) in expected["train"] + expected["val"]
    assert st["skipped_files"] == len(corpus.stats.skipped_files)

    # the second run reuses the output: nothing tokenized or trained, no file rewritten or replaced
    assert "trained a byte-level BPE" in first.stdout + first.stderr and "prepared " in first.stdout + first.stderr
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    second = cli(cwd=elsewhere)
    assert second.returncode == 0, second.stderr
    assert "reusing" in second.stdout and second.stdout.strip().splitlines()[-1] == str(out)
    logs = second.stdout + second.stderr
    assert "trained a byte-level BPE" not in logs and "prepared " not in logs, logs
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()} == files


# ----------------------------------------------------------------------------------------- local files, in-process


def _corpus(tmp_path: Path, fmt: str) -> tuple[list[str], list[str]]:
    """Write a corpus in `fmt`; returns (overrides, the documents in corpus order)."""
    docs = make_docs(40, seed=1)
    docs[3] = "quoted special token <|endoftext|> stays text"
    root = tmp_path / "corpus"
    root.mkdir()
    if fmt == "jsonl":
        write_jsonl(root / "b.jsonl", docs[20:], field="content")
        write_jsonl(root / "a.jsonl", [*docs[:20], "", "  \n"], field="content")  # blanks: skipped
        return [f"data.path={root}", "data.text_field=content"], docs
    if fmt == "json":
        (root / "rows.json").write_text(json.dumps([{"text": d} for d in docs]), encoding="utf-8")
        return [f"data.path={root / '*.json'}"], docs
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [*docs, None], "n": list(range(len(docs) + 1))}), root / "t.parquet")
        return [f"data.path={root / 't.parquet'}"], docs
    assert fmt == "txt"  # one file = one document; sorted by name
    for i, doc in enumerate(docs):
        (root / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    (root / "skip.md").write_text("not a text-file suffix")
    return [f"data.path={root}"], docs


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_local_files_round_trip(tmp_path, fmt):
    overrides, docs = _corpus(tmp_path, fmt)
    out = prepare(config("data=files", *overrides, *SMALL, f"data.dir={tmp_path / 'out'}", "num_proc=1"))
    manifest = Manifest.load(out, verify=True)
    expected = expected_splits(docs, 0.2)
    assert expected["val"] and expected["train"]
    for split in ("train", "val"):
        assert documents(out, split) == expected[split]
    assert manifest.stats["documents"] == {s: len(expected[s]) for s in ("train", "val")}
    assert manifest.stats["empty_documents"] == {"jsonl": 2, "parquet": 1}.get(fmt, 0)
    assert manifest.vocab_size == 300 and manifest.eos_id == 0  # the BPE's first special token


def test_hf_hub_branch_on_a_local_dataset_folder(tmp_path):
    """The hub code path (`load_dataset(name, config, split=..., streaming=True)`), offline: `datasets`
    resolves a local folder name the way it resolves a hub id."""
    docs = make_docs(20)
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", docs, field="body")
    out = prepare(config("data=hf_hub", f"data.name={tmp_path / 'ds'}", "data.text_field=body", *SMALL,
                         f"cache_dir={tmp_path / 'cache'}"))
    assert out.parent == tmp_path / "cache" and out.name.startswith(str(tmp_path).strip("/").replace("/", "-"))
    expected = expected_splits(docs, 0.2)
    assert documents(out, "train") == expected["train"] and documents(out, "val") == expected["val"]
    with pytest.raises(ValueError, match=r"data\.name is required"):
        prepare(config("data=hf_hub"))
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, id\)"):
        prepare(config("data=hf_hub", f"data.name={tmp_path / 'ds'}", *SMALL, f"cache_dir={tmp_path / 'cache'}"))


def test_non_utf8_file_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "corpus"
    root.mkdir()
    docs = make_docs(6)
    for i, doc in enumerate(docs):
        (root / f"{i}.txt").write_text(doc, encoding="utf-8")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    write_jsonl(root / "rows.jsonl", ["ok"])
    (root / "rows.jsonl").write_bytes((root / "rows.jsonl").read_bytes() + b'{"text": "caf\xe9"}\n')  # bad row 2
    with caplog.at_level("WARNING", logger="gpt4_lightning"):
        out = prepare(config("data=files", f"data.path={root}", *SMALL, f"data.dir={tmp_path / 'out'}", "num_proc=2"))
    stats = Manifest.load(out).stats
    assert stats["skipped_files"] == 2 and sorted(Path(p).name for p in stats["skipped"]) == ["latin1.txt",
                                                                                             "rows.jsonl"]
    assert sum(stats["documents"].values()) == len(docs)  # not even the valid first row of rows.jsonl
    assert sum("latin1.txt" in r.message and "UTF-8" in r.message for r in caplog.records) == 1  # once, not per pass


def test_tokenizer_file_sets_vocab_and_eos(tmp_path):
    docs = make_docs(30)
    spec = config("tokenizer.vocab_size=320", "tokenizer.special_tokens=['<pad>','<s>','</s>']",
                  "tokenizer.eos_token='</s>'").tokenizer
    saved = tmp_path / "my_tokenizer.json"
    train_bpe(docs, spec).save(str(saved))
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    out = prepare(config("data=files", f"data.path={corpus}", "tokenizer=file", f"tokenizer.path={saved}",
                         "tokenizer.eos_token='</s>'", f"data.dir={tmp_path / 'out'}"))
    manifest = Manifest.load(out, verify=True)
    original = Tokenizer.from_file(str(saved))
    assert manifest.eos_id == original.token_to_id("</s>") == 2
    assert manifest.vocab_size == original.get_vocab_size() > 256  # what it learned (a tiny corpus may stop short)
    assert manifest.source["tokenizer"]["kind"] == "file"
    expected = expected_splits(docs, float(config().data.val_fraction))
    assert documents(out, "train") + documents(out, "val") == expected["train"] + expected["val"]


def test_cache_dir_and_fingerprint(tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(5))
    monkeypatch.delenv("GPT4_LIGHTNING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gpt4_lightning"
    monkeypatch.setenv("GPT4_LIGHTNING_CACHE", str(tmp_path / "env"))
    cfg = config("data=files", f"data.path={corpus}", *SMALL)
    first = prepare(cfg)
    assert first.parent == tmp_path / "env" and first.name.startswith("files-")
    assert prepare(cfg) == first
    assert output_dir(config(f"cache_dir={tmp_path / 'cfg'}"), "fp") == tmp_path / "cfg" / "stdlib-fp"
    os.utime(corpus, ns=(0, 0))  # same content, new mtime: a new fingerprint, never the stale tokens
    assert prepare(cfg) != first
    assert prepare(config("data=files", f"data.path={corpus}", *SMALL, "data.val_fraction=0.5")) != first


def test_reuse_reads_no_shard_unless_asked_to_verify(tmp_path):
    """Reusing a prepared directory costs a stat per shard, not a read of the corpus: a same-size corrupted shard
    passes the reuse check, and is caught by its sha256 only with data.verify=true."""
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    args = ["data=files", f"data.path={corpus}", *SMALL, f"data.dir={tmp_path / 'out'}"]
    out = prepare(config(*args))
    shard = out / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert prepare(config(*args)) == out
    with pytest.raises(DataError, match=r"train_00000\.bin fails its sha256"):
        prepare(config(*args, "data.verify=true"))


def test_overwrite_redoes_and_removes_stale_shards(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    args = ["data=files", f"data.path={corpus}", *SMALL, f"data.dir={tmp_path / 'out'}"]
    out = prepare(config(*args, "data.shard_tokens=500"))
    assert len(shard_files(out)) > 3
    with pytest.raises(DataError, match=r"manifest\.json was prepared from other inputs \(shard_tokens 500 there, "
                       r"16777216 now\).*pass data\.dir=.* to train.*overwrite=true re-tokenizes.*deleting its \d+ "
                       r"shards"):
        prepare(config(*args))  # same directory, other shard size: never silently replaced
    prepare(config(*args, "overwrite=true"))
    assert [p.name for p in shard_files(out)] == ["train_00000.bin", "val_00000.bin"]
    Manifest.load(out, verify=True)


def test_split_is_deterministic_by_document():
    docs = [str(i) for i in range(2000)]
    splits = expected_splits(docs, 0.05)
    assert splits == expected_splits(docs, 0.05)
    assert 60 < len(splits["val"]) < 140 and "0" in splits["train"]
    assert expected_splits(["a", "b"], 0.001) == {"train": ["a"], "val": ["b"]}  # at least one val document
    assert expected_splits(["a"], 0.5) == {"train": ["a"], "val": []}
    assert expected_splits(["a", "b"], 0.0) == {"train": ["a", "b"], "val": []}


# ------------------------------------------------------------------------------ workers under an ignored SIGTERM

POOL_EXIT_SCRIPT = """
import signal, sys
from gpt4_lightning.data.prepare.encode import encode as _encode

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what a submitit job does; forked workers inherit it
batches = (("train", [f"document {i} " * 40] * 8) for i in range(200))
encoded = _encode(batches, open(sys.argv[1]).read(), 0, "uint16", num_proc=2)
next(encoded)
encoded.close()  # leaving early (an error, a closed generator): Pool.terminate() SIGTERMs the workers
print("workers stopped")
"""


def test_leaving_the_encoder_pool_early_stops_workers_that_inherited_an_ignored_sigterm(tmp_path):
    """Pool.terminate() stops workers by SIGTERM and waits for them: with the signal ignored (inherited
    from a submitit job) it would wait forever. The workers restore the default action."""
    tokenizer = tmp_path / "tokenizer.json"
    train_bpe(make_docs(20), config(*SMALL).tokenizer).save(str(tokenizer))
    script = tmp_path / "pool_exit.py"
    script.write_text(POOL_EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tokenizer)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "workers stopped" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------- SIGKILL midway


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_clean_result(tmp_path):
    docs = make_docs(6000, words=200)
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    saved = tmp_path / "tok.json"
    train_bpe(docs[:500], config(*SMALL).tokenizer).save(str(saved))
    args = ["data=files", f"data.path={corpus}", "tokenizer=file", f"tokenizer.path={saved}",
            "data.shard_tokens=20000", "num_proc=2"]
    clean = prepare(config(*args, f"data.dir={tmp_path / 'clean'}"))
    out = tmp_path / "out"
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(tmp_path / "cache")}

    def run_killed(*extra: str, ready) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "gpt4_lightning.prepare", *args, f"data.dir={out}", *extra],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        kill_when(proc, ready)
        assert not (out / MANIFEST).exists(), "killed midway: no manifest may exist"
        with pytest.raises(DataError, match=r"manifest\.json is missing"):
            Manifest.load(out)

    def same_as_clean() -> None:
        result = cli(*args, f"data.dir={out}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        manifest, reference = Manifest.load(out, verify=True), Manifest.load(clean)
        assert manifest.splits == reference.splits  # same files, token counts and sha256s
        assert sorted(p.name for p in shard_files(out)) == sorted(p.name for p in shard_files(clean))
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    run_killed(ready=lambda: (out / "train_00000.bin").exists())  # fresh directory
    same_as_clean()
    inode = (out / "train_00001.bin").stat().st_ino  # redo over a complete output: the old manifest goes first
    run_killed("overwrite=true", ready=lambda: (out / "train_00001.bin").stat().st_ino != inode)
    same_as_clean()
    procs = [p for p in Path("/proc").glob("[0-9]*") if str(out) in _cmdline(p)]
    assert not procs, "pool workers outlived the killed prepare"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, list[str]]:
    """A complete small output (2 train shards) and the CLI arguments that produced it."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = write_jsonl(root / "c.jsonl", make_docs(60))
    args = ["data=files", f"data.path={corpus}", *SMALL, "data.shard_tokens=1000", f"data.dir={root / 'out'}"]
    prepare(config(*args))
    return root / "out", args


def _bad_empty(tmp_path, out, args):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text(" \n")
    write_jsonl(tmp_path / "empty" / "rows.jsonl", ["", "\n"])
    return [*args, f"data.path={tmp_path / 'empty'}", "overwrite=true"], r"no text found in .*blank\.txt"


def _bad_truncated(tmp_path, out, args):
    shard = out / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    return args, r"train_00001\.bin .*truncated"


def _bad_checksum(tmp_path, out, args):
    shard = out / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    return [*args, "data.verify=true"], r"train_00000\.bin fails its sha256"


def _bad_version(tmp_path, out, args):
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["format_version"] = 99
    (out / MANIFEST).write_text(json.dumps(manifest))
    return args, r"manifest\.json has format_version 99"


def _bad_eos(tmp_path, out, args):
    spec = config("tokenizer.vocab_size=300", "tokenizer.special_tokens=['<pad>']", "tokenizer.eos_token='<pad>'")
    train_bpe(make_docs(10), spec.tokenizer).save(str(tmp_path / "no_eos.json"))
    args = [a for a in args if not a.startswith("tokenizer.")]
    return ([*args, "tokenizer=file", f"tokenizer.path={tmp_path / 'no_eos.json'}", "overwrite=true"],
            r"EOS token '<\|endoftext\|>' is not in the vocabulary of .*no_eos\.json")


BAD = {
    "missing_path": lambda tmp_path, out, args: ([*args, f"data.path={tmp_path / 'nope.jsonl'}", "overwrite=true"],
                                                 r"data\.path .*nope\.jsonl does not exist"),
    "empty_corpus": _bad_empty,
    "truncated_shard": _bad_truncated,
    "checksum_mismatch": _bad_checksum,
    "unknown_format_version": _bad_version,
    "eos_not_in_vocab": _bad_eos,
    "missing_required_config": lambda tmp_path, out, args: (["data=files", f"data.dir={out}"],
                                                            r"data\.path is required"),
    "missing_tokenizer_path": lambda tmp_path, out, args: ([args[0], args[1], "tokenizer=file", f"data.dir={out}"],
                                                           r"tokenizer\.path is required"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_changes_nothing(tmp_path, prepared, case):
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    args = [a if not a.startswith("data.dir=") else f"data.dir={out}" for a in prepared[1]]
    args, message = BAD[case](tmp_path, out, args)
    before = snapshot(tmp_path)
    result = cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(tmp_path) == before  # nothing already written was changed, nothing added


def test_full_traceback_on_request(tmp_path):
    result = cli("data=files", f"data.path={tmp_path / 'nope'}", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "DataError" in result.stderr
