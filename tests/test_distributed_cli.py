"""Two real CPU processes (gloo) through the real CLI: DDP and FSDP2 (ModelParallelStrategy)."""


import pytest
import torch
from conftest import run, step_losses, train_args


def args(workdir, name: str, *extra: str) -> list[str]:
    base = [a for a in train_args(workdir, 10) if not a.startswith(("run_name=", "data.batch_size=",
                                                                    "trainer.log_every_n_steps="))]
    return [*base, f"run_name={name}", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
            "optim.lr=1e-3", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(workdir, strategy):
    run(workdir, "train", *args(workdir, f"one_{strategy}", "data.batch_size=8"))
    run(workdir, "train", *args(workdir, f"two_{strategy}", f"trainer={strategy}", "trainer.accelerator=cpu",
                                "trainer.devices=2", "data.batch_size=4"))
    one = step_losses(workdir / "outputs" / f"one_{strategy}")
    two = step_losses(workdir / "outputs" / f"two_{strategy}")
    assert sorted(one) == sorted(two) and len(one) >= 9
    # same seeded init (FSDP2: shard by shard, see parallelize.init_sharded_weights), same global batches
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    assert two[max(two)] < two[min(two)]
    ckpt = workdir / "outputs" / f"two_{strategy}" / "checkpoints" / "last.ckpt"
    if strategy == "fsdp":
        assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # sharded: one file per rank
    else:
        assert torch.load(ckpt, weights_only=True)["global_step"] == 10


@pytest.mark.slow
def test_fsdp_checkpoint_reshards_and_exports(workdir):
    from gpt4_lightning import GPT4
    from gpt4_lightning.checkpoint.load import load_model

    two = ["trainer=fsdp", "trainer.accelerator=cpu", "data.batch_size=4"]
    run(workdir, "train", *args(workdir, "reshard", *two, "trainer.devices=2"))
    ckpt = workdir / "outputs" / "reshard" / "checkpoints" / "last.ckpt"
    # 2 ranks -> 1 rank: DCP reshards the model and optimizer on load; the data position is global
    resumed = run(workdir, "train", *args(workdir, "reshard", *two, "trainer.devices=1", "trainer.max_steps=14",
                                          "ckpt_path=last"))
    assert "steps: 14" in resumed.stdout
    # and back: 1 rank -> 2 ranks
    again = run(workdir, "train", *args(workdir, "reshard", *two, "trainer.devices=2", "trainer.max_steps=18",
                                        "ckpt_path=last"))
    assert "steps: 18" in again.stdout
    losses = step_losses(workdir / "outputs" / "reshard")
    assert max(losses) >= 17 and all(loss < 7 for loss in losses.values())

    trained, meta = load_model(ckpt)  # gathers the shards in this one process
    assert meta["global_step"] == 18
    out = workdir / "exported"
    run(workdir, "export", f"ckpt_path={ckpt}", f"out={out / 'model.safetensors'}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    exported = GPT4.from_pretrained(out)
    tokens = torch.randint(0, exported.config.num_tokens, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens), trained(tokens), atol=1e-5, rtol=1e-5)


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
