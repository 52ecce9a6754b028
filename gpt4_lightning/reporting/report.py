"""`report.md` + `report.png` of a run directory: its curves, summary figures, the config that differs from the
defaults, and a sample from its last checkpoint. Written at the end of `train` and by `python -m
gpt4_lightning.report <run dir>` for any run (running, interrupted, any logger: each keeps `logs/metrics.csv`)."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gpt4_lightning.checkpoint.paths import LAST, checkpoint_dir, step_of
from gpt4_lightning.reporting.history import History, read_history

log = logging.getLogger(__name__)

REPORT_MD, REPORT_PNG = "report.md", "report.png"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_changes(run_dir: Path) -> list[tuple[str, Any, Any]]:
    """(key, this run's value, the default's) for every key of the run's `.hydra/config.yaml` that differs from
    `conf/train.yaml` composed without overrides (both unresolved, so `${...}` compare as written)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return []
    from gpt4_lightning.config.hydra import default_config

    run = flatten(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    default = flatten(OmegaConf.to_container(default_config("train"), resolve=False))
    return [(k, run.get(k, "(absent)"), default.get(k, "(absent)")) for k in sorted(set(run) | set(default))
            if run.get(k, "(absent)") != default.get(k, "(absent)")]


def sample_text(run_dir: Path, max_new_tokens: int, device: str = "cpu") -> str | None:
    """`max_new_tokens` sampled (temperature 0.8, top-k 50, seed 0) from the run's last checkpoint, starting a new
    document (the EOS token as the prompt); None without a checkpoint."""
    last = checkpoint_dir(run_dir) / LAST
    if max_new_tokens < 1 or not last.exists():
        return None
    import torch

    from gpt4_lightning.checkpoint.load import load_model
    from gpt4_lightning.data.prepare.tokenizer import tokenizer_and_eos

    # a sample, not a resume: verifying would read the optimizer state too (a sharded checkpoint's 2/3)
    model, meta = load_model(last, device, check_sums=False)
    tokenizer, eos = tokenizer_and_eos(meta["data_dir"], None)
    prompt = torch.tensor([[eos if eos is not None else 0]], device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    new = model.generate(prompt, max_new_tokens, temperature=0.8, top_k=50, generator=generator)
    return tokenizer.decode(new[0].tolist())


def _median_last_half(history: History, name: str) -> float | None:
    if name not in history or not len(history[name].values):
        return None
    values = history[name].values
    return float(statistics.median(values[len(values) // 2:]))


def summary_rows(history: History, unigram_entropy: float | None, run_dir: Path) -> list[tuple[str, str]]:
    last = checkpoint_dir(run_dir) / LAST
    saved = step_of(last) if last.exists() else None  # the newest checkpoint's step, from its name
    rows = [("optimizer steps", f"{saved:,} (last checkpoint)" if saved is not None else
             f"{history.last_step + 1:,} or more (no checkpoint yet)")]
    if "perf/tokens_seen" in history:
        rows.append(("tokens seen", f"{history['perf/tokens_seen'].last:,.0f}"))
    for name, label in (("train/loss", "last train loss"), ("val/loss", "last val loss")):
        if name in history:
            s = history[name]
            rows.append((label, f"{s.last:.4f} nats/token at step {int(s.steps[-1]):,}"))
    if unigram_entropy is not None:
        rows.append(("unigram entropy of the train data", f"{unigram_entropy:.4f} nats/token"))
    for name, label, fmt in (("perf/tokens_per_s", "tokens/s (median, 2nd half)", "{:,.0f}"),
                             ("perf/mfu", "MFU (median, 2nd half)", "{:.1%}")):
        value = _median_last_half(history, name)
        if value is not None:
            rows.append((label, fmt.format(value)))
    if "mem/peak_gib" in history:
        rows.append(("peak memory (max over ranks)", f"{history['mem/peak_gib'].values.max():.2f} GiB"))
    if "train/grad_norm" in history:
        rows.append(("last grad norm", f"{history['train/grad_norm'].last:.3f}"))
    skipped = history["train/nonfinite_steps"].last if "train/nonfinite_steps" in history else 0
    rows.append(("skipped non-finite steps", f"{skipped:.0f}"))
    return rows


def write_report(run_dir: str | Path, sample_tokens: int = 64, device: str = "cpu") -> Path:
    """Write `run_dir/report.md` and (with matplotlib) `run_dir/report.png`; returns the markdown's path."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    entropy = history["data/unigram_entropy"].last if "data/unigram_entropy" in history else None
    lines = [f"# Run report: {run_dir.name}", "", f"Run directory: `{run_dir.resolve()}`", ""]
    if not history.series:
        lines += ["No metrics logged yet (`logs/metrics.csv` is missing or empty: `logger=none`, or the run has "
                  "not reached its first logging step).", ""]
    else:
        try:
            from gpt4_lightning.reporting.figure import plot_report

            plot_report(history, run_dir / REPORT_PNG, f"{run_dir.name}: step {history.last_step:,}", entropy)
            lines += [f"![curves]({REPORT_PNG})", ""]
        except ImportError:
            log.warning("report.png not written: matplotlib is missing (pip install -e '.[report]')")
        lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary_rows(history, entropy, run_dir)), ""]
    changes = config_changes(run_dir)
    lines += ["## Config that differs from the defaults", ""]
    if changes:
        lines += ["| key | this run | default |", "|---|---|---|",
                  *(f"| `{k}` | `{v}` | `{d}` |" for k, v, d in changes)]
    else:
        lines.append("None (or no `.hydra/config.yaml` in the run directory).")
    lines.append("")
    sample = sample_text(run_dir, sample_tokens, device)
    if sample is not None:
        lines += [f"## A sample from `checkpoints/{LAST}`", "", "(a new document: the EOS token as the prompt, "
                  f"{sample_tokens} tokens, temperature 0.8, top-k 50, seed 0)", "", "```", sample, "```", ""]
    path = run_dir / REPORT_MD
    path.write_text("\n".join(lines))
    return path
