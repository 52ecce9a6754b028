"""End to end through the real CLI, in subprocesses: train, resume, generate, evaluate, bad overrides."""


import pytest
import torch
from conftest import logged_losses, run, train_args


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


@pytest.mark.parametrize(("args", "message"), [
    (["model=nope"], "model/nope"),
    (["model.dimm=3"], "model.dimm"),
    (["+model.dimm=3"], "dimm"),
    (["model.heads=abc"], "model.heads"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["model.heads=2"], "alibi_num_heads=4"),
    (["data.seq_len=512"], "model.max_seq_len=256"),
    (["ckpt_path=last", "run_name=never_ran"], "no checkpoint"),
])
def test_bad_overrides_exit_nonzero_naming_the_key(workdir, args, message):
    proc = run(workdir, "train", "trainer.max_steps=1", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("prompt", ["def fib(n):", "it's", "a\\b", "end\\", 'say "hi"', "x='1'", "a\\'b", ""])
def test_prompt_is_passed_through_hydra_verbatim(prompt):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gpt4_lightning.cli.generate import quote_prompt

    (arg,) = quote_prompt([f"prompt={prompt}"])
    assert OverridesParser.create().parse_override(arg).value() == prompt
