"""Checkpoint checksums, in process: what the writers record (a `.ckpt` through `VerifiedCheckpointIO`, a DCP
directory through `HashingFileSystemWriter`), what `verify` finds (flipped bytes, a truncated file, a missing
`.metadata`, no manifest), and the choice `ckpt_path=last` makes (`resolve_ckpt_path` before the build, `choose`
once the ranks are up) against an explicit path. Real files, real torch.save and DCP; one process."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from gpt4_lightning.checkpoint.integrity import file_digest, manifest_path, verify
from gpt4_lightning.checkpoint.io import HashingFileSystemWriter, VerifiedCheckpointIO
from gpt4_lightning.checkpoint.paths import LAST, step_name
from gpt4_lightning.checkpoint.resume import choose, resolve_ckpt_path
from tests.helpers.corrupt import complement_block

STATE = {"state_dict": {"model.w": torch.arange(300_000, dtype=torch.float32)}, "global_step": 0}


def flip(path: Path) -> None:
    """A bad 4 KiB block in the middle of the file."""
    complement_block(path, path.stat().st_size // 2)


def run_dir_with(tmp_path: Path, steps: list[int]) -> Path:
    """A run directory whose checkpoints/ holds a `.ckpt` per step, written as training writes them, and
    last.ckpt linking the newest."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in steps:
        VerifiedCheckpointIO().save_checkpoint({**STATE, "global_step": step}, ckpts / step_name(step))
    os.symlink(step_name(steps[-1]), ckpts / LAST)
    return tmp_path


def test_the_manifest_holds_the_digest_of_the_bytes_written(tmp_path):
    path = tmp_path / "a.ckpt"
    VerifiedCheckpointIO().save_checkpoint(STATE, path)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["files"] == {".": {"size": path.stat().st_size, "xxh3_128": file_digest(path)}}
    assert manifest["step"] == 0
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.w"], STATE["state_dict"]["model.w"])
    assert verify(path).ok and verify(path).manifest


def test_verify_finds_a_flipped_block_a_truncation_and_a_missing_manifest(tmp_path):
    path = tmp_path / "a.ckpt"
    VerifiedCheckpointIO().save_checkpoint(STATE, path)
    flip(path)
    assert verify(path, contents=False).ok  # same size: only the digest sees it
    assert "does not match its checksum" in verify(path).problem
    assert verify(path, rank=1, world=2).ok  # file 0 is rank 0's share

    VerifiedCheckpointIO().save_checkpoint(STATE, path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    assert "truncated" in verify(path, contents=False).problem

    manifest_path(path).unlink()  # a checkpoint from before checksums
    assert verify(path).ok and not verify(path).manifest
    manifest_path(path).write_text("{not json")
    assert "manifest" in verify(path).problem


def test_a_dcp_checkpoint_records_every_file_it_writes(tmp_path):
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "sharded"
    writer = HashingFileSystemWriter(path)
    dcp.save({"state_dict": {"w": torch.randn(1000, 100)}}, storage_writer=writer, no_dist=True)
    entries = writer.fs.digests.entries
    files = sorted(p.name for p in path.iterdir())
    assert sorted(entries) == files and ".metadata" in files, (entries, files)
    assert all(entries[n] == {"size": (path / n).stat().st_size, "xxh3_128": file_digest(path / n)} for n in files)


def test_last_falls_back_to_the_newest_sound_checkpoint_and_an_explicit_path_fails(tmp_path, caplog):
    run_dir = run_dir_with(tmp_path, [10, 20, 30])
    ckpts = run_dir / "checkpoints"
    flip(ckpts / step_name(30))
    with caplog.at_level(logging.WARNING):
        assert choose(ckpts / LAST, fallback=True) == ckpts / step_name(20)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "step000030.ckpt failed verification" in warning and "step000020.ckpt instead, 10 steps lost" in warning

    with pytest.raises(ValueError, match=r"step000030.ckpt failed verification \(file step000030.ckpt does not "):
        choose(ckpts / step_name(30), fallback=False)
    flip(ckpts / step_name(20))
    flip(ckpts / step_name(10))
    with pytest.raises(ValueError, match=r"no checkpoint of the run verifies .* 2 older ones failed too"):
        choose(ckpts / LAST, fallback=True)


def test_an_old_checkpoint_without_checksums_loads_unverified(tmp_path, caplog):
    run_dir = run_dir_with(tmp_path, [10])
    ckpt = run_dir / "checkpoints" / step_name(10)
    manifest_path(ckpt).unlink()
    with caplog.at_level(logging.WARNING):
        assert choose(ckpt, fallback=False) == ckpt
    assert any("has no checksums" in r.getMessage() and "unverified" in r.getMessage() for r in caplog.records)


def test_resolve_skips_a_truncated_newest_checkpoint_before_anything_is_built(tmp_path, caplog):
    run_dir = run_dir_with(tmp_path, [10, 20])
    newest = run_dir / "checkpoints" / step_name(20)
    with open(newest, "r+b") as f:
        f.truncate(1000)
    with caplog.at_level(logging.WARNING):
        assert resolve_ckpt_path("auto", run_dir) == str(run_dir / "checkpoints" / step_name(10))
    assert any("1000 bytes" in r.getMessage() and "10 steps lost" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="is incomplete"):
        resolve_ckpt_path(str(newest), run_dir)


def test_resolve_skips_a_sharded_checkpoint_missing_its_metadata(tmp_path):
    import torch.distributed.checkpoint as dcp

    from gpt4_lightning.checkpoint.integrity import write_manifest

    ckpts = tmp_path / "checkpoints"
    for step in (10, 20):
        path = ckpts / step_name(step)
        writer = HashingFileSystemWriter(path)
        dcp.save({"state_dict": {"w": torch.randn(100)}}, storage_writer=writer, no_dist=True)
        write_manifest(path, writer.fs.digests.entries, step)
    os.symlink(step_name(20), ckpts / LAST)
    (ckpts / step_name(20) / ".metadata").unlink()  # an incomplete copy
    assert resolve_ckpt_path("last", tmp_path) == str(ckpts / step_name(10))
    shutil.rmtree(ckpts / step_name(10))
    with pytest.raises(ValueError, match=r"no complete checkpoint .* file \.metadata is missing"):
        resolve_ckpt_path("last", tmp_path)
