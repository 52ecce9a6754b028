"""Every config group and preset composes with Hydra's compose API and instantiates; bad overrides fail at compose.
In process."""

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from gpt4_lightning import GPT4, GPT4Config
from gpt4_lightning.config import compose_config, config_dir

GROUPS = {group: sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
          for group in ("model", "data", "tokenizer", "trainer", "precision", "optim", "scheduler", "logger",
                        "callbacks", "experiment")}
REQUIRED = {"data=files": ["data.path=x.txt"], "data=hf_hub": ["data.name=org/ds"],
            "tokenizer=file": ["tokenizer.path=t.json"], "tokenizer=hub": ["tokenizer.name=gpt2"]}
SEED_PARAMS = 2_460_899_840


def test_groups_exist():
    assert GROUPS["model"] == ["gpt4_125m", "gpt4_1b", "gpt4_2b", "gpt4_350m", "gpt4_tiny"]
    assert GROUPS["precision"] == ["bf16_mixed", "bf16_true", "fp32"]
    assert {"wandb", "csv", "tensorboard", "none"} <= set(GROUPS["logger"])


# where each group's options land in the composed config: Lightning's Trainer takes precision, logger and callbacks
PACKAGES = {"precision": "trainer", "logger": "trainer", "callbacks": "trainer", "experiment": ""}


def option_values(group: str, option: str) -> object:
    """An option file's own values (without its defaults list), unresolved."""
    values = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"), resolve=False)
    if isinstance(values, dict):
        values.pop("defaults", None)
    return values


def assert_contains(composed: object, values: object, where: str, overridden: set[str]) -> None:
    """Every value the option file sets is in the composed config at the same key (but those the test's
    required overrides set)."""
    if isinstance(values, dict):
        assert isinstance(composed, dict), where
        for key, value in values.items():
            assert key in composed, f"{where}.{key}"
            assert_contains(composed[key], value, f"{where}.{key}".removeprefix("."), overridden)
    elif where not in overridden:
        assert composed == values, (where, composed, values)


@pytest.mark.parametrize("override", [f"{g}={o}" for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_resolves(override):
    group, option = override.split("=")
    cfg = compose_config("train", [override, *REQUIRED.get(override, [])])
    # the option is what got composed: each of its values at its package (unresolved: interpolations as written)
    package, values = PACKAGES.get(group, group), option_values(group, option)
    composed = OmegaConf.to_container(cfg, resolve=False)
    node = composed
    for key in filter(None, package.split(".")):
        node = node[key]
    overridden = {o.split("=")[0] for o in REQUIRED.get(override, [])}
    assert_contains(node, values, package, overridden)
    if group != "experiment":
        assert OmegaConf.to_container(cfg.hydra.runtime.choices)[group] == option
    # every interpolation resolves (hydra's own sweep keys need a running sweep)
    resolved = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
                for key in cfg if key != "hydra"}
    assert isinstance(resolved["trainer"], dict) and isinstance(resolved["model"], dict)
    assert not any("${" in str(v) for v in resolved.values())
    model = GPT4Config.from_kwargs(**resolved["model"])  # the model's typed contract accepts it
    if group == "model":
        assert model.to_dict().items() >= values.items()


@pytest.mark.parametrize("preset", GROUPS["model"])
def test_model_presets_build_on_meta(preset):
    cfg = compose_config("train", [f"model={preset}"])
    with torch.device("meta"):
        model = GPT4.from_config(GPT4Config.from_kwargs(**OmegaConf.to_container(cfg.model)))
    if preset == "gpt4_2b":
        assert model.config == GPT4Config()  # the seed's defaults exactly
        assert model.num_params() == SEED_PARAMS
    expected = {"gpt4_tiny": (3e6, 1e7), "gpt4_125m": (1.0e8, 1.8e8), "gpt4_350m": (3.0e8, 4.2e8),
                "gpt4_1b": (1.0e9, 1.6e9), "gpt4_2b": (2.4e9, 2.5e9)}[preset]
    assert expected[0] < model.num_params() < expected[1], model.num_params()


def test_trainer_optim_scheduler_logger_callbacks_instantiate(tmp_path):
    cfg = compose_config("train", [f"hydra.run.dir={tmp_path}", "logger=csv"])
    trainer = instantiate(cfg.trainer)
    assert trainer.default_root_dir == str(tmp_path) and trainer.logger.save_dir == str(tmp_path)
    assert trainer.max_steps == cfg.trainer.max_steps and trainer.precision == "32-true"
    names = [type(c).__name__ for c in trainer.callbacks]
    assert {"AtomicCheckpoint", "GracefulStop", "ThroughputLogger"} <= set(names)
    assert not any(type(c).__name__ == "ModelCheckpoint" for c in trainer.callbacks)  # one checkpoint writer
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = instantiate(cfg.optim)([{"params": params}])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == cfg.optim.lr
    scheduler = instantiate(cfg.scheduler)(optimizer)
    assert scheduler.get_last_lr()[0] == pytest.approx(cfg.optim.lr / cfg.scheduler.warmup_steps)


@pytest.mark.parametrize(("override", "error", "message"), [
    ("model.dimm=3", ConfigCompositionException, "model.dimm"),  # not in the GPT4Config schema
    ("model.heads=abc", ConfigCompositionException, "model.heads"),  # not an int
    ("model=nope", MissingConfigException, "model/nope"),  # no such option
])
def test_bad_overrides_fail_at_compose(override, error, message):
    with pytest.raises(error, match=message) as raised:
        compose_config("train", [override])
    if override == "model.dimm=3":
        assert isinstance(raised.value.__cause__, ConfigAttributeError)
    elif override == "model.heads=abc":
        assert isinstance(raised.value.__cause__, ValidationError)
