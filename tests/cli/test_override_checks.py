"""Bad overrides on the train command line (cli/launch.py's pre-checks and the config's): a non-zero exit naming the
key, no traceback. Real CLI runs in subprocesses."""

import pytest

from tests.helpers.cli import run


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
