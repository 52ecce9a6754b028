"""Two real CPU processes (gloo) through the real CLI: DDP and FSDP2 (ModelParallelStrategy); and FSDP2's
bf16 mixed-precision wiring in two gloo processes."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from gpt4_lightning.config import compose_config
from tests.helpers.cli import run, step_losses, step_metric, train_args
from tests.helpers.hf import transformers_matches
from tests.helpers.models import TINY


def args(workdir, name: str, *extra: str) -> list[str]:
    base = [a for a in train_args(workdir, 10) if not a.startswith(("run_name=", "data.batch_size=",
                                                                    "trainer.log_every_n_steps="))]
    return [*base, f"run_name={name}", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
            "optim.lr=1e-3", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(workdir, strategy, tmp_path):
    run(workdir, "train", *args(workdir, f"one_{strategy}", "data.batch_size=8"))
    # DDP starts with an empty cache: rank 0 prepares the data once, rank 1 waits for it and reads the same
    cache = tmp_path / "cold" if strategy == "ddp" else None
    # FSDP with the in-training lm-eval on (rank 0 scores the gathered weights at steps 5 and 10): the losses
    # below still equal the 1-process run's without it
    downstream = ["eval.tasks=gpt4l_next_line", "eval.every_n_steps=5", "eval.limit=4"] if strategy == "fsdp" else []
    proc = run(workdir, "train", *args(workdir, f"two_{strategy}", f"trainer={strategy}", "trainer.accelerator=cpu",
                                       "trainer.devices=2", "data.batch_size=4", *downstream), cache=cache)
    if cache is not None:
        rank0, rank1 = (workdir / "outputs" / "two_ddp" / name for name in ("train.log", "train_ddp_process_1.log"))
        assert f"prepared {cache}" in rank0.read_text(), proc.stdout[-3000:]
        assert "prepar" not in rank1.read_text() and "reusing" not in rank1.read_text()
    one = step_losses(workdir / "outputs" / f"one_{strategy}")
    two = step_losses(workdir / "outputs" / f"two_{strategy}")
    assert sorted(one) == sorted(two) and len(one) >= 9
    # same seeded init (FSDP2: shard by shard, see parallelize.init_sharded_weights), same global batches
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    assert two[max(two)] < two[min(two)]
    if strategy == "fsdp":
        evals = step_metric(workdir / "outputs" / "two_fsdp", "eval/gpt4l_next_line/acc")
        assert len(evals) == 2 and all(0 <= v <= 1 for v in evals.values()), evals
    # perf/tokens_seen counts the global batch, 8 windows of 64 targets per step, on both: the 2-process run
    # counts both ranks' 4 x 64 (one rank alone would count half); tokens/s is the world's, 2 x the device's
    for run_name in (f"one_{strategy}", f"two_{strategy}"):
        seen = step_metric(workdir / "outputs" / run_name, "perf/tokens_seen")
        assert seen == {step: (step + 1) * 8 * 64 for step in range(10)}, (run_name, seen)
    world_tps = step_metric(workdir / "outputs" / f"two_{strategy}", "perf/tokens_per_s")
    device_tps = step_metric(workdir / "outputs" / f"two_{strategy}", "perf/device_tokens_per_s")
    assert sorted(world_tps) == list(range(10))
    for step, value in world_tps.items():
        assert value == pytest.approx(2 * device_tps[step], rel=1e-5)
    ckpt = workdir / "outputs" / f"two_{strategy}" / "checkpoints" / "last.ckpt"
    if strategy == "fsdp":
        assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # sharded: one file per rank
    else:
        assert torch.load(ckpt, weights_only=True)["global_step"] == 10


@pytest.mark.slow
def test_fsdp_checkpoint_reshards_and_exports(workdir, tmp_path):
    """2 ranks for 10 steps, resumed on 1 rank to 14, back on 2 ranks to 18, always with the global batch of 8
    windows: step by step the losses of one uninterrupted single-process run of 18 steps. Tolerance 1e-4: the
    runs differ only in float32 reduction order (gradients reduce-scattered over 2 ranks or summed in one;
    measured differences ~3e-5 after 18 Adam steps), while a resume that kept freshly initialised weights, or
    another data position, is off by > 0.05 at once (the loss falls ~0.02 per step from ln 512 = 6.24)."""
    from gpt4_lightning import GPT4
    from gpt4_lightning.checkpoint.load import load_model

    # one LR schedule for every segment and the reference (the cosine's length would otherwise follow each
    # segment's trainer.max_steps)
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "scheduler.total_steps=18"]
    ckpt = workdir / "outputs" / "reshard" / "checkpoints" / "last.ckpt"
    run(workdir, "train", *args(workdir, "reshard", *fsdp, "trainer.devices=2", "data.batch_size=4"))
    assert len(list(ckpt.glob("*.distcp"))) == 2
    # 2 ranks -> 1 rank: DCP reshards the model and optimizer on load; the data position is global
    resumed = run(workdir, "train", *args(workdir, "reshard", *fsdp, "trainer.devices=1", "data.batch_size=8",
                                          "trainer.max_steps=14", "ckpt_path=last"))
    assert "steps: 14" in resumed.stdout
    assert len(list(ckpt.glob("*.distcp"))) == 1  # written by one rank
    # and back: 1 rank -> 2 ranks
    again = run(workdir, "train", *args(workdir, "reshard", *fsdp, "trainer.devices=2", "data.batch_size=4",
                                        "trainer.max_steps=18", "ckpt_path=last"))
    assert "steps: 18" in again.stdout
    assert len(list(ckpt.glob("*.distcp"))) == 2
    run(workdir, "train", *args(workdir, "reshard_reference", "scheduler.total_steps=18", "data.batch_size=8",
                                "trainer.max_steps=18"))
    losses = step_losses(workdir / "outputs" / "reshard")
    reference = step_losses(workdir / "outputs" / "reshard_reference")
    assert sorted(losses) == sorted(reference) == list(range(18))
    for step in reference:
        assert abs(losses[step] - reference[step]) < 1e-4, (step, losses[step], reference[step])
    assert reference[17] < reference[0] - 0.2  # it learns: the comparison is not of untrained models

    trained, meta = load_model(ckpt)  # gathers the shards in this one process
    assert meta["global_step"] == 18
    out = workdir / "exported"
    run(workdir, "export", f"ckpt_path={ckpt}", f"out={out / 'model.safetensors'}")
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_gpt4.py"} <= {p.name for p in out.iterdir()}
    exported = GPT4.from_pretrained(out)
    tokens = torch.randint(0, exported.config.num_tokens, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens), trained(tokens), atol=1e-5, rtol=1e-5)
    transformers_matches(out, ckpt, tmp_path)  # the export of the sharded checkpoint, read by transformers alone


@pytest.mark.slow
def test_fsdp_bf16_mixed_trains_on_two_ranks(workdir):
    """precision=bf16_mixed under FSDP2: bf16 all-gathers, fp32 reduce-scatter (parallel.*_dtype=auto)."""
    run(workdir, "train", *args(workdir, "fsdp_bf16", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                                "data.batch_size=4", "precision=bf16_mixed", "optim.lr=3e-3"))
    losses = step_losses(workdir / "outputs" / "fsdp_bf16")
    assert sorted(losses) == list(range(10)) and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses[9] < losses[0] - 0.05, losses
    ckpt = workdir / "outputs" / "fsdp_bf16" / "checkpoints" / "last.ckpt"
    assert len(list(ckpt.glob("*.distcp"))) == 2


BF16_WIRING = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from gpt4_lightning import GPT4
    from gpt4_lightning.parallel.config import ParallelConfig
    from gpt4_lightning.parallel.parallelize import init_sharded_weights, parallelize

    out, parallel, precision, tiny = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    with torch.device("meta"):
        model = GPT4(**tiny)
    parallelize(model, ParallelConfig(**parallel).for_precision(precision), mesh)  # as train.build + configure_model
    model.to_empty(device="cpu")
    with torch.no_grad():
        init_sharded_weights(model, seed=0)
    block = model.blocks[0]
    policies = [m._get_fsdp_state()._mp_policy for m in (block, model.net)]
    seen = {}

    def record(module, args):  # inside the block's forward: FSDP has all-gathered its parameters
        seen.update({name: str(p.dtype) for name, p in block.named_parameters()})
        seen["kind"] = type(block.attn.to_qkv.weight).__name__

    block.attn.register_forward_pre_hook(record)
    tokens = torch.randint(0, tiny["num_tokens"], (2, 33), generator=torch.Generator().manual_seed(rank))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning's bf16-mixed
        loss = model.loss(tokens)
    loss.backward()
    result = {
        "param_dtype": [str(p.param_dtype) for p in policies], "reduce_dtype": [str(p.reduce_dtype) for p in policies],
        "in_forward": seen,
        "sharded": sorted({str(p.dtype) for p in model.parameters()}),  # fp32 master weights
        "grads": sorted({str(p.grad.dtype) for p in model.parameters()}),  # reduce-scattered in fp32
        "loss": float(loss),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_fsdp_bf16_mixed_gathers_bf16_parameters(tmp_path):
    """trainer=fsdp precision=bf16_mixed as the CLI composes it: FSDP2's MixedPrecisionPolicy all-gathers bf16
    parameters (a decoder block computes with bf16 weights) and reduce-scatters fp32 gradients into fp32 shards;
    2 real gloo processes."""
    cfg = compose_config("train", ["trainer=fsdp", "precision=bf16_mixed"])
    parallel = OmegaConf.to_container(cfg.parallel, resolve=True)
    assert (parallel["param_dtype"], parallel["reduce_dtype"]) == ("auto", "auto")  # the config's default
    script = tmp_path / "bf16.py"
    script.write_text(BF16_WIRING)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29521", str(script), str(tmp_path), json.dumps(parallel),
                           str(cfg.trainer.precision), json.dumps(TINY)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        in_forward = r.pop("in_forward")
        assert in_forward.pop("kind") == "Parameter"  # the unsharded parameter, not the DTensor shard
        assert "attn.to_qkv.weight" in in_forward and set(in_forward.values()) == {"torch.bfloat16"}, in_forward
        assert r["param_dtype"] == ["torch.bfloat16"] * 2 and r["reduce_dtype"] == ["torch.float32"] * 2, r
        assert r["sharded"] == r["grads"] == ["torch.float32"], r
        assert torch.isfinite(torch.tensor(r["loss"]))
