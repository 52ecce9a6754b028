"""This process's resident memory on CPU: what `callbacks.PeakMemory` compares with the plan on CPU runs.
Linux reads /proc/self/status (VmRSS, VmHWM); elsewhere only the peak since the process started is known."""

from __future__ import annotations

import sys


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """This process's resident set size in bytes (Linux; 0 elsewhere)."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS in bytes since the last `reset_peak_rss` (VmHWM), else since the process started."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
