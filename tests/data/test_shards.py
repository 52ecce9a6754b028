"""The shard format (data/shards.py): token dtypes, shard splitting, manifest checks; in process on small real files
(the atomic writer under it: tests/utils/test_files.py)."""

import dataclasses
import json

import numpy as np
import pytest

from gpt4_lightning.data.shards import MANIFEST, DataError, Manifest, Shard, ShardWriter, SplitShards, token_dtype


def test_token_dtype_is_the_smallest_that_fits():
    assert token_dtype(50432) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def write_dataset(tmp_path, train_tokens: int = 2500, shard_tokens: int = 1000) -> Manifest:
    splits = {}
    for split, n in (("train", train_tokens), ("val", 300)):
        writer = ShardWriter(tmp_path, split, np.dtype(np.uint16), shard_tokens)
        for start in range(0, n, 170):  # uneven appends across shard boundaries
            writer.add(np.arange(start, min(start + 170, n)) % 500)
        splits[split] = writer.close()
    manifest = Manifest(dtype="uint16", vocab_size=500, eos_id=0, tokenizer_file="tokenizer.json",
                        tokenizer_sha256="-", splits=splits)
    manifest.save(tmp_path)
    return manifest


def test_shard_writer_splits_and_round_trips(tmp_path):
    manifest = write_dataset(tmp_path)
    assert [s.tokens for s in manifest.splits["train"]] == [1000, 1000, 500]
    loaded = Manifest.load(tmp_path, verify=True)
    assert loaded == manifest
    tokens = np.concatenate([np.asarray(m) for m in loaded.memmaps(tmp_path, "train")])
    assert np.array_equal(tokens, np.arange(2500) % 500)
    assert loaded.num_tokens("val") == 300


def test_a_million_shards_make_a_small_manifest(tmp_path):
    """The manifest lists a split's token counts run-length encoded and keeps the sha256s in checksums.sha256: at
    a million shards it is a few hundred bytes and loads without a per-shard object (format version 1 put a name
    and a sha256 per shard in the JSON: ~100 MB)."""
    n = 1_000_000
    digest = "0" * 64
    sizes = [16_777_216] * (n - 1) + [1234]
    manifest = Manifest(dtype="uint16", vocab_size=500, eos_id=0, tokenizer_file="tokenizer.json",
                        tokenizer_sha256="-", splits={"train": SplitShards("train", sizes, [digest] * n)})
    manifest.save(tmp_path)
    assert (tmp_path / MANIFEST).stat().st_size < 2000
    loaded = Manifest.load(tmp_path, check_sizes=False)
    assert loaded.num_tokens("train") == 16_777_216 * (n - 1) + 1234 and len(loaded.splits["train"]) == n
    assert loaded.splits["train"]._sha256 is None  # the checksums are read only when asked for
    assert loaded.splits["train"][n - 1] == Shard("train_999999.bin", 1234, digest)
    assert loaded.splits["train"][0] == Shard("train_00000.bin", 16_777_216, digest)


def test_format_version_1_manifests_are_still_read(tmp_path):
    manifest = write_dataset(tmp_path)
    v1 = {**json.loads((tmp_path / MANIFEST).read_text()), "format_version": 1}
    v1.pop("checksums")
    v1["splits"] = {name: [dataclasses.asdict(s) for s in shards] for name, shards in manifest.splits.items()}
    (tmp_path / MANIFEST).write_text(json.dumps(v1))
    (tmp_path / "checksums.sha256").unlink()
    loaded = Manifest.load(tmp_path, verify=True)
    assert loaded.splits == manifest.splits and loaded.format_version == 1


def test_truncated_shard_is_named(tmp_path):
    write_dataset(tmp_path)
    shard = tmp_path / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train_00001\.bin.*truncated"):
        Manifest.load(tmp_path)


def test_checksum_mismatch_only_with_verify(tmp_path):
    write_dataset(tmp_path)
    shard = tmp_path / "val_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    Manifest.load(tmp_path)  # sizes match: the cheap check passes
    with pytest.raises(DataError, match=r"val_00000\.bin.*sha256"):
        Manifest.load(tmp_path, verify=True)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.pop("splits"), "unexpected fields"),
])
def test_bad_manifest(tmp_path, edit, message):
    write_dataset(tmp_path)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    edit(raw)
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(DataError, match=message):
        Manifest.load(tmp_path)


def test_missing_dir_and_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        Manifest.load(tmp_path)
