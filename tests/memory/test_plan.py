"""The memory planner (gpt4_lightning.memory): invariants of the plan, the PeakMemory callback, the bench's
plan-only report, FSDP2 buffers against torch's own tracker, and one measured CPU run (plan within 20 %)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gpt4_lightning import GPT4, GPT4Config
from gpt4_lightning.memory import param_groups, plan_memory
from tests.helpers.models import TINY
from tests.helpers.paths import REPO

GPT4_2B = GPT4Config()  # the seed's defaults: 2,460,899,840 parameters
SMALL = GPT4Config(**{**TINY, "num_tokens": 1024, "max_seq_len": 512})


def components_sum(plan) -> int:
    return plan.params + plan.grads + plan.optimizer + plan.comm_buffers + plan.activations + plan.transient


def test_fsdp_shards_gpt4_2b_parameters_grads_and_optimizer_over_two_ranks():
    single = plan_memory(GPT4_2B, micro_batch=1, seq_len=32)
    fsdp = plan_memory(GPT4_2B, strategy="fsdp", world_size=2, micro_batch=1, seq_len=32)
    assert single.n_params == fsdp.n_params == 2_460_899_840
    assert single.params == 2_460_899_840 * 4  # fp32
    assert abs(fsdp.params / (single.params / 2) - 1) < 1e-5  # half per rank
    # exactly: FSDP2 pads dim 0 to the world size; only the multi-query k gain (1, 1, dim_head) is odd there
    assert fsdp.params == (single.params + GPT4_2B.depth * GPT4_2B.dim_head * 4) // 2
    assert fsdp.grads_total == fsdp.params and fsdp.optimizer == 2 * fsdp.params
    ddp = plan_memory(GPT4_2B, strategy="ddp", world_size=2, micro_batch=1, seq_len=32)
    assert ddp.params == single.params and ddp.optimizer == single.optimizer


def test_fsdp_pads_dim0_to_the_world_size():
    groups = param_groups(SMALL)
    plan = plan_memory(SMALL, strategy="fsdp", world_size=3, micro_batch=1, seq_len=16)
    padded = sum(-(-s[0] // 3) * 3 * (s.numel() // s[0]) if s else 3
                 for g in groups.groups for s in map(torch.Size, g))
    assert plan.params == padded // 3 * 4 >= groups.numel() * 4 / 3


@pytest.fixture(scope="module")
def adamw_state_bytes() -> tuple[GPT4, int]:
    """A real SMALL model and the bytes of a real AdamW's state (exp_avg + exp_avg_sq) after one step."""
    model = GPT4.from_config(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.loss(torch.randint(0, SMALL.num_tokens, (2, 17))).backward()
    opt.step()
    state = sum(s[k].nbytes for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))  # not the step scalars
    assert len(opt.state) == len(list(model.parameters()))
    return model, state


@pytest.mark.parametrize("strategy,world", [("single", 1), ("ddp", 2), ("fsdp", 2)])
@pytest.mark.parametrize("ac", [False, True])
def test_components_sum_to_the_peak(strategy, world, ac, adamw_state_bytes):
    plan = plan_memory(SMALL, strategy=strategy, world_size=world, micro_batch=2, seq_len=64,
                       activation_checkpointing=ac)
    assert components_sum(plan) == plan.peak
    assert plan.peak == max(plan.phases.values())
    assert min(plan.params, plan.optimizer, plan.activations_saved) > 0
    # the components themselves, against the real model and a real AdamW (the sum above is the peak's
    # definition: a wrong component would still sum to it)
    model, state_bytes = adamw_state_bytes
    if strategy == "fsdp":
        # FSDP2 shards dim 0 as torch.chunk does: rank 0 holds the first ceil(d0 / world) rows of each
        # parameter, its optimizer state the same shape (rank 0 is the largest rank: no padding is missing)
        rank0 = sum(p.chunk(world, dim=0)[0].nbytes for p in model.parameters())
        assert plan.params == plan.grads_total == rank0
        assert plan.optimizer == 2 * rank0
        assert state_bytes / 2 < plan.optimizer < state_bytes  # about half of the whole state
    else:  # one process or DDP: every rank holds all parameters, gradients and optimizer state
        assert plan.params == plan.grads_total == sum(p.nbytes for p in model.parameters())
        assert plan.optimizer == state_bytes == 2 * plan.params


def test_ddp_adds_one_copy_of_the_gradients_to_one_process():
    single = plan_memory(SMALL, micro_batch=2, seq_len=64)
    ddp = plan_memory(SMALL, strategy="ddp", world_size=4, micro_batch=2, seq_len=64)
    assert ddp.comm_buffers == ddp.grads_total == single.grads_total
    assert ddp.peak == single.peak + single.grads_total


def test_activation_checkpointing_keeps_only_block_inputs():
    b, n = 2, 128
    plain = plan_memory(SMALL, micro_batch=b, seq_len=n)
    ac = plan_memory(SMALL, micro_batch=b, seq_len=n, activation_checkpointing=True)
    assert ac.activations_per_block == b * n * SMALL.dim * 4  # the block's fp32 input, nothing else
    assert plain.activations_per_block > 5 * ac.activations_per_block
    assert ac.activations_outside_blocks == plain.activations_outside_blocks  # embedding, logits, loss
    assert ac.activations_saved < plain.activations_saved and ac.peak < plain.peak
    # every other block: half the blocks keep everything
    every2 = plan_memory(SMALL, micro_batch=b, seq_len=n, activation_checkpointing=True, ac_every=2)
    assert ac.activations_saved < every2.activations_saved < plain.activations_saved


def test_activations_are_linear_in_the_micro_batch():
    saved = {b: plan_memory(SMALL, micro_batch=b, seq_len=64).activations_saved for b in (1, 2, 3, 4, 8)}
    slope = saved[3] - saved[2]
    assert slope > 0 and saved[4] - saved[3] == slope and saved[8] - saved[4] == 4 * slope
    assert abs(saved[2] - saved[1] - slope) < 1e-3 * slope  # batch 1: a few bytes differ (a view vs a copy)
    assert saved[2] - 2 * slope < 0.05 * saved[2]  # what does not grow with the batch (ALiBi bias, qk gains)


def test_bf16_true_halves_parameters_and_state_bf16_mixed_keeps_fp32():
    fp32 = plan_memory(SMALL, micro_batch=2, seq_len=64)
    true = plan_memory(SMALL, micro_batch=2, seq_len=64, precision="bf16_true")
    mixed = plan_memory(SMALL, micro_batch=2, seq_len=64, precision="bf16-mixed")  # Lightning's spelling
    assert true.params * 2 == fp32.params and true.optimizer * 2 == fp32.optimizer
    assert mixed.params == fp32.params and mixed.optimizer == fp32.optimizer
    assert true.activations_saved < fp32.activations_saved


def test_cuda_plan_has_no_dense_alibi_bias():
    cfg = GPT4Config(**{**TINY, "max_seq_len": 1024})
    cpu = plan_memory(cfg, micro_batch=1, seq_len=1024, device="cpu")
    cuda = plan_memory(cfg, micro_batch=1, seq_len=1024, device="cuda")
    bias = cfg.heads * 1024 * 1024 * 4  # (1, heads, n, n) fp32, cached by the SDPA path
    assert cpu.activations_outside_blocks - cuda.activations_outside_blocks == bias


def test_document_mask_adds_its_dense_per_batch_mask_on_cpu_only():
    """`data.document_mask` on CPU: a `(b, 1, n, n)` mask built per batch beside the cached ALiBi bias (measured
    +60 MiB at dim 256, seq 512, batch 8: BENCHMARKS.md); CUDA's FlexAttention block mask is negligible."""
    cfg = GPT4Config(**{**TINY, "max_seq_len": 512})
    step = dict(micro_batch=4, seq_len=512)
    plain, masked = plan_memory(cfg, **step), plan_memory(cfg, **step, document_mask=True)
    assert masked.peak - plain.peak >= 4 * 512 * 512 * 4  # at least one fp32 (b, 1, n, n) tensor
    cuda = dict(step, device="cuda")
    assert plan_memory(cfg, **cuda, document_mask=True).peak == plan_memory(cfg, **cuda).peak


DEEP = GPT4Config(**{**TINY, "num_tokens": 1024, "max_seq_len": 512, "depth": 12})  # 12 > 5k with ac_every=2
# wider blocks: FSDP2's buffers, not the logits, shape the backward peak (nonlinear below 3 blocks)
WIDE = GPT4Config(num_tokens=4096, max_seq_len=256, dim=256, depth=8, dim_head=32, heads=8, alibi_num_heads=4)


@pytest.mark.parametrize("cfg,step", [
    (DEEP, dict(strategy="single", micro_batch=2, seq_len=64)),
    (DEEP, dict(strategy="single", micro_batch=2, seq_len=256, precision="bf16_mixed", activation_checkpointing=True)),
    (DEEP, dict(strategy="ddp", world_size=2, micro_batch=2, seq_len=64, precision="bf16_true")),
    (DEEP, dict(strategy="fsdp", world_size=3, micro_batch=1, seq_len=128, activation_checkpointing=True,
                ac_every=2)),
    (DEEP, dict(strategy="fsdp", world_size=2, micro_batch=2, seq_len=64, precision="bf16_mixed", param_dtype="bf16",
                reduce_dtype="fp32", reshard_after_forward=False, device="cuda")),
    (WIDE, dict(strategy="fsdp", world_size=2, micro_batch=2, seq_len=256, activation_checkpointing=True)),
    (WIDE, dict(strategy="fsdp", world_size=2, micro_batch=2, seq_len=256)),
    (WIDE, dict(strategy="fsdp", world_size=1, micro_batch=8, seq_len=64)),
], ids=["single", "single-ac-bf16", "ddp-bf16-true", "fsdp-ac-every-2", "fsdp-cuda-mixed", "wide-fsdp-ac", "wide-fsdp",
        "wide-fsdp-1"])
def test_the_depth_extrapolated_plan_equals_the_simulation_of_every_block(cfg, step):
    """plan_memory simulates depths 3k, 4k, 5k and extrapolates (blocks are identical): every field as exact."""
    assert plan_memory(cfg, **step) == plan_memory(cfg, exact=True, **step)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="strategy"):
        plan_memory(SMALL, strategy="zero3", micro_batch=1, seq_len=8)
    with pytest.raises(ValueError, match="precision"):
        plan_memory(SMALL, precision="fp8", micro_batch=1, seq_len=8)
    with pytest.raises(ValueError, match="world_size"):
        plan_memory(SMALL, world_size=2, micro_batch=1, seq_len=8)
    with pytest.raises(ValueError, match="ac_every"):
        plan_memory(SMALL, micro_batch=1, seq_len=8, activation_checkpointing=True, ac_every=0)


@pytest.mark.slow
def test_bench_plan_only_gpt4_2b_fsdp_8_ranks(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "bench/memory_plan.py", "--model", "gpt4_2b", "--strategy", "fsdp", "--world-size", "8",
         "--precision", "bf16_mixed", "--micro-batch", "1", "--seq-len", "2048", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for row in ("params", "grads", "optimizer state", "activations", "transient", "total (peak)", "no AC",
                "AC every 1", "2,460,899,840 parameters"):
        assert row in proc.stdout
    report = json.loads(out.read_text())
    plans = report["plans"]
    no_ac, ac = plans["no AC"], plans["AC every 1"]
    # fp32 master weights, sharded 8 ways; the (1, 1, 128) multi-query k gain of each block is padded to 8 rows
    assert no_ac["params"] == (2_460_899_840 + 32 * 7 * 128) * 4 // 8 == ac["params"]
    assert no_ac["config"]["device"] == "cuda" and no_ac["config"]["world_size"] == 8
    assert ac["activations_saved"] < no_ac["activations_saved"] and ac["peak"] < no_ac["peak"]
    for plan in plans.values():
        assert sum(plan[k] for k in ("params", "grads", "optimizer", "comm_buffers", "activations",
                                     "transient")) == plan["peak"]
    assert report["machine"]["cpu_count"] >= 1


FSDP_TRACKER = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from gpt4_lightning import GPT4, GPT4Config
    from gpt4_lightning.memory import plan_memory
    from gpt4_lightning.parallel.config import ParallelConfig
    from gpt4_lightning.parallel.parallelize import parallelize

    world, ac, b, n = int(sys.argv[1]), sys.argv[2] == "1", 2, 256
    cfg = GPT4Config(num_tokens=4096, max_seq_len=256, dim=256, depth=4, dim_head=32, heads=8, alibi_num_heads=4)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    with FakeTensorMode():
        model = GPT4.from_config(cfg)
        model.checks_token_values = False  # fake tensors carry no values
        parallelize(model, ParallelConfig(activation_checkpointing=ac), mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, cfg.num_tokens, (b, n + 1))
        for step in range(2):  # Lightning's order: forward + loss, zero_grad, backward, step
            tracker = FSDPMemTracker(model.root, opt) if step == 1 else None
            if tracker is not None:
                tracker.track_inputs((tokens,))
                tracker.__enter__()
                model.net.decoder.alibi._cache = None  # rebuilt in the tracked forward: the tracker sees the bias
            loss = model.loss(tokens)
            opt.zero_grad()
            loss.backward()
            if tracker is not None:
                tracker.__exit__(None, None, None)
            opt.step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    plan = plan_memory(cfg, strategy="fsdp", world_size=world, micro_batch=b, seq_len=n, activation_checkpointing=ac)
    print(json.dumps({"tracker": peak, "plan": max(plan.phases["forward"], plan.phases["backward"])}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("world,ac", [(2, False), (2, True), (1, False)])
def test_fsdp_plan_matches_torch_fsdp_mem_tracker(tmp_path, world, ac):
    """torch's FSDPMemTracker runs the real FSDP2 (fake tensors, a fake process group) through forward and
    backward of a steady-state step and records every allocation: the plan's peak must be the same."""
    pytest.importorskip("torch.distributed._tools.fsdp2_mem_tracker")
    script = tmp_path / "track.py"
    script.write_text(FSDP_TRACKER)
    proc = subprocess.run([sys.executable, str(script), str(world), str(int(ac))], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["plan"] / result["tracker"] - 1) < 0.01, result


@pytest.mark.slow
def test_measured_peak_of_one_cpu_process_agrees_with_the_plan(workdir, tmp_path):
    """One real training run (1 process, fp32, 3 steps) through the CLI: the PeakMemory callback's peak RSS
    above the pre-model baseline within 20 % of the plan (glibc's mmap threshold fixed, see the bench)."""
    import os

    out = tmp_path / "measured.json"
    data = ["data=files", f"data.path={workdir / 'corpus.jsonl'}", "tokenizer.vocab_size=512"]
    env = {**os.environ, "GPT4_LIGHTNING_CACHE": str(workdir / "cache")}
    proc = subprocess.run([sys.executable, "bench/memory_plan.py", "--measure", "--quick", "--malloc", "fixed",
                           "--out", str(out), *(f"--train-arg={a}" for a in data)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    print(f"plan {result['plan_gib']:.3f} GiB, measured {result['measured_gib']:.3f} GiB")
    assert result["plan_gib"] > 1.0  # the model, optimizer and activations dominate what is not modelled
    assert abs(result["ratio"] - 1) < 0.2, result
