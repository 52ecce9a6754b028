"""`report.png`: a run's curves on one page (matplotlib, the `report` extra; no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt4_lightning.reporting.history import History, Series


def _tokens_axis(history: History, series: Series) -> tuple[np.ndarray, str]:
    """x for a loss curve: tokens seen (millions/billions as fits) where logged, else optimizer steps."""
    tokens = history.tokens_at(series.steps)
    if tokens is None:
        return series.steps.astype(float), "optimizer step"
    top = float(np.nanmax(tokens)) if len(tokens) else 0.0
    scale, unit = (1e9, "billions") if top >= 1e9 else (1e6, "millions") if top >= 1e6 else (1e3, "thousands")
    return tokens / scale, f"tokens seen ({unit})"


def smoothed(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    """Exponential moving average, debiased (as TensorBoard's smoothing): the trend of a noisy per-batch loss."""
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def _panel(ax, history: History, names: list[tuple[str, str]], title: str, ylabel: str, log_y: bool = False,
           absent: str = "not logged") -> None:
    drawn = False
    for name, label in names:
        if name in history and len(history[name].steps):
            s = history[name]
            ax.plot(s.steps, s.values, label=label, marker="o" if len(s.steps) < 8 else None, markersize=3)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn and log_y:
        ax.set_yscale("log")
    if drawn and len(names) > 1:
        ax.legend(fontsize=8)
    if not drawn:
        ax.text(0.5, 0.5, absent, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_report(history: History, path: str | Path, title: str, unigram_entropy: float | None) -> None:
    """Six panels: loss against tokens seen (train, val, the unigram entropy as a reference), learning rate,
    throughput (tokens/s; MFU on the right axis where known), peak memory, gradient norm, skipped steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    fig.suptitle(title, fontsize=11)

    ax = axes[0, 0]
    drawn = []
    if "train/loss" in history and len(history["train/loss"].steps):
        train = history["train/loss"]
        x, xlabel = _tokens_axis(history, train)
        ax.plot(x, train.values, color="tab:blue", alpha=0.3, label="train (per logged step)")
        ax.plot(x, smoothed(train.values), color="tab:blue", label=f"train, smoothed (last {train.last:.3f})")
        drawn.append(xlabel)
    if "val/loss" in history and len(history["val/loss"].steps):
        val = history["val/loss"]
        x, xlabel = _tokens_axis(history, val)
        ax.plot(x, val.values, "o-", color="tab:orange", label=f"val (last {val.last:.3f})", markersize=4)
        drawn.append(xlabel)
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="gray", linestyle="--", label=f"unigram entropy {unigram_entropy:.2f}")
    ax.set_title("loss")
    ax.set_xlabel(drawn[0] if drawn else "tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    _panel(axes[0, 1], history, [("train/lr", "lr")], "learning rate", "learning rate")
    ax = axes[0, 2]
    _panel(ax, history, [("perf/tokens_per_s", "tokens/s")], "throughput (all ranks)", "tokens/s")
    if "perf/mfu" in history:
        mfu = history["perf/mfu"]
        right = ax.twinx()
        right.plot(mfu.steps, mfu.values * 100, color="tab:orange", label="MFU")
        right.set_ylabel("MFU (%)", color="tab:orange")
    _panel(axes[1, 0], history, [("mem/peak_gib", "peak"), ("mem/reserved_gib", "reserved (CUDA)")],
           "peak memory (max over ranks)", "GiB")
    if "mem/peak_gib" in history:
        axes[1, 0].set_ylim(0, history["mem/peak_gib"].values.max() * 1.15)
    _panel(axes[1, 1], history, [("train/grad_norm", "grad norm")], "gradient norm (before clipping)", "L2 norm",
           log_y=True)
    _panel(axes[1, 2], history, [("train/nonfinite_steps", "skipped")], "skipped non-finite steps (cumulative)",
           "steps", absent="none skipped")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
