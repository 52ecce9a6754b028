"""Building the run from its config (run/build.py), in process on composed configs: the collective timeout reaches
the strategy; a logger whose package is missing names the extra to install."""

import pytest


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_the_collective_timeout_reaches_the_strategy(trainer):
    """collective_timeout_s (default per backend: gloo here) is the strategy's process-group timeout."""
    from datetime import timedelta

    from gpt4_lightning.config import compose_config
    from gpt4_lightning.run.build import COLLECTIVE_TIMEOUT_S, timed_strategy

    cfg = compose_config("train", [f"trainer={trainer}", "trainer.accelerator=cpu"])
    assert timed_strategy(cfg.trainer, None)["strategy"]._timeout == timedelta(seconds=COLLECTIVE_TIMEOUT_S["gloo"])
    assert timed_strategy(cfg.trainer, 42)["strategy"]._timeout == timedelta(seconds=42)
    assert timed_strategy(compose_config("train", []).trainer, 42) == {}  # one device: no collectives


def test_a_logger_whose_package_is_missing_names_its_extra(monkeypatch):
    import importlib.util

    from omegaconf import OmegaConf

    from gpt4_lightning.run.build import check_logger_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name))
    node = OmegaConf.create({"_target_": "lightning.pytorch.loggers.TensorBoardLogger"})
    with pytest.raises(ValueError, match=r"needs tensorboard, which this install lacks; pip install -e "
                                         r"'\.\[tensorboard\]' \(or '\.\[dev\]'\)"):
        check_logger_installed(node)
    check_logger_installed(OmegaConf.create({"_target_": "gpt4_lightning.training.loggers.ResumableCSVLogger"}))
