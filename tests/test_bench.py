"""Smoke test of bench/model_throughput.py: the --quick run completes and writes its report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    for name in ("gpt4", "xt_model", "xt_arwrapper"):
        assert report["medians"][name]["tokens_per_s_median"] > 0
        assert report["medians"][name]["peak_mib"] >= 0
    for key in ("gpt4_vs_xt_model_tokens_per_s", "gpt4_vs_xt_arwrapper_tokens_per_s",
                "gpt4_vs_xt_model_peak_mem"):
        assert report["ratios"][key] > 0
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
