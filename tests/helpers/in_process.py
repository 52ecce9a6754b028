"""Many CLI commands in one Python process: `python -m tests.helpers.in_process <cases.json> <results.json>`.

Each case is `{"id", "entry", "args"}`; it runs `gpt4_lightning.cli.<entry>.main()` with `sys.argv` set as
`python -m gpt4_lightning.<entry> <args>` would, its stdout and stderr captured, and records the exit status
(`SystemExit`'s code; 0 on return; 3 and the traceback on stderr for any other exception). What one command
leaves in the process is undone before the next: Hydra's global state, the working directory, the environment,
the root logger's handlers, signal handlers, a default process group. A CLI start costs seconds of imports:
paid once here instead of once per command. What this cannot see is output written to file descriptor 2 by C
code, so each entry point keeps at least one case through the real CLI (`tests.helpers.cli.run`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def run_case(entry: str, args: list[str]) -> dict[str, Any]:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    cwd, environ = os.getcwd(), dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    argv, sys.argv = sys.argv, [f"gpt4_lightning.{entry}", *args]
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                importlib.import_module(f"gpt4_lightning.cli.{entry}").main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)  # sys.exit("message") prints it, as the interpreter does
            except BaseException:  # a traceback is what a case must not show: record it
                code = 3
                traceback.print_exc()
    finally:
        sys.argv = argv
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        _destroy_process_group()
        GlobalHydra.instance().clear()
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": time.perf_counter() - start}


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    cases_file, results_file = sys.argv[1:3]
    with open(cases_file) as f:
        cases = json.load(f)
    results = {case["id"]: run_case(case["entry"], case["args"]) for case in cases}
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
