"""The run keys that became groups (`checkpoint.*`, `nonfinite.*`, `eval.*`, `preflight.*`, `report.*`, `metrics.*`,
`parallel.collective_timeout_s`): each old top-level spelling is refused with one `error:` line naming the new key
(in process for every key, and through the real CLI for a single run and a sweep); the new spellings compose."""

import os
import subprocess
import sys

import pytest

from gpt4_lightning.cli.launch import check_renamed_keys
from gpt4_lightning.config import compose_config
from gpt4_lightning.config.schema import RENAMED_KEYS

OLD_VALUES = {"checkpoint_every_n_steps": "5", "keep_last_checkpoints": "2", "nonfinite": "stop",
              "nonfinite_max_consecutive": "3", "eval_tasks": "gpt4l_next_line", "eval_every_n_steps": "5",
              "eval_limit": "4", "preflight": "warn", "preflight_memory_gib": "2", "collective_timeout_s": "30",
              "report_sample_tokens": "0", "peak_tflops": "100"}


def test_every_renamed_key_has_a_case():
    assert set(OLD_VALUES) == set(RENAMED_KEYS)


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_the_old_spelling_is_refused_naming_the_new_key(old, capsys):
    value = OLD_VALUES[old]
    with pytest.raises(SystemExit) as exit_:
        check_renamed_keys("train", ["model=gpt4_tiny", f"{old}={value}"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"error: {old} is now {RENAMED_KEYS[old]}: write {RENAMED_KEYS[old]}={value}"]


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_the_new_spelling_composes(old):
    new = RENAMED_KEYS[old]
    extra = ["eval.tasks=gpt4l_next_line"] if new == "eval.every_n_steps" else []
    cfg = compose_config("train", [f"{new}={OLD_VALUES[old]}", *extra])
    group, key = new.split(".")
    value = cfg[group][key]
    assert value == (type(value)(OLD_VALUES[old]) if isinstance(value, (int, float)) else OLD_VALUES[old])


def test_new_keys_and_other_commands_pass_the_check():
    check_renamed_keys("train", ["checkpoint.every_n_steps=5", "nonfinite.mode=stop", "preflight.mode=off"])
    check_renamed_keys("evaluate", ["limit=3"])  # not a train key


@pytest.mark.parametrize("args", [["checkpoint_every_n_steps=10"], ["-m", "nonfinite=skip,stop"]],
                         ids=["run", "sweep"])
def test_the_cli_refuses_an_old_key_before_anything_is_written(tmp_path, args):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "gpt4_lightning.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: {args[-1].split('=')[0]} is now {RENAMED_KEYS[args[-1].split('=')[0]]}: write "
        f"{RENAMED_KEYS[args[-1].split('=')[0]]}={args[-1].split('=', 1)[1]}"]
    assert list(tmp_path.iterdir()) == []  # no run or sweep directory
