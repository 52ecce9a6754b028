"""A prepared directory is the contract: train and evaluate from `data.dir` alone, at any shard count; a mixture
of prepared directories logs each source and is evaluated per source."""

import os
import subprocess
import sys

import pytest

from tests.helpers.cli import TINY_MODEL, run, step_metric, train_args


def run_with_open_file_limit(workdir, limit: int, entry: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m gpt4_lightning.<entry>` under `ulimit -n <limit>` (the Linux default soft limit is 1024)."""
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    command = f'ulimit -n {limit} && exec "$0" -m gpt4_lightning.{entry} "$@"'
    return subprocess.run(["bash", "-c", command, sys.executable, *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_and_evaluate_from_a_prepared_dir_alone_with_more_shards_than_open_files(workdir, tmp_path):
    prepared = tmp_path / "prepared"
    run(workdir, "prepare", "data=files", f"data.path={workdir / 'corpus.jsonl'}", "data.shard_tokens=200",
        "data.val_fraction=0.1", "tokenizer.vocab_size=512", f"data.dir={prepared}")
    shards = len(list(prepared.glob("*.bin")))
    limit = 1024
    assert shards > limit + 100, shards  # a reader holding every shard open could not start

    # no data.path, no tokenizer settings: the default data=stdlib inputs are never read, the manifest says it all
    args = [f"data.dir={prepared}", "data.seq_len=64", "data.batch_size=8", "data.num_workers=2", *TINY_MODEL,
            "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
            "checkpoint.every_n_steps=4", "run_name=from_dir", "trainer.enable_progress_bar=false"]
    proc = run_with_open_file_limit(workdir, limit, "train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"using the prepared data in {prepared} as it is" in proc.stdout + proc.stderr
    assert "steps: 4" in proc.stdout

    ckpt = workdir / "outputs" / "from_dir" / "checkpoints" / "last.ckpt"
    proc = run_with_open_file_limit(workdir, limit, "evaluate", f"ckpt_path={ckpt}", "seq_len=64",
                                    "max_batches=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val loss" in proc.stdout and str(prepared) in proc.stdout


@pytest.mark.slow
def test_mixture_logs_each_source_and_evaluate_scores_each(workdir, mix_args):
    name = "mix_logged"
    run(workdir, "train", *mix_args([a for a in train_args(workdir, 20) if not a.startswith("run_name=")]),
        f"run_name={name}")
    run_dir = workdir / "outputs" / name
    web, code = (step_metric(run_dir, f"data/{source}/windows") for source in ("web", "code"))
    assert sorted(web) == sorted(code) == [4, 9, 14, 19]
    for step in web:  # windows drawn by step `step` (0-based): all of the run's, split by the weights
        assert web[step] + code[step] == (step + 1) * 8
    assert abs(code[19] / 160 - 0.25) < 0.05 and step_metric(run_dir, "data/code/epoch")[19] == 0
    val = {key: step_metric(run_dir, key)[19] for key in ("val/loss", "val/web/loss", "val/code/loss")}
    assert abs(val["val/loss"] - (0.75 * val["val/web/loss"] + 0.25 * val["val/code/loss"])) < 1e-5, val

    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    both = run(workdir, "evaluate", ckpt, "max_batches=2", "seq_len=64").stdout
    assert "val web loss" in both and "val code loss" in both and "the mixture's weighted mean" in both, both
    one = run(workdir, "evaluate", ckpt, "max_batches=2", "seq_len=64", "source=code").stdout
    assert "val code loss" in one and "web" not in one, one
