"""The checked sweeper (cli/sweep.py): a Hydra multirun is checked whole, every point, before any job starts; one
bad point (a bad value, a point too big for the memory preflight) is one `error:` line. Real CLI, subprocesses."""

from tests.helpers.cli import run, train_args


def test_a_bad_sweep_point_stops_the_sweep_before_any_job(workdir):
    sweep = workdir / "multirun" / "checked_sweep"
    proc = run(workdir, "train", "-m", *train_args(workdir, 2), f"hydra.sweep.dir={sweep}",
               "optim.lr=1e-3,-1,3e-3", check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: #1 (") and "optim.lr=-1" in lines[0], proc.stderr
    assert "must be a number > 0" in lines[0] and "no job of the sweep was launched" in lines[0]
    assert not sweep.exists() and "Launching" not in proc.stdout  # nothing ran, nothing was written
    # a point too big for its memory is found the same way, by the preflight
    proc = run(workdir, "train", "-m", *train_args(workdir, 2), f"hydra.sweep.dir={sweep}",
               "preflight.memory_gib=100,0.01", check=False)
    assert proc.returncode == 1 and "error: #1 (preflight.memory_gib=0.01" in proc.stderr, proc.stderr[-3000:]
    assert "preflight: this run's memory plan is" in proc.stderr
    assert not sweep.exists()
