"""The non-finite guard (training/nonfinite.py): a NaN loss on one step is skipped without touching weights or
optimizer state (fused on-device and host paths), or stops the run keeping the weights from before it. In process
through run.build on the tiny model, and one CLI run in a subprocess."""

import pytest
import torch

from tests.helpers.cli import run
from tests.helpers.interrupted import run_args


class PoisonLoss:
    """Makes the loss NaN on one optimizer step (a poisoned batch), and snapshots the weights around it."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    def __call__(self, trainer, module, batch, batch_idx) -> None:  # on_train_batch_start
        if trainer.global_step == self.step:
            self.before = {k: v.clone() for k, v in module.model.state_dict().items()}
            loss = type(module.model).loss
            module.model.loss = lambda *args: loss(module.model, *args) * float("nan")
        elif "loss" in vars(module.model):
            self.after = {k: v.clone() for k, v in module.model.state_dict().items()}
            del module.model.loss


def fit_with_poison(workdir, tmp_path, monkeypatch, nonfinite: str, *extra: str, stops: bool = True):
    """8 steps with a non-finite loss at step 3; `stops=False`: without GracefulStop (nothing acts on the guard's
    stop)."""
    import lightning as L

    from gpt4_lightning.config import compose_config
    from gpt4_lightning.run.build import build, callback
    from gpt4_lightning.training.nonfinite import NonFiniteGuard
    from gpt4_lightning.training.stop import GracefulStop

    monkeypatch.setenv("GPT4_LIGHTNING_CACHE", str(workdir / "cache"))
    cfg = compose_config("train", [*run_args(workdir, "poison", "trainer.max_steps=8", "trainer.limit_val_batches=0",
                                         f"nonfinite.mode={nonfinite}", "logger=none", *extra),
                                   f"hydra.run.dir={tmp_path}"])
    module, datamodule, trainer = build(cfg)
    if not stops:
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, GracefulStop)]
    poison = PoisonLoss(step=3)
    trainer.callbacks.append(type("Poison", (L.Callback,), {"on_train_batch_start": lambda s, *a: poison(*a)})())
    trainer.fit(module, datamodule=datamodule)
    return callback(trainer, NonFiniteGuard), trainer, poison


@pytest.mark.parametrize("fused", [True, False], ids=["on-device", "host"])
def test_nonfinite_loss_is_skipped_without_touching_the_weights(workdir, tmp_path, monkeypatch, fused):
    """Fused AdamW skips the step on the device (`found_inf`, counts read every log_every_n_steps = 3); another
    optimizer has its gradients dropped after a host read of the norm. Either way the bad step changes nothing:
    weights, moments, step count."""
    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "skip", f"optim.fused={fused}",
                                             "trainer.log_every_n_steps=3")
    assert trainer.global_step == 8 and guard.bad_steps == 1
    for name, value in poison.before.items():  # the poisoned step changed nothing
        assert torch.equal(value, poison.after[name]), name
    optimizer = trainer.optimizers[0]
    assert all(int(optimizer.state[p]["step"]) == 7 for p in trainer.lightning_module.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_nonfinite_stop_keeps_a_checkpoint_from_before_the_bad_step(workdir, tmp_path, monkeypatch):
    from gpt4_lightning.checkpoint.load import load_model

    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop")
    assert guard.stop_step == 3 and trainer.global_step == 4  # stopped right after the bad step
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    saved = model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, saved[name]), name


def test_nonfinite_stop_read_later_still_keeps_the_weights_from_before_the_bad_step(workdir, tmp_path,
                                                                                    monkeypatch):
    """On the device the guard reads its counts every log_every_n_steps (5): the bad step 3 is seen after step 4,
    whose update is skipped too, so the checkpoint still holds the weights from before step 3."""
    from gpt4_lightning.checkpoint.load import load_model

    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop", "trainer.log_every_n_steps=5")
    assert guard.stop_step == 3 and trainer.global_step == 5 and guard.bad_steps == 1
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    saved = model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize("fused", [True, False], ids=["on-device", "host"])
def test_once_stopping_the_guard_skips_every_update_whenever_the_stop_comes(workdir, tmp_path, monkeypatch, fused):
    """The stop may come steps after the bad one (the device counts' next read; on several ranks one step more):
    the guard skips every update from the bad step on, on both paths. Here nothing acts on its stop, so the run's
    8 steps end with the weights of before the bad step 3."""
    guard, trainer, poison = fit_with_poison(workdir, tmp_path, monkeypatch, "stop", f"optim.fused={fused}",
                                             "trainer.log_every_n_steps=2", stops=False)
    assert guard.stop_step == 3 and trainer.global_step == 8
    weights = trainer.lightning_module.model.state_dict()
    for name, value in poison.before.items():
        assert torch.equal(value, weights[name]), name


def test_nonfinite_stop_through_the_cli_is_one_error_line(workdir):
    proc = run(workdir, "train", *run_args(workdir, "diverge", "optim.lr=1e30", "nonfinite.mode=stop",
                                       "trainer.gradient_clip_val=null"), check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "non-finite loss" in errors[0] and "optim.lr" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = workdir / "outputs" / "diverge" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())  # the weights from before the bad step
