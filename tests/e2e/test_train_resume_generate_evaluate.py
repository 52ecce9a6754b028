"""End to end through the real CLI, in subprocesses: train, resume, generate, evaluate (their numbers checked against
the checkpoint in process), and a run with document masking."""

import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import logged_losses, run, train_args


@pytest.mark.slow
def test_train_resume_generate_evaluate(workdir):
    first = run(workdir, "train", *train_args(workdir, 40))
    run_dir = workdir / "outputs" / "tiny"
    assert f"run directory: {run_dir}" in first.stdout and "ckpt_path=last" in first.stdout
    losses = logged_losses(run_dir)
    assert losses[-1][1] < losses[0][1] - 0.5, losses  # it learns (from ~ln 512 = 6.2)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 40
    assert (run_dir / "checkpoints" / "step000020.ckpt").exists() and (run_dir / ".hydra" / "config.yaml").exists()

    resumed = run(workdir, "train", *train_args(workdir, 60), "ckpt_path=last")
    assert "steps: 60" in resumed.stdout
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert torch.load(last, weights_only=True)["global_step"] == 60
    steps = [s for s, _ in logged_losses(run_dir)]
    assert max(steps) >= 55 and min(s for s in steps if s > 40) <= 45  # continued at 40, not from 0
    assert min(steps) < 10 and len([s for s in steps if s <= 40]) >= 8  # the first run's rows are kept

    sample = run(workdir, "generate", f"ckpt_path={last}", "max_new_tokens=24", "prompt=def fib(n):")
    assert "--- sample 0 (step 60) ---" in sample.stdout and "def fib(n):" in sample.stdout
    evaluated = run(workdir, "evaluate", f"ckpt_path={last}", "seq_len=64", "max_batches=4")
    assert "val loss" in evaluated.stdout and "perplexity" in evaluated.stdout
    check_evaluate_and_greedy_generate(workdir, last, evaluated.stdout)


def check_evaluate_and_greedy_generate(workdir, last, evaluate_stdout: str) -> None:
    """The evaluate CLI's numbers and a greedy generate CLI's text against the same checkpoint in this process:
    the mean loss over the same validation windows (each window's loss computed on its own), its exp, and the
    greedy continuation by full forward passes (no KV cache) decoded with the run's tokenizer."""
    from tokenizers import Tokenizer

    from gpt4_lightning.checkpoint.load import load_model
    from gpt4_lightning.data.shards import Manifest
    from gpt4_lightning.data.stream.datamodule import GPT4DataModule

    model, meta = load_model(last)
    data_dir = meta["data_dir"]
    line = r"^val loss (\d+\.\d{4})  perplexity (\d+\.\d{2})  \((\d+) windows of 64 tokens, (.+), step 60\)$"
    found = re.search(line, evaluate_stdout, re.MULTILINE)
    assert found, evaluate_stdout
    loss, ppl, windows = float(found[1]), float(found[2]), int(found[3])
    assert found[4] == str(data_dir)
    datamodule = GPT4DataModule(data_dir, seq_len=64, batch_size=8, max_token_id=model.config.num_tokens)
    datamodule.setup("validate")
    batches = list(itertools.islice(datamodule.make_val_loader(), 4))  # evaluate's batch_size=8, max_batches=4
    with torch.no_grad():
        per_window = [model.loss(window[None]).item() for batch in batches for window in batch]
    assert windows == len(per_window) == 32
    expected = sum(per_window) / len(per_window)
    assert 0.5 < expected < math.log(512)  # trained: below the uniform guess
    assert loss == pytest.approx(expected, abs=5e-5 + 1e-5)  # printed to 4 decimals; float32 sums differ ~1e-6
    assert ppl == pytest.approx(math.exp(expected), abs=5e-3 + 1e-4 * math.exp(expected))

    prompt = "def fib(n):"
    greedy = run(workdir, "generate", f"ckpt_path={last}", "max_new_tokens=24", f"prompt={prompt}", "temperature=0")
    header = "--- sample 0 (step 60) ---\n"
    assert header in greedy.stdout
    text = greedy.stdout.split(header, 1)[1].removesuffix("\n")
    manifest = Manifest.load(data_dir)
    tokenizer = Tokenizer.from_file(str(Path(data_dir) / manifest.tokenizer_file))
    seq = torch.tensor([tokenizer.encode(prompt).ids])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(24):
            token = int(model(seq)[0, -1].argmax())
            if token == manifest.eos_id:  # stop_at_eos=true
                break
            new.append(token)
            seq = torch.cat((seq, torch.tensor([[token]])), dim=1)
    assert new, "the greedy continuation starts with EOS: nothing to compare"
    assert text == prompt + tokenizer.decode(new), (text, new)


@pytest.mark.slow
def test_document_mask_trains_through_the_cli(workdir):
    proc = run(workdir, "train", *train_args(workdir, 4), "run_name=docmask", "data.document_mask=true",
               "trainer.val_check_interval=4")
    assert "document masking on" in proc.stderr + proc.stdout
    with open(workdir / "outputs" / "docmask" / "logs" / "metrics.csv") as f:
        assert "val/loss" in f.readline()
