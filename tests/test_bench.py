"""Smoke test of bench/model_throughput.py: the --quick run completes and writes its report."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt4_lightning import GPT4

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_model_throughput_quick(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "bench/model_throughput.py", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model" in proc.stdout and "tokens/s" in proc.stdout and "vs xt_model" in proc.stdout

    report = json.loads(out.read_text())
    medians = report["medians"]
    # the quick config (bench/model_throughput.py QUICK): the same architecture in all three, built here too
    quick = GPT4(num_tokens=256, max_seq_len=64, dim=64, depth=2, dim_head=16, heads=4, alibi_num_heads=2)
    n_params = sum(p.numel() for p in quick.parameters())
    for name in ("gpt4", "xt_model", "xt_arwrapper"):
        m = medians[name]
        assert m["params"] == n_params, (name, m["params"], n_params)
        assert 0 < m["tokens_per_s_min"] <= m["tokens_per_s_median"] <= m["tokens_per_s_max"]
        # peak RSS growth in MiB over building and 3 AdamW steps of a 0.1M-parameter model: above nothing,
        # below 512 MiB (a count in bytes or KiB would be far above)
        assert 0 < m["peak_mib"] < 512, (name, m["peak_mib"])
    ratios = report["ratios"]
    for ref in ("xt_model", "xt_arwrapper"):
        assert ratios[f"gpt4_vs_{ref}_tokens_per_s"] == pytest.approx(
            medians["gpt4"]["tokens_per_s_median"] / medians[ref]["tokens_per_s_median"], rel=1e-9)
    assert ratios["gpt4_vs_xt_model_peak_mem"] == pytest.approx(
        medians["gpt4"]["peak_mib"] / medians["xt_model"]["peak_mib"], rel=1e-9)
    assert report["config"]["seq"] == 64 and report["machine"]["cpu_count"] >= 1
    assert len(report["rounds"]) == 1


def test_attention_kernels_quick(tmp_path):
    out = tmp_path / "attn.json"
    proc = subprocess.run([sys.executable, "bench/attention_kernels.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flex_alibi" in proc.stdout and "flex_alibi_ms_vs_sdpa_causal" in proc.stdout
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"flex_alibi", "sdpa_causal", "sdpa_alibi_dense"}
    assert results["flex_alibi"]["pass"] == "fwd" and results["sdpa_causal"]["pass"] == "fwd+bwd"  # CPU: no flex bwd
    assert results["flex_alibi"]["max_abs_diff_vs_alibi"] < 1e-4  # the same ALiBi attention as the dense path
    assert all(r["ms"] > 0 for r in results.values()) and report["ratios"]["flex_alibi_ms_vs_sdpa_causal"] > 0


@pytest.mark.slow
def test_data_throughput_against_a_baseline_tree(tmp_path):
    """bench/data_throughput.py on a small prepared directory, with this checkout as its own baseline: every
    reader row is there, the baseline tree's DataModule is read in the same run, and the ratios are its rows'."""
    from gpt4_lightning.data.shards import Manifest, ShardWriter

    data = tmp_path / "data"
    data.mkdir()
    splits = {}
    for split, tokens in (("train", 200_000), ("val", 5_000)):
        writer = ShardWriter(data, split, np.dtype(np.uint16), 60_000)
        writer.add(np.arange(tokens) % 1000)
        splits[split] = writer.close()
    Manifest("uint16", 1000, 0, "tokenizer.json", "", splits).save(data)
    out = tmp_path / "d.json"
    proc = subprocess.run(
        [sys.executable, "bench/data_throughput.py", "--data-dir", str(data), "--repeat", "2", "--seq-len", "64",
         "--baseline-tree", str(REPO), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["read"]
    assert set(rows) == {"raw_memmap_sequential", "raw_memmap_windows", "datamodule_0_workers",
                         "datamodule_2_workers", "baseline_datamodule_0_workers", "baseline_datamodule_2_workers",
                         "datamodule_mix4_0_workers", "datamodule_mix4_2_workers"}
    windows = (60_000 - 1) // 64 * 3 + (20_000 - 1) // 64  # shards of 60k, 60k, 60k, 20k tokens
    for name in ("datamodule_0_workers", "baseline_datamodule_0_workers", "datamodule_mix4_0_workers"):
        assert rows[name]["tokens"] == (windows // 8 - 1) * 8 * 65  # whole batches of 8, after the first
        assert len(rows[name]["pass_seconds"]) == 2 and rows[name]["seconds"] == min(rows[name]["pass_seconds"])
    for w in (0, 2):
        ours, theirs = rows[f"datamodule_{w}_workers"], rows[f"baseline_datamodule_{w}_workers"]
        assert ours["vs_baseline"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"], rel=1e-9)
        paired = sorted(b / a for a, b in zip(ours["pass_seconds"], theirs["pass_seconds"], strict=True))
        assert ours["vs_baseline_paired_median"] == pytest.approx((paired[0] + paired[1]) / 2, rel=1e-9)
    assert "vs baseline" in proc.stdout and "(vs one source)" in proc.stdout
    mixed = rows["datamodule_mix4_2_workers"]
    assert mixed["vs_single_source"] == pytest.approx(
        mixed["tokens_per_s"] / rows["datamodule_2_workers"]["tokens_per_s"], rel=1e-9)
