"""`prepare num_parts=N part=k` and the merge: N parts prepared as separate processes and merged hold exactly the
documents, per split and in order, that a one-part prepare holds; a part killed mid-way is repaired by the merge.
Real CLI processes, a real BPE trained once for all parts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4_lightning.data.prepare.corpus import Corpus
from gpt4_lightning.data.prepare.directory import is_val, split_documents
from gpt4_lightning.data.prepare.parts import PARTS, merge, part_dir
from gpt4_lightning.data.prepare.pipeline import prepare
from gpt4_lightning.data.shards import MANIFEST, DataError, Manifest
from tests.helpers.prepare import cli, config, documents, kill_when, make_docs, write_jsonl


def _corpus(root: Path, files: int = 5, per_file: int = 600) -> list[str]:
    """`files` jsonl files of code-like documents (one duplicated across files); the documents in corpus order."""
    root.mkdir()
    docs = make_docs(files * per_file, words=120)
    docs[per_file + 7] = docs[3]  # an exact duplicate in another file: same split, wherever it sits
    for f in range(files):
        write_jsonl(root / f"{f:02d}.jsonl", docs[f * per_file : (f + 1) * per_file])
    return docs


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(cwd / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "gpt4_lightning.prepare", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _same_documents(out: Path, reference: Path) -> None:
    for split in ("train", "val"):
        assert documents(out, split) == documents(reference, split), split


@pytest.mark.slow
def test_two_part_processes_and_merge_equal_a_one_part_prepare_and_a_killed_part_is_repaired(tmp_path):
    docs = _corpus(tmp_path / "corpus")
    args = ["data=files", f"data.path={tmp_path / 'corpus'}", "tokenizer.vocab_size=400", "data.val_fraction=0.1",
            "data.shard_tokens=4000", "num_proc=1"]
    whole = prepare(config(*args, f"data.dir={tmp_path / 'whole'}"))
    expected = {"train": [], "val": []}
    for split, text in split_documents(docs, 0.1):
        expected[split].append(text)
    assert documents(whole, "train") == expected["train"] and documents(whole, "val") == expected["val"]

    out = tmp_path / "parted"
    parted = [*args, f"data.dir={out}", "num_parts=2"]
    procs = [_popen([*parted, f"part={k}"], tmp_path) for k in range(2)]  # at once: one trains the BPE
    logs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        logs.append(stdout + stderr)
        assert stdout.strip().splitlines()[-1].startswith(str(out / PARTS / "part-"))
    assert sum("trained a byte-level BPE" in log for log in logs) == 1, "the BPE is trained once for all parts"
    assert not (out / MANIFEST).exists(), "a part alone does not merge"

    merged = cli(*parted, cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.strip().splitlines()[-1] == str(out)
    assert "merged 2 parts" in merged.stdout and "prepared " not in merged.stdout, merged.stdout
    _same_documents(out, whole)
    manifest = Manifest.load(out, verify=True)  # sha256s of the linked shards are the parts' own
    assert manifest.stats["documents"] == Manifest.load(whole).stats["documents"]
    assert (out / "tokenizer.json").read_bytes() == (whole / "tokenizer.json").read_bytes()
    shards = sorted(out.glob("*_*.bin"))
    assert len(shards) > 4 and all(p.is_symlink() and os.readlink(p).startswith(f"{PARTS}/part-") for p in shards)
    both = {os.readlink(p).split("/")[1] for p in shards}
    assert both == {part_dir(out, 0, 2).name, part_dir(out, 1, 2).name}

    # part 1 redone and killed once its first shard is rewritten: no merge over it remains, and the merge
    # command prepares it again (part 0 is reused) and merges to the same documents
    first = part_dir(out, 1, 2) / "train_00000.bin"
    inode = first.stat().st_ino
    proc = _popen([*parted, "part=1", "overwrite=true"], tmp_path)
    kill_when(proc, lambda: first.stat().st_ino != inode)
    assert not (part_dir(out, 1, 2) / MANIFEST).exists() and not (out / MANIFEST).exists()
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        Manifest.load(out)
    repaired = cli(*parted, cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert f"prepared {part_dir(out, 1, 2)}" in repaired.stdout and f"prepared {part_dir(out, 0, 2)}" not in \
        repaired.stdout, repaired.stdout
    _same_documents(out, whole)
    Manifest.load(out, verify=True)
    assert not [p for p in out.rglob("*.tmp")]


def test_a_documents_split_is_its_texts_not_its_position():
    docs = make_docs(3000, seed=3)
    forward = {text: split for split, text in split_documents(docs, 0.05, small_corpus_rules=False)}
    backward = {text: split for split, text in split_documents(docs[::-1], 0.05, small_corpus_rules=False)}
    assert {t for t, s in forward.items() if s == "val"} == {t for t, s in backward.items() if s == "val"}
    assert 0.03 < sum(s == "val" for s in forward.values()) / len(docs) < 0.07
    assert [s == "val" for s in forward.values()] == [is_val(t, 0.05) for t in forward]


def test_parts_are_contiguous_byte_balanced_and_cover_the_corpus(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    sizes = [100, 100, 5000, 100, 100, 100, 2000, 100]
    for i, n in enumerate(sizes):
        (root / f"{i}.txt").write_text("x" * n)
    corpus = Corpus(config("data=files", f"data.path={root}").data)
    for count in (1, 2, 3, 8):
        parts = [corpus.part(k, count).files for k in range(count)]
        assert [p for part in parts for p in part] == corpus.files and all(parts)
    assert [len(corpus.part(k, 2).files) for k in range(2)] == [3, 5]  # the big file's middle is in half one
    with pytest.raises(DataError, match=r"num_parts=9 is more than the 8 input files"):
        corpus.part(0, 9)


def test_merge_refuses_parts_of_other_tokenizers_or_another_num_parts(tmp_path):
    _corpus(tmp_path / "corpus", files=3, per_file=30)
    args = ["data=files", f"data.path={tmp_path / 'corpus'}", "tokenizer.vocab_size=300", "num_parts=2",
            f"data.dir={tmp_path / 'out'}"]
    for k in range(2):
        prepare(config(*args, f"part={k}"))
    manifests = [Manifest.load(part_dir(tmp_path / "out", k, 2)) for k in range(2)]
    manifests[1].tokenizer_sha256 = "0" * 64  # as if part 1's hub tokenizer had changed on the hub meanwhile
    cfg = config(*args)
    with pytest.raises(DataError, match=r"parts 0 and 1 were encoded with different tokenizers"):
        merge(tmp_path / "out", manifests, "fp", {}, Corpus(cfg.data))
    with pytest.raises(ValueError, match=r"part=2 must be in \[0, num_parts=2\)"):
        prepare(config(*args, "part=2"))
    with pytest.raises(DataError, match=r"parts holds parts of num_parts=2, not 3: give the num_parts they were"):
        prepare(config(*args, "num_parts=3"))  # the merge would prepare 3 new parts beside the 2 done


def test_a_hub_dataset_is_parted_by_its_data_files(tmp_path):
    """hf_hub parts are `IterableDataset.shard(N, k, contiguous=True)` of the streamed dataset: a local folder of
    3 data files (what `datasets` resolves as it resolves a hub id) in 2 parts merges to the one-part result."""
    docs = make_docs(90, seed=5)
    (tmp_path / "ds" / "data").mkdir(parents=True)
    for f in range(3):
        write_jsonl(tmp_path / "ds" / "data" / f"train-{f:05d}-of-00003.jsonl", docs[f * 30 : (f + 1) * 30])
    args = ["data=hf_hub", f"data.name={tmp_path / 'ds'}", "tokenizer.vocab_size=300", "data.val_fraction=0.2"]
    whole = prepare(config(*args, f"data.dir={tmp_path / 'whole'}"))
    parted = prepare(config(*args, f"data.dir={tmp_path / 'parted'}", "num_parts=2"))
    assert [sum(Manifest.load(part_dir(parted, k, 2)).stats["documents"].values()) for k in range(2)] == [60, 30]
    _same_documents(parted, whole)
    with pytest.raises(DataError, match=r"num_parts=4 is more than the 3 data files of hub dataset"):
        prepare(config(*args, f"data.dir={tmp_path / 'four'}", "num_parts=4", "part=0"))
