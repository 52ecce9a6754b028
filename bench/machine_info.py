"""What every benchmark's JSON report records about the machine it ran on (BENCHMARKS.md quotes it)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model, core count, torch's thread count, versions; `device`: the GPU's name when it is CUDA,
    else the CPU's."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    on_gpu = device is not None and device.type == "cuda"
    return dict(device=torch.cuda.get_device_name(device) if on_gpu else cpu, cpu=cpu, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                platform=platform.platform())


def write_report(out: Path, report: dict[str, Any]) -> None:
    """A benchmark's JSON report (bench/results/ by default)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
