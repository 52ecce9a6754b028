"""lm-evaluation-harness, real and offline: the built-in `gpt4l_next_line` task through lm-eval's own CLI on an
export (`--model hf`, trust_remote_code) and through `evaluate tasks=` on the checkpoint give the same metrics;
lm-eval's per-choice log-likelihoods are our model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from gpt4_lightning.checkpoint.load import load_model
from gpt4_lightning.evals.next_line import TASK
from tests.helpers.cli import run

LIMIT = 24


@pytest.mark.slow
def test_lm_eval_cli_on_the_export_equals_evaluate_tasks_on_the_checkpoint(workdir, tiny_checkpoint, tmp_path):
    tasks_dir, export = tmp_path / "tasks", tmp_path / "export"
    ours = run(workdir, "evaluate", f"ckpt_path={tiny_checkpoint}", f"tasks={TASK}", f"tasks_dir={tasks_dir}",
               f"limit={LIMIT}", f"results_dir={tmp_path / 'ours'}", "max_batches=1")
    assert f"{TASK}: acc " in ours.stdout and "val loss" in ours.stdout, ours.stdout
    (ours_json,) = (tmp_path / "ours").glob("results_step8.json")
    our_metrics = json.loads(ours_json.read_text())["results"][TASK]

    run(workdir, "export", f"ckpt_path={tiny_checkpoint}", f"out={export}")
    cli = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={export},trust_remote_code=True", "--tasks", TASK, "--include_path",
                          str(tasks_dir), "--limit", str(LIMIT), "--batch_size", "8", "--device", "cpu",
                          "--output_path", str(tmp_path / "cli"), "--log_samples"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert cli.returncode == 0, cli.stderr[-4000:]
    (cli_json,) = (tmp_path / "cli").rglob("results_*.json")
    cli_metrics = json.loads(cli_json.read_text())["results"][TASK]
    # evaluate on the export itself (its tokenizer files, no checkpoint) scores the same
    exported = run(workdir, "evaluate", f"ckpt_path={export}", f"tasks={TASK}", f"tasks_dir={tasks_dir}",
                   f"limit={LIMIT}", f"results_dir={tmp_path / 'exported'}")
    (exported_json,) = (tmp_path / "exported").glob("results_step*.json")
    exported_metrics = json.loads(exported_json.read_text())["results"][TASK]
    for metric in ("acc,none", "acc_norm,none"):
        assert cli_metrics[metric] == pytest.approx(our_metrics[metric], abs=1e-9), metric
        assert exported_metrics[metric] == pytest.approx(our_metrics[metric], abs=1e-9), metric
    assert "val loss" not in exported.stdout  # an export has no data split of its own

    # what lm-eval scored is our model: the log-likelihood of each choice after its context
    (samples,) = (tmp_path / "cli").rglob(f"samples_{TASK}_*.jsonl")
    sample = json.loads(samples.read_text().splitlines()[0])
    model, meta = load_model(tiny_checkpoint)
    tokenizer = Tokenizer.from_file(str(Path(meta["data_dir"]) / "tokenizer.json"))
    window = model.config.max_seq_len  # lm-eval keeps the last max_length + 1 tokens of context + continuation
    for choice, resp in zip(sample["doc"]["choices"], sample["resps"], strict=True):
        # lm-eval's pairing: the context's trailing whitespace starts the continuation, and the continuation's
        # tokens are those of the whole text after the context's
        context = sample["doc"]["context"]
        spaces = len(context) - len(context.rstrip())
        context, text = context[: len(context) - spaces], context[len(context) - spaces :] + choice
        whole = tokenizer.encode(context + text).ids
        continuation = whole[len(tokenizer.encode(context).ids) :]
        ids = whole[-(window + 1) :]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
        ll = logprobs[-len(continuation) :].gather(-1, torch.tensor(continuation)[:, None]).sum().item()
        assert float(resp[0][0]) == pytest.approx(ll, abs=1e-3), (choice, resp, ll)


def test_running_tasks_leaves_the_random_generators_as_they_were(tmp_path):
    """lm-eval seeds random, numpy and torch; `run_tasks` (and so the in-training callback) restores them."""
    import random

    import numpy as np

    from gpt4_lightning import GPT4
    from gpt4_lightning.data.config import TokenizerConfig
    from gpt4_lightning.data.prepare.tokenizer import train_bpe
    from gpt4_lightning.evals.harness import run_tasks

    tokenizer = train_bpe(["def f(x):\n    return x + 1\n" * 30], TokenizerConfig(vocab_size=300))
    model = GPT4(num_tokens=300, max_seq_len=128, dim=32, depth=1, dim_head=8, heads=4, alibi_num_heads=2).eval()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    results = run_tasks(model, tokenizer.to_str(), "<|endoftext|>", [TASK], limit=4, tasks_dir=tmp_path)
    assert 0 <= results["results"][TASK]["acc,none"] <= 1
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.random.get_rng_state(), states[2])
