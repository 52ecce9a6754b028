"""The bench/ scripts' --quick runs (model throughput, attention kernels, gpu_check on CPU, data throughput against a
baseline tree, learning parity, document mask), each in a subprocess: they complete and write consistent reports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt4_lightning import GPT4
from tests.helpers.paths import REPO


@pytest.mark.slow
def test_model_throughput_quick(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "bench/model_throughput.py", "--quick", "--document-mask", "--out", str(out)],
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
    assert ratios["gpt4_document_mask_vs_gpt4_tokens_per_s"] == pytest.approx(
        medians["gpt4_document_mask"]["tokens_per_s_median"] / medians["gpt4"]["tokens_per_s_median"], rel=1e-9)
    assert "document masking:" in proc.stdout
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
def test_gpu_check_quick_cpu_runs_every_step_and_one_failure_keeps_the_others(tmp_path):
    """bench/gpu_check.py --quick --cpu (what a GPU machine runs, at tiny shapes): every step ok, its figures in the
    JSON; then with the training step made to fail (the data cache is a file), the other steps' figures are kept
    and the command exits 1."""
    out = tmp_path / "gc.json"
    cmd = [sys.executable, "bench/gpu_check.py", "--quick", "--cpu", "--out", str(out)]
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["attention", "model", "train_tiny_fsdp"] and {s["status"] for s in steps.values()} == {"ok"}
    assert steps["model"]["figures"]["fp32"]["ok"] and steps["model"]["figures"]["bf16_autocast"]["ok"]
    train = steps["train_tiny_fsdp"]["figures"]
    assert train["tokens_per_s"] > 0 and train["planned_peak_gib"] > 0 and train["peak_gib"] > 0
    (tmp_path / "not_a_dir").write_text("")
    env["GPT4_LIGHTNING_CACHE"] = str(tmp_path / "not_a_dir")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    steps = json.loads(out.read_text())["steps"]
    assert proc.returncode == 1 and steps["train_tiny_fsdp"]["status"] == "failed", proc.stdout[-2000:]
    assert steps["attention"]["status"] == steps["model"]["status"] == "ok"


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


@pytest.mark.slow
def test_learning_parity_quick(tmp_path):
    """bench/learning_parity.py --quick: both models train, the table and the per-seed ratios are written."""
    out = tmp_path / "lp.json"
    proc = subprocess.run([sys.executable, "bench/learning_parity.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ratio of means" in proc.stdout
    report = json.loads(out.read_text())
    assert {r["model"] for r in report["runs"]} == {"gpt4", "x_transformers"}
    for per_len in report["summary"].values():
        for s in per_len.values():
            ours, theirs = s["gpt4"]["mean"], s["x_transformers"]["mean"]
            assert 0 < ours < 6 and 0 < theirs < 6  # nats per byte, below ln 256 + a bit
            assert s["ratio_of_means"] == pytest.approx(ours / theirs, rel=1e-9)


@pytest.mark.slow
def test_document_mask_quick(tmp_path):
    """bench/document_mask.py --quick: both builders run in their own processes; the report has each row and the
    compiled / eager ratio computed from them."""
    out = tmp_path / "dm.json"
    proc = subprocess.run([sys.executable, "bench/document_mask.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = report["results"]
    assert set(rows) == {"eager_256", "compiled_256"} and all(r["ms"] > 0 for r in rows.values())
    assert report["ratios"]["compiled_vs_eager_ms_256"] == pytest.approx(
        rows["compiled_256"]["ms"] / rows["eager_256"]["ms"], rel=1e-9)


@pytest.mark.slow
def test_checkpoint_io_quick(tmp_path):
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, "bench/checkpoint_io.py", "--quick", "--root", str(tmp_path),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    medians, ratios = report["medians_s"], report["ratios"]
    for row in ("save_torch", "save_lightning", "save_verified", "stall_async", "async_write", "load_torch",
                "load_verified", "dcp_save", "dcp_save_verified", "dcp_stall_async", "dcp_async_write", "dcp_verify"):
        assert medians[row] > 0 and f"{row} " in proc.stdout, row
    assert ratios["save_verified_vs_torch"] == pytest.approx(medians["save_verified"] / medians["save_torch"])
    assert ratios["stall_async_vs_sync"] == pytest.approx(medians["stall_async"] / medians["save_verified"])
    assert set(report["peak_rss_above_state_mib"]) == {"peak_rss_sync_mib", "peak_rss_async_mib"}
    from gpt4_lightning.config import compose_config, to_typed

    with torch.device("meta"):  # gpt4_tiny's weights and two AdamW moments, fp32, and each tensor's step count
        tiny = GPT4.from_config(to_typed(compose_config("train", ["model=gpt4_tiny"])).model).state_dict()
    assert report["bytes"] == 3 * 4 * sum(t.numel() for t in tiny.values()) + 4 * len(tiny)
    assert [r["gpus"] for r in report["formula"]] == [8, 512] and report["formula"][0]["sync_stall_s"] > 29
    assert list(tmp_path.iterdir()) == [out]  # the checkpoints removed
