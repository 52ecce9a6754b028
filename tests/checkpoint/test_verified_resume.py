"""A corrupt newest checkpoint, through the real CLI: bytes flipped inside a tensor of a `.ckpt` (1 process) and of
one rank's DCP shard (2-process FSDP2). `ckpt_path=last` resumes from the checkpoint before it with one warning
line, and trains on bitwise as the uninterrupted run did; an explicit path to it, in train and generate, is one
`error:` line. The runs copy the uninterrupted 120-step runs of test_kill_and_resume (made here when absent)."""

import shutil
from pathlib import Path

import pytest

from tests.helpers.cli import error_lines, logged_losses, run, step_losses
from tests.helpers.corrupt import complement_block
from tests.helpers.interrupted import EVERY, STEPS, STRATEGIES, run_args

NEWEST, BEFORE = f"step{STEPS:06d}.ckpt", f"step{STEPS - EVERY:06d}.ckpt"


def flip_inside_a_tensor(checkpoint: Path) -> str:
    """Complement 4 KiB in the middle of the largest tensor's bytes (a `.ckpt`'s largest zip record; a DCP
    directory's largest item in rank 1's shard); the name of the file changed."""
    if checkpoint.is_dir():
        from torch.distributed.checkpoint import FileSystemReader

        items = [i for i in FileSystemReader(str(checkpoint)).read_metadata().storage_data.values()
                 if i.relative_path.startswith("__1_")]
        item = max(items, key=lambda i: i.length)
        path, offset = checkpoint / item.relative_path, item.offset + item.length // 2
    else:
        import zipfile

        with zipfile.ZipFile(checkpoint) as z:
            record = max(z.infolist(), key=lambda i: i.file_size)
        with open(checkpoint, "rb") as f:  # the local header: 30 bytes, the name, the extra field
            f.seek(record.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        path = checkpoint
        offset = record.header_offset + 30 + name_len + extra_len + record.file_size // 2
    complement_block(path, offset)
    return path.name


def copy_run(workdir: Path, strategy: str, name: str) -> Path:
    """The uninterrupted run of `strategy` copied to outputs/<name>, its two newest checkpoints only."""
    source = workdir / "outputs" / f"whole_{strategy}"
    if not source.exists():
        run(workdir, "train", *run_args(workdir, f"whole_{strategy}", *STRATEGIES[strategy]))
    target = workdir / "outputs" / name
    keep = {NEWEST, BEFORE, "last.ckpt"}
    shutil.copytree(source, target, symlinks=True, ignore=lambda d, names: [
        n for n in names if Path(d).name == "checkpoints" and n.split(".checksums")[0] not in keep])
    return target


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before_exactly(workdir, strategy):
    name = f"corrupt_{strategy}"
    run_dir = copy_run(workdir, strategy, name)
    reference = step_losses(workdir / "outputs" / f"whole_{strategy}")
    damaged = flip_inside_a_tensor(run_dir / "checkpoints" / NEWEST)
    extra = STRATEGIES[strategy]

    if strategy == "one":  # an explicit path to it: one error line, in train and in generate, nothing written
        newest = run_dir / "checkpoints" / NEWEST
        failed = run(workdir, "train", *run_args(workdir, name, f"ckpt_path={newest}"), check=False)
        (line,) = error_lines(failed.stderr)
        assert failed.returncode == 1 and f"{NEWEST} failed verification (file {damaged} does not match" in line
        generated = run(workdir, "generate", f"ckpt_path={newest}", "max_new_tokens=4", check=False)
        (line,) = error_lines(generated.stderr)
        assert generated.returncode == 1 and "the checkpoint failed verification" in line, line

    resumed = run(workdir, "train", *run_args(workdir, name, *extra, "ckpt_path=last"))
    warnings = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "failed verification" in line]
    assert len(warnings) == 1, warnings
    assert f"{NEWEST} failed verification (file {damaged} does not match its checksum" in warnings[0]
    assert f"resuming from {BEFORE} instead, {EVERY} steps lost" in warnings[0]
    rows = logged_losses(run_dir)[len(logged_losses(workdir / "outputs" / f"whole_{strategy}")):]  # the resume's
    redone = [s for s in reference if s >= STEPS - EVERY]
    assert rows and sorted({s for s, _ in rows}) == redone
    assert dict(rows) == {s: reference[s] for s in redone}  # bitwise
