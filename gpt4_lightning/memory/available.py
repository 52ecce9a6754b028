"""How much memory one rank of a run may use on this machine: what the memory preflight compares the plan with.

CPU: the node's available memory, the lesser of the kernel's `MemAvailable` and the headroom under every cgroup
memory limit of this process (cgroup v2 `memory.max - memory.current` up the hierarchy, or v1's
`memory.limit_in_bytes - memory.usage_in_bytes`; Slurm's `--mem` is such a limit), divided among the ranks this
node runs. GPU: the free memory of the device this rank will use (`torch.cuda.mem_get_info`: a CUDA context on that
device only, which the rank creates anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Available:
    """Bytes one rank may use, and where the figure comes from (for the error line)."""

    per_rank: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def mem_available() -> int | None:
    """`MemAvailable` of /proc/meminfo in bytes (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cgroup_headroom(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int | None:
    """The least headroom (limit - usage) under any memory limit of this process's cgroups; None if unlimited.
    In a container the cgroup path of `proc_cgroup` may be the host's: the mount's own root is read then."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: every level up to the root may carry a limit
            node = root / path.lstrip("/")
            if not node.is_dir():
                node = root
            for level in (node, *[p for p in node.parents if p == root or root in p.parents]):
                limit = _read_int(level / "memory.max")
                if limit is not None:
                    headrooms.append(limit - (_read_int(level / "memory.current") or 0))
        elif "memory" in controllers.split(","):  # v1
            node = root / "memory" / path.lstrip("/")
            if not node.is_dir():
                node = root / "memory"
            limit = _read_int(node / "memory.limit_in_bytes")
            if limit is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
                headrooms.append(limit - (_read_int(node / "memory.usage_in_bytes") or 0))
    return min(headrooms) if headrooms else None


def cpu_available(local_ranks: int) -> Available:
    """This node's available memory over the `local_ranks` processes it runs."""
    free, headroom = mem_available(), cgroup_headroom()
    if free is None and headroom is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        node, source = total, f"{total / GIB:.1f} GiB of RAM"
    elif headroom is not None and (free is None or headroom < free):
        node, source = headroom, f"{headroom / GIB:.1f} GiB under this job's cgroup memory limit"
    else:
        assert free is not None
        node, source = free, f"{free / GIB:.1f} GiB available on this machine (MemAvailable)"
    if local_ranks > 1:
        source += f", over {local_ranks} ranks on this node"
    return Available(node // max(local_ranks, 1), source)


def cuda_available(device_index: int) -> Available:
    import torch

    free, total = torch.cuda.mem_get_info(device_index)
    return Available(free, f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB on cuda:{device_index} "
                           f"({torch.cuda.get_device_name(device_index)})")
