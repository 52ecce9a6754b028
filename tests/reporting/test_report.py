"""The run report (`reporting`): what it reads back, what it writes, and the `report` command; in process and through
the real CLI (subprocesses) on the tiny checkpoint."""

import csv
import math

import numpy as np
import pytest

from gpt4_lightning.data.prepare.stats import token_counts, unigram_entropy
from gpt4_lightning.data.shards import Manifest
from gpt4_lightning.reporting.history import read_history
from tests.helpers.cli import run


def test_the_end_of_run_report_matches_the_command_and_the_run(workdir, tiny_checkpoint):
    run_dir = tiny_checkpoint.parent.parent
    written_by_train = (run_dir / "report.md").read_text()
    assert "| optimizer steps | 8 (last checkpoint) |" in written_by_train
    # the config that differs from conf/train.yaml: the test's overrides, each with the default beside it
    assert "| `trainer.max_steps` | `8` | `600` |" in written_by_train
    assert "| `model.dim` | `64` | `256` |" in written_by_train
    assert "| `optim.lr` | `0.003` | `0.001` |" in written_by_train
    assert "`data.path`" in written_by_train and "`trainer.accelerator`" not in written_by_train
    assert "## A sample from `checkpoints/last.ckpt`" in written_by_train
    png = (run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (run_dir / "report.md").unlink()
    proc = run(workdir, "report", str(run_dir), "--sample-tokens", "64")
    assert proc.stdout.splitlines()[0] == f"report: {run_dir / 'report.md'}"
    assert (run_dir / "report.md").read_text() == written_by_train  # same history, same seeded sample


def test_unigram_entropy_is_the_datas_and_is_logged(tiny_checkpoint):
    from gpt4_lightning.checkpoint.load import load_model

    _, meta = load_model(tiny_checkpoint)
    data_dir = meta["data_dir"]
    manifest = Manifest.load(data_dir)
    tokens = np.concatenate([np.asarray(m) for m in manifest.memmaps(data_dir, "train")])
    p = np.bincount(tokens) / len(tokens)
    exact = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert unigram_entropy([(data_dir, 1.0)]) == pytest.approx(exact, rel=1e-12)  # the sample holds it all
    logged = read_history(tiny_checkpoint.parent.parent)["data/unigram_entropy"].last
    assert logged == pytest.approx(exact, rel=1e-6)
    assert 0 < exact < math.log(manifest.vocab_size)
    # bounded: a small budget reads at most that many tokens, spread over the shards
    assert 0 < token_counts(data_dir, manifest, max_tokens=1000).sum() <= 1000


def test_mixture_entropy_weights_each_sources_frequencies(tmp_path):
    from gpt4_lightning.data.shards import Shard, SplitShards

    for name, tokens in (("a", [0, 0, 1, 1]), ("b", [2, 2, 2, 2])):
        (tmp_path / name).mkdir()
        np.asarray(tokens, dtype=np.uint16).tofile(tmp_path / name / "train_00000.bin")
        Manifest(dtype="uint16", vocab_size=4, eos_id=3, tokenizer_file="tokenizer.json", tokenizer_sha256="",
                 splits={"train": SplitShards.of("train", [Shard("train_00000.bin", 4, "")])}).save(tmp_path / name)
    # 0.75 of a (tokens 0, 1 at 1/2 each) + 0.25 of b (token 2): p = 3/8, 3/8, 1/4
    expected = -(2 * 3 / 8 * math.log(3 / 8) + 1 / 4 * math.log(1 / 4))
    assert unigram_entropy([(tmp_path / "a", 0.75), (tmp_path / "b", 0.25)]) == pytest.approx(expected)


def test_history_keeps_the_resumed_rows_and_maps_steps_to_tokens(tmp_path):
    (tmp_path / "logs").mkdir()
    rows = [{"step": 0, "train/loss": 9.0, "perf/tokens_seen": 100}, {"step": 1, "train/loss": 8.0},
            {"step": 2, "train/loss": 7.0, "perf/tokens_seen": 300},
            {"step": 1, "train/loss": 7.5}, {"step": 2, "train/loss": 6.5, "perf/tokens_seen": 300},  # resumed
            {"step": 2, "val/loss": 6.9}]
    with open(tmp_path / "logs" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "train/loss", "val/loss", "perf/tokens_seen"])
        writer.writeheader()
        writer.writerows(rows)
    history = read_history(tmp_path)
    assert history["train/loss"].steps.tolist() == [0, 1, 2]
    assert history["train/loss"].values.tolist() == [9.0, 7.5, 6.5]  # the later row of a step wins
    assert history["val/loss"].values.tolist() == [6.9] and history.last_step == 2
    assert history.tokens_at(np.array([0, 1, 2, 4])).tolist() == [100, 200, 300, 600]


def test_report_command_errors_and_a_run_without_metrics(workdir, tmp_path):
    proc = run(workdir, "report", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} does not exist; pass a directory that `python -m gpt4_lightning.train` wrote "
        "(outputs/<run>)"]
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # a run killed before its first logging step
    run(workdir, "report", str(tmp_path / "run"))
    text = (tmp_path / "run" / "report.md").read_text()
    assert "No metrics logged yet" in text and not (tmp_path / "run" / "report.png").exists()
