"""What memory and CPUs this machine leaves a run (memory/available.py): cgroup v1 and v2 limits read from fake
cgroup trees, in process."""

from gpt4_lightning.memory.available import cgroup_headroom, cpu_available
from gpt4_lightning.memory.plan import GIB


def test_cgroup_limits_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{8 * GIB}\n")
    (v2 / "job" / "memory.current").write_text(f"{3 * GIB}\n")
    (v2 / "job" / "step" / "memory.max").write_text("max\n")  # no limit at this level: the parent's counts
    (tmp_path / "cg2").write_text("0::/job/step\n")
    assert cgroup_headroom(tmp_path / "cg2", v2) == 5 * GIB
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text(f"{1 * GIB}\n")
    (tmp_path / "cg1").write_text("4:memory:/slurm\n1:cpu:/\n")
    assert cgroup_headroom(tmp_path / "cg1", v1) == 3 * GIB
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_headroom(tmp_path / "cg1", v1) is None
    assert cpu_available(2).per_rank <= cpu_available(1).per_rank // 2 + 1
