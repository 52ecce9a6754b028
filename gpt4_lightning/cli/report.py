"""`python -m gpt4_lightning.report <run dir> [--sample-tokens N] [--device cpu|cuda]`: write `report.md` and
`report.png` into a run directory (`reporting.report`): any run, also a running or interrupted one.

A run directory, not a Hydra config: the one argument is a path, so this entry point takes plain arguments.
Bad input exits with status 1 and one `error:` line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt4_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a train run directory (outputs/<run>, or a sweep job's multirun/.../<n>)")
    parser.add_argument("--sample-tokens", type=int, default=64, help="tokens sampled from last.ckpt (0: none)")
    parser.add_argument("--device", default="cpu", help="where the sample is generated (default cpu)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / ".hydra").is_dir() and not (run_dir / "logs").is_dir():
        what = "does not exist" if not run_dir.exists() else "is not a train run directory (no .hydra/ or logs/)"
        print(f"error: {run_dir} {what}; pass a directory that `python -m gpt4_lightning.train` wrote "
              "(outputs/<run>)", file=sys.stderr)
        sys.exit(1)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: the report's figure needs matplotlib, which this install lacks; pip install -e '.[report]' "
              "(or '.[dev]')", file=sys.stderr)
        sys.exit(1)
    from gpt4_lightning.reporting.report import write_report
    from gpt4_lightning.training.devices import pick_device

    try:
        path = write_report(run_dir, args.sample_tokens, str(pick_device(args.device)))
    except ValueError as e:  # a damaged checkpoint or data directory: its message names the file and the fix
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"report: {path}")
    print(f"figure: {path.with_name('report.png')}")


if __name__ == "__main__":
    main()
