"""GPT4DataModule: windows, rank partition, shuffling, exact resume under a real Lightning Trainer (1 process
with and without workers, 2 DDP processes on gloo), bad inputs, and memory on a > 1 GiB corpus.

Token ids are arange-based and unique across the corpus, so a window is identified by its first token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gpt4_lightning.data.shards import DataError, Manifest, Shard, ShardWriter
from gpt4_lightning.data.stream.datamodule import GPT4DataModule, TrainBatches
from gpt4_lightning.data.stream.permutation import Permutation
from tests.helpers.paths import REPO
from tests.helpers.wait import wait_until

VOCAB = 60_000
SEQ = 16


def write_data(root: Path, train: list[int], val: list[int], vocab: int = VOCAB) -> Path:
    """Shards of the given token counts; token ids count up across the whole corpus (val from 30 000)."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, sizes, start in (("train", train, 0), ("val", val, 30_000)):
        shards = []
        for size in sizes:
            writer = ShardWriter(root, split, np.dtype(np.uint16), max(size, 1))
            writer.shards = list(shards)  # continue the numbering
            writer.add(np.arange(start, start + size))
            shards = writer.close()
            start += size
        splits[split] = shards
    Manifest("uint16", vocab, 0, "tokenizer.json", "", splits).save(root)
    return root


def expected_windows(sizes: list[int], seq: int = SEQ, start: int = 0) -> list[int]:
    """First tokens of all windows, in window-id order."""
    firsts = []
    for size in sizes:
        firsts += [start + j * seq for j in range((size - 1) // seq if size > seq else 0)]
        start += size
    return firsts


TRAIN = [300, 120, 5, 100]  # windows: 18 + 7 + 0 + 6 = 31
VAL = [100, 50]  # 6 + 3 = 9


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_data(tmp_path / "data", TRAIN, VAL)


def firsts(loader) -> list[list[int]]:
    return [batch[:, 0].tolist() for batch in loader]


def flat(batches) -> list[int]:
    return [t for batch in batches for t in batch]


def test_windows_are_contiguous_and_never_cross_shards(data: Path):
    dm = GPT4DataModule(data, seq_len=SEQ, batch_size=4)
    dm.setup()
    assert dm.train_windows.num_windows == len(expected_windows(TRAIN)) == 31
    batches = list(dm.make_train_loader())
    assert len(batches) == 31 // 4
    for batch in batches:
        assert batch.dtype == torch.int64 and batch.shape == (4, SEQ + 1)
        assert torch.equal(batch, batch[:, :1] + torch.arange(SEQ + 1))  # consecutive ids: one shard
    seen = sorted(t for batch in batches for t in batch[:, 0].tolist())
    assert set(seen) <= set(expected_windows(TRAIN)) and len(set(seen)) == 28


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partition_each_epoch(data: Path, world: int):
    B = 2
    windows = np.array(expected_windows(TRAIN))
    per_rank = []
    for rank in range(world):  # one DataModule per rank, as in separate processes
        loader = GPT4DataModule(data, seq_len=SEQ, batch_size=B, seed=7).make_train_loader(world, rank)
        per_rank.append([firsts(loader), firsts(loader)])  # two epochs
    steps = 31 // (B * world)
    for epoch in range(2):
        perm = Permutation(31, 7, epoch)(np.arange(31))[: steps * B * world]
        sets = [set(flat(r[epoch])) for r in per_rank]
        assert all(len(r[epoch]) == steps for r in per_rank)  # equal length
        assert sum(len(s) for s in sets) == len(set().union(*sets))  # disjoint
        assert set().union(*sets) == set(windows[perm].tolist())  # the whole truncated permutation
        for rank, r in enumerate(per_rank):  # the documented layout: step s, rank r -> perm[s*B*W + r*B ...]
            for s, batch in enumerate(r[epoch]):
                first = s * B * world + rank * B
                assert batch == windows[perm[first : first + B]].tolist()


def test_epochs_shuffle_differently_and_seed_is_deterministic(data: Path):
    loader = GPT4DataModule(data, seq_len=SEQ, batch_size=4, seed=1).make_train_loader()
    epoch0, epoch1 = firsts(loader), firsts(loader)
    assert epoch0 != epoch1
    again = GPT4DataModule(data, seq_len=SEQ, batch_size=4, seed=1).make_train_loader()
    assert firsts(again) == epoch0 and firsts(again) == epoch1
    assert firsts(GPT4DataModule(data, seq_len=SEQ, batch_size=4, seed=2).make_train_loader()) != epoch0
    loader.set_epoch(0)
    assert firsts(loader) == epoch0


@pytest.mark.parametrize("workers", [2, 3])
def test_order_does_not_depend_on_workers(data: Path, workers: int):
    ref = GPT4DataModule(data, seq_len=SEQ, batch_size=3).make_train_loader()
    want = firsts(ref) + firsts(ref)
    loader = GPT4DataModule(data, seq_len=SEQ, batch_size=3, num_workers=workers).make_train_loader()
    assert firsts(loader) + firsts(loader) == want
    val0 = firsts(GPT4DataModule(data, seq_len=SEQ, batch_size=2).make_val_loader(2, 1))
    assert firsts(GPT4DataModule(data, seq_len=SEQ, batch_size=2, num_workers=workers).make_val_loader(2, 1)) == val0


@pytest.mark.parametrize("workers", [0, 2])
def test_state_counts_delivered_batches(data: Path, workers: int, tmp_path: Path, monkeypatch):
    """Workers run ahead of the consumer; the state is the consumer's position, and a fresh loader loaded
    with it continues exactly, through the end of the epoch into the next one."""
    ref = GPT4DataModule(data, seq_len=SEQ, batch_size=3).make_train_loader()
    want = firsts(ref) + firsts(ref)  # 10 batches per epoch
    # every batch the dataset produces (in this process or a forked worker) leaves a file in `produced`
    produced = tmp_path / "produced"
    produced.mkdir()
    original = TrainBatches.__iter__

    def counting(self):
        for i, batch in enumerate(original(self)):
            (produced / f"{os.getpid()}-{self.epoch}-{i}").touch()
            yield batch

    monkeypatch.setattr(TrainBatches, "__iter__", counting)
    loader = GPT4DataModule(data, seq_len=SEQ, batch_size=3, num_workers=workers).make_train_loader()
    it = iter(loader)
    got = [next(it)[:, 0].tolist() for _ in range(4)]
    # the event the state must not count: batches produced but not delivered (workers prefetch 2 each)
    if workers:
        wait_until(lambda: len(list(produced.iterdir())) >= 4 + workers, 30, interval_s=0.01,
                   what=f"{4 + workers} batches produced by the workers",
                   detail=lambda: f"the workers produced {len(list(produced.iterdir()))} batches")
    count = len(list(produced.iterdir()))
    assert (count >= 4 + workers) if workers else (count == 4), count  # without workers: produced on demand
    state = loader.state_dict()
    assert (state["epoch"], state["consumed"]) == (0, 12)
    resumed = GPT4DataModule(data, seq_len=SEQ, batch_size=3, num_workers=workers).make_train_loader()
    resumed.load_state_dict(state)
    got += firsts(resumed)
    assert resumed.state_dict()["epoch"] == 1
    got += firsts(resumed)
    assert got == want


def test_position_is_global_across_world_sizes(data: Path):
    """2 ranks x 2 for 3 steps, then 1 rank x 4 from that state: the same permutation continues."""
    dm0, dm1 = (GPT4DataModule(data, seq_len=SEQ, batch_size=2, seed=3) for _ in range(2))
    its = [iter(dm0.make_train_loader(2, 0)), iter(dm1.make_train_loader(2, 1))]
    before = [t for _ in range(3) for it in its for t in next(it)[:, 0].tolist()]
    single = GPT4DataModule(data, seq_len=SEQ, batch_size=4, seed=3).make_train_loader()
    single.load_state_dict(dm0.state_dict()["train_position"])
    after = flat(firsts(single))
    windows = np.array(expected_windows(TRAIN))
    perm = windows[Permutation(31, 3, 0)(np.arange(31))].tolist()
    assert before + after == perm[: 12 + 4 * ((31 - 12) // 4)]


def test_val_loader_splits_ranks_in_order(data: Path):
    windows = expected_windows(VAL, start=30_000)  # 9 windows
    dm = GPT4DataModule(data, seq_len=SEQ, batch_size=2)
    assert flat(firsts(dm.make_val_loader())) == windows
    ranks = [flat(firsts(dm.make_val_loader(2, r))) for r in range(2)]
    assert ranks == [windows[0:8:2], windows[1:8:2]]
    assert [len(b) for b in firsts(dm.make_val_loader(2, 0))] == [2, 2]


# ---------------------------------------------------------------- exact resume under a real Trainer


class Recorder(L.LightningModule):
    """One parameter; each training step records (global step, rank, first token of each row)."""

    def __init__(self, out: Path | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[int]]] = []
        self.out = out

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        record = (self.global_step, batch[:, 0].tolist())
        self.seen.append(record)
        if self.out is not None:
            with open(self.out / f"rank{self.global_rank}.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return (self.w - batch.float().mean() / VOCAB) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ValRecorder(Recorder):
    """Also validates, recording the first token of each val row."""

    def __init__(self) -> None:
        super().__init__()
        self.val_seen: list[list[int]] = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_seen.append(batch[:, 0].tolist())


def fit(data: Path, root: Path, workers: int = 0, ckpt_path: Path | None = None, every: int | None = None,
        model: Recorder | None = None, **limits) -> list[tuple[int, list[int]]]:
    dm = GPT4DataModule(data, seq_len=SEQ, batch_size=3, num_workers=workers, seed=11)
    model = model or Recorder()
    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", save_top_k=-1,
                                 **({"every_n_train_steps": every} if every else {"every_n_epochs": 1}))]
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, default_root_dir=root, **limits)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


# 31 windows, batch 3: 10 steps per epoch; 25 steps = 2.5 epochs
@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_resume_is_exact(data: Path, tmp_path: Path, workers: int):
    full = fit(data, tmp_path / "full", workers, every=4, max_steps=25)
    assert [s for s, _ in full] == list(range(25))
    epochs = [flat(b for _, b in full[e * 10 : (e + 1) * 10]) for e in range(2)]
    assert epochs[0] != epochs[1]
    for k in (4, 8, 20):  # mid epoch 0 (crosses two epoch ends), mid epoch 0 (one), mid epoch 2
        resumed = fit(data, tmp_path / f"resume{k}", workers, ckpt_path=tmp_path / "full/ckpt" / f"step={k}.ckpt",
                      max_steps=25)
        assert resumed == full[k:], k


def test_trainer_resume_at_epoch_end_and_after_a_stopped_run(data: Path, tmp_path: Path):
    full = fit(data, tmp_path / "full", every=5, max_steps=25)
    # step 10 is the last batch of epoch 0: the checkpoint's position is the start of epoch 1
    assert fit(data, tmp_path / "r10", ckpt_path=tmp_path / "full/ckpt/step=10.ckpt", max_steps=25) == full[10:]
    # a run that stopped at step 7 (max_steps) and saved its checkpoint there
    assert fit(data, tmp_path / "stop", every=7, max_steps=7) == full[:7]
    assert fit(data, tmp_path / "r7", ckpt_path=tmp_path / "stop/ckpt/step=7.ckpt", max_steps=25) == full[7:]


def test_trainer_resume_with_validation_and_workers(data: Path, tmp_path: Path):
    """Validation runs (with their own workers) between train steps neither move nor disturb the train
    position; every validation sees the val split in order."""
    full_model = ValRecorder()
    full = fit(data, tmp_path / "full", 2, every=6, model=full_model, max_steps=14, val_check_interval=4)
    val = expected_windows(VAL, start=30_000)  # 9 windows in batches of 3
    seen = flat(full_model.val_seen)
    assert seen[:6] == val[:6] and len(seen) >= 6 + 2 * 9  # sanity check (2 batches), then >= 2 validations
    assert seen[6:] == val * ((len(seen) - 6) // 9)
    model = ValRecorder()
    resumed = fit(data, tmp_path / "r", 2, ckpt_path=tmp_path / "full/ckpt/step=6.ckpt", model=model, max_steps=14,
                  val_check_interval=4)
    assert resumed == full[6:]
    assert model.val_seen and flat(model.val_seen) == val * (len(flat(model.val_seen)) // 9)


def test_trainer_resume_epoch_based(data: Path, tmp_path: Path):
    """max_epochs training from an epoch-end checkpoint: Lightning does not reload the loader's state there
    (the fit loop is not "restarting"); the DataModule's own state carries the position."""
    full = fit(data, tmp_path / "full", max_epochs=3)
    assert len(full) == 30
    resumed = fit(data, tmp_path / "r", ckpt_path=tmp_path / "full/ckpt/step=10.ckpt", max_epochs=3)
    assert resumed == full[10:]


DDP_SCRIPT = """
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gpt4_lightning.data.stream.datamodule import GPT4DataModule, TrainBatches
from gpt4_lightning.data.stream.permutation import Permutation
from tests.data.stream.test_datamodule import Recorder

data, out, max_steps, ckpt = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out.mkdir(parents=True, exist_ok=True)
dm = GPT4DataModule(data, seq_len=16, batch_size=2, seed=5)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, max_steps=max_steps, default_root_dir=out,
                    callbacks=[ModelCheckpoint(dirpath=out / "ckpt", filename="{{step}}", every_n_train_steps=3,
                                               save_top_k=-1)])
trainer.fit(Recorder(out), datamodule=dm, ckpt_path=None if ckpt == "none" else ckpt)
# a gloo group left alive can abort the interpreter at exit ("terminate called without an active exception")
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_processes_partition_and_resume_exactly(data: Path, tmp_path: Path):
    """Real DDP on CPU (gloo, 2 processes): per-rank batches are disjoint and cover the epoch, and a
    resume from step 3 gives each rank the same batches as the uninterrupted run."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format())
    # the script imports Recorder from this module: the repository root on its path
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}

    def run(out: str, max_steps: int, ckpt: str = "none") -> list[list[tuple[int, list[int]]]]:
        proc = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / out), str(max_steps), ckpt],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return [[tuple(json.loads(line)) for line in (tmp_path / out / f"rank{r}.jsonl").read_text().splitlines()]
                for r in range(2)]

    full = run("full", 10)  # 31 windows, 2 ranks x 2: 7 steps per epoch
    assert [[s for s, _ in rank] for rank in full] == [list(range(10))] * 2
    epoch0 = [set(flat(b for _, b in rank[:7])) for rank in full]
    windows = np.array(expected_windows(TRAIN))
    assert not epoch0[0] & epoch0[1]
    assert epoch0[0] | epoch0[1] == set(windows[Permutation(31, 5, 0)(np.arange(31))[:28]].tolist())
    resumed = run("resumed", 10, str(tmp_path / "full/ckpt/step=3.ckpt"))
    assert resumed == [rank[3:] for rank in full]


# ---------------------------------------------------------------- bad input


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in root.iterdir()}


@pytest.mark.parametrize("case", ["vocab", "seq_len", "val_seq_len", "truncated", "batch", "missing"])
def test_bad_input_names_the_file_and_touches_nothing(data: Path, case: str):
    kwargs = dict(seq_len=SEQ, batch_size=3)
    if case == "vocab":
        kwargs["max_token_id"] = 1000
        match = rf"vocab of {data / 'manifest.json'} is {VOCAB} but the model has num_tokens=1000"
    elif case == "seq_len":
        kwargs["seq_len"] = 300
        match = rf"seq_len=300 needs 301 tokens in one shard but split 'train' of {data / 'manifest.json'} has 300"
    elif case == "val_seq_len":
        kwargs["seq_len"] = 100
        match = r"seq_len=100 needs 101 tokens in one shard but split 'val' of .*manifest.json has 100"
    elif case == "truncated":
        with open(data / "train_00001.bin", "r+b") as f:
            f.truncate(100)
        match = rf"shard {data / 'train_00001.bin'} has 100 bytes"
    elif case == "batch":
        kwargs["batch_size"] = 32
        match = r"batch_size=32 x world_size=1 needs 32 windows per step but split 'train' of .* has 31 windows"
    else:
        data = data.parent / "nowhere"
        match = rf"data directory {data} does not exist"
    before = snapshot(data) if data.exists() else None
    with pytest.raises(DataError, match=match):
        GPT4DataModule(data, **kwargs).make_train_loader()
    assert (snapshot(data) if data.exists() else None) == before


def test_shard_truncated_after_setup_is_named(data: Path):
    loader = GPT4DataModule(data, seq_len=SEQ, batch_size=31).make_train_loader()  # every window in one batch
    with open(data / "train_00001.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=rf"shard {data / 'train_00001.bin'} has 100 bytes but its manifest says 240"):
        next(iter(loader))  # found when a reader opens it


def test_readers_keep_a_bounded_number_of_files_open(tmp_path: Path):
    """More shards than a reader may keep open: every window still reads right, and the open files stay at the
    cap (the longest open is closed), so any shard count works under `ulimit -n 1024`."""
    sizes = [2 * SEQ + 1] * 40  # 40 shards of 2 windows each
    data = write_data(tmp_path / "many", sizes, [SEQ + 1])
    dm = GPT4DataModule(data, seq_len=SEQ, batch_size=4, seed=3)
    dm.setup()
    windows = dm.train_windows
    windows.max_open = 8
    ids = np.arange(windows.num_windows)
    got = windows.read(ids)[:, 0].tolist()
    assert got == expected_windows(sizes)
    assert len(windows._files) == 8
    fds = {f.fileno() for f in windows._files.values()}
    assert all(not f.closed for f in windows._files.values()) and len(fds) == 8
    again = windows.read(ids[::-1])[:, 0].tolist()  # reopening closed shards gives the same tokens
    assert again == got[::-1] and len(windows._files) == 8


def test_vocab_within_model_is_accepted(data: Path):
    dm = GPT4DataModule(data, seq_len=SEQ, batch_size=3, max_token_id=VOCAB)
    dm.setup()
    assert dm.manifest.vocab_size == VOCAB


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_epoch_over_a_corpus_larger_than_1gib_keeps_rss_flat(tmp_path: Path):
    shard_tokens, shards = 64 << 20, 9  # 9 x 64 Mi tokens = 576 Mi tokens = 1.125 GiB of uint16
    root = tmp_path / "big"
    root.mkdir()
    listed = []
    for i in range(shards):
        name = f"train_{i:05d}.bin"
        mm = np.memmap(root / name, dtype=np.uint16, mode="w+", shape=(shard_tokens,))
        for start in range(0, shard_tokens, 8 << 20):
            mm[start : start + (8 << 20)] = np.arange(start, start + (8 << 20)) % VOCAB
        mm.flush()
        del mm
        listed.append(Shard(name, shard_tokens, ""))  # no sha256: verify=False checks sizes only
    Manifest("uint16", VOCAB, 0, "tokenizer.json", "", {"train": listed, "val": []}).save(root)

    try:
        loader = GPT4DataModule(root, seq_len=32_768, batch_size=16).make_train_loader()
        base = peak = rss_bytes()
        t0 = time.perf_counter()
        tokens = 0
        for batch in loader:
            tokens += batch.numel()
            peak = max(peak, rss_bytes())
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(root)  # pytest keeps the last runs' tmp dirs: don't leave 1.1 GiB in each
    growth = peak - base
    print(f"epoch over {shards * shard_tokens / 1e6:.0f} M tokens ({shards * shard_tokens * 2 / 2**30:.2f} GiB): "
          f"{tokens / 1e6:.0f} M tokens in {len(loader)} batches, {seconds:.1f} s ({tokens / seconds / 1e6:.0f} M "
          f"tokens/s); RSS {base / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB (growth {growth / 2**20:.0f} MiB)")
    assert tokens == len(loader) * 16 * 32_769 and len(loader) == shards * ((shard_tokens - 1) // 32_768) // 16
    assert growth < 200 << 20
