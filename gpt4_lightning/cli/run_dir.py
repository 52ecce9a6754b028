"""Undo what Hydra wrote into a run directory before a task that then rejected its input.

Hydra writes the run's config (`.hydra/`) and log into the run directory before the task starts, so when the
task then rejects its input without having written anything else there, `RunDirGuard` puts a pre-existing
run directory's files back byte for byte and removes a run directory this command created.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from omegaconf import DictConfig


class RunDirGuard:
    """Undo what Hydra wrote into the run directory (`.hydra/*.yaml`, `<job>.log`) before a task that then
    rejected its input: a pre-existing run directory gets those files back byte for byte (and their mtimes),
    a run directory this command created is removed. Only when nothing else in the run directory changed:
    once the task itself wrote there (checkpoints, metrics), the record of that run is kept whole."""

    def __init__(self, cfg: DictConfig) -> None:
        self.run_dir = Path(str(cfg.hydra.run.dir)).absolute()
        self.subdir = cfg.hydra.output_subdir
        self.job = str(cfg.hydra.job.name)
        self.saved = {p: self._read(p) for p in self._guarded(self.run_dir)}
        self.others = self._others(self.run_dir)
        self.existed = {p for p in (self.run_dir, *self.run_dir.parents) if p.exists()}
        self.dirs = {Path(root) for root, _, _ in os.walk(self.run_dir)}  # inside it

    def _guarded(self, run_dir: Path) -> list[Path]:
        from gpt4_lightning.cli.run_lock import LOCK

        files = [run_dir / f"{self.job}.log", run_dir / LOCK]  # and the run lock's holder record
        if self.subdir is not None:
            files += [run_dir / str(self.subdir) / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        return files

    @staticmethod
    def _read(path: Path) -> tuple[bytes, int, int] | None:
        try:
            st = path.stat()
            return path.read_bytes(), st.st_atime_ns, st.st_mtime_ns
        except OSError:
            return None

    def _others(self, run_dir: Path) -> dict[str, tuple[int, int]]:
        guarded = set(map(str, self._guarded(run_dir)))
        found = {}
        for root, _, files in os.walk(run_dir):
            for name in files:
                path = os.path.join(root, name)
                if path not in guarded:
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    found[os.path.relpath(path, run_dir)] = (st.st_size, st.st_mtime_ns)
        return found

    def undo(self) -> None:
        try:
            from hydra.core.hydra_config import HydraConfig

            run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
        except Exception:
            return
        same = run_dir == self.run_dir
        saved = self.saved if same else dict.fromkeys(self._guarded(run_dir))
        if self._others(run_dir) != (self.others if same else {}):
            return  # the task wrote into the run directory: keep everything
        for path, before in saved.items():
            try:
                if before is None:
                    path.unlink(missing_ok=True)
                elif (self._read(path) or (None, 0, None))[::2] != before[::2]:  # content or mtime changed
                    path.write_bytes(before[0])
                    os.utime(path, ns=before[1:])
            except OSError:
                pass
        # remove the directories this command created (rmdir: only empty ones): inside the run directory (e.g. an
        # empty logs/), then the run directory and its parents up to the first that existed
        existed = self.existed | (self.dirs if same else set())
        for root, _, _ in os.walk(run_dir, topdown=False):
            if Path(root) != run_dir and Path(root) not in existed:
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        for directory in (run_dir, *run_dir.parents):
            if directory in existed:
                break
            try:
                directory.rmdir()
            except OSError:
                break
