"""Atomic file writes (utils/files.py): a failed write leaves the old file and no temporary; in process, real files."""

import pytest

from gpt4_lightning.utils.files import atomic_writer


def test_atomic_writer_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"new, partial")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind
    with atomic_writer(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
