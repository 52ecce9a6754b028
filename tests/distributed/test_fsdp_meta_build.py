"""gpt4_2b (the seed's defaults) built on the meta device and sharded by FSDP2 over 2 CPU ranks:
each rank allocates only its half of the parameters, never the whole model."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from gpt4_lightning import GPT4
    from gpt4_lightning.parallel.config import ParallelConfig
    from gpt4_lightning.parallel.parallelize import init_sharded_weights, parallelize

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    with torch.device("meta"):
        model = GPT4()                                   # 2,460,899,840 parameters, nothing allocated
    parallelize(model, ParallelConfig(), mesh)
    model.to_empty(device="cpu")                         # this rank's shards only
    with torch.no_grad():
        init_sharded_weights(model, seed=0)
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finite = all(torch.isfinite(p.to_local()).all() for p in model.parameters())
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"local": local, "total": total, "peak_rss": peak, "finite": bool(finite)}, f)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_gpt4_2b_meta_build_shards_over_two_ranks(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29517", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["total"]
    assert total == 2_460_899_840 * 4  # fp32
    for r in ranks:
        gib = {k: r[k] / 2**30 for k in ("local", "peak_rss")}
        print(f"local {gib['local']:.2f} GiB of {total / 2**30:.2f} GiB; peak RSS {gib['peak_rss']:.2f} GiB")
        assert abs(r["local"] - total / 2) / (total / 2) < 0.01  # half each
        assert r["peak_rss"] < 0.75 * total  # never the whole model: half + one module + the runtime
        assert r["finite"]
