"""Every entry point's start: register the configs, pre-check the overrides (one `error:` line for a bad one,
with the closest key), make sure the run directory can be made and is not in use, then run the task as a Hydra app
with user errors turned into one line (`errors`). A rejected command leaves the disk as it found it
(`run_dir.RunDirGuard`)."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gpt4_lightning.cli.errors import one_line, run_cli
from gpt4_lightning.cli.run_dir import RunDirGuard
from gpt4_lightning.cli.run_lock import RunLock, requeue_wait_s
from gpt4_lightning.utils.env import is_global_rank_zero
from gpt4_lightning.utils.files import check_writable_dir
from gpt4_lightning.utils.names import closest


def _override_error(config_name: str, overrides: list[str], exc: Exception) -> str:
    """One line for a bad override: the key, why, and the fix (close matches for a misspelt key)."""
    text = str(exc)
    cause = exc.__cause__
    unknown = re.match(r"Could not override '([^']+)'", text)
    object_type = getattr(cause, "object_type", None)
    inner_key = getattr(cause, "key", None)
    if (unknown and dataclasses.is_dataclass(object_type) and inner_key is not None
            and str(inner_key) not in unknown.group(1).split(".")):
        # a misspelt key inside a value (e.g. an item of data.sources): name the field and its type's fields
        fields = [f.name for f in dataclasses.fields(object_type)]
        close = closest(str(inner_key), fields, n=1)
        hint = f"did you mean {close[0]}?" if close else f"its fields are {', '.join(fields)}"
        return (f"{unknown.group(1)}: {inner_key} is not a field of {object_type.__name__} ({', '.join(fields)}); "
                + hint)
    if unknown:
        key = unknown.group(1)
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            from gpt4_lightning.config import compose_config

            node: Any = compose_config(config_name, rest)
        except Exception:  # the other overrides are broken too: report this one without suggestions
            node = None
        message = f"{key} is not a key of this config"
        known: list[str] = []
        for part in key.split("."):  # down to the first part that is not there
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                parent = ".".join(known)
                keys = [str(k) for k in node if k != "hydra"]
                close = closest(part, keys, n=3)
                prefix = parent + "." if parent else ""
                if close:
                    message += "; did you mean " + " or ".join(prefix + c for c in close) + "?"
                else:
                    message += f"; the keys of {parent or 'the config'} are: {', '.join(sorted(keys))}"
                if OmegaConf.get_type(node) is dict:  # an open node (not a typed schema) also takes new keys
                    message += f" (to add a new key, write +{key}=...)"
                break
            known.append(part)
            try:
                node = node._get_node(part)  # the node itself, no interpolation resolved
            except Exception:
                break
        return message
    if text.startswith("Error merging override") and cause is not None:
        override = text.removeprefix("Error merging override").strip()
        reason = str(cause).split("\n")[0].strip()
        key = override.split("=", 1)[0].lstrip("+~")
        return f"{override}: {reason}; give {key} {_expected(reason)}"
    text = text.split("Config search path")[0]
    return one_line(text.replace("Available options", "; available options"))


def _expected(reason: str) -> str:
    """What OmegaConf's validation message says the key takes, in words."""
    if "converted to Integer" in reason:
        return "an integer"
    if "converted to Float" in reason:
        return "a number"
    if "not a valid bool" in reason:
        return "true or false"
    return "a value of the type the config expects"


def check_overrides(config_name: str, argv: list[str]) -> DictConfig | None:
    """Compose the config once before Hydra runs, so a bad override (unknown option or key, wrong
    type) ends in one `error:` line naming it and the fix, instead of Hydra's multi-line report.
    Returns the composed config (with `hydra`), or None where the check is left to Hydra: multirun
    and Hydra's own flags, and HYDRA_FULL_ERROR=1."""
    overrides = argv[1:]
    if any(a.startswith("-") for a in overrides) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    from gpt4_lightning.config import compose_config

    try:
        _check_spelling(overrides)
        cfg = compose_config(config_name, overrides)
        _check_booleans(cfg, overrides)
        return cfg
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_override_error(config_name, overrides, e)}", file=sys.stderr)
        sys.exit(2)


def check_renamed_keys(config_name: str, overrides: list[str]) -> None:
    """An old top-level spelling (`checkpoint_every_n_steps=10`, `nonfinite=stop`; `config.schema.RENAMED_KEYS`) ends
    in one `error:` line naming the new key, in a single run and in a sweep (`-m`) alike."""
    if config_name != "train":
        return
    from gpt4_lightning.config.schema import renamed

    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key.startswith("-"):
            continue
        message = renamed(key.lstrip("+~"), value if not value.startswith("{") else None)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)


def _parsed(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _check_spelling(overrides: list[str]) -> None:
    """The open nodes (`config.schema.OPEN_NODES`: the trainer) take new keys with `+`; without it, a key the
    schema does not have is a misspelling, as everywhere else."""
    from dataclasses import fields

    from gpt4_lightning.config.schema import OPEN_NODES

    for override in _parsed(overrides):
        parts = override.key_or_group.split(".")
        if len(parts) < 2 or parts[0] not in OPEN_NODES or override.is_add() or override.is_force_add():
            continue
        if parts[1] not in {f.name for f in fields(OPEN_NODES[parts[0]])}:
            raise HydraException(f"Could not override '{parts[0]}.{parts[1]}'.")


def _check_booleans(cfg: DictConfig, overrides: list[str]) -> None:
    """A boolean is spelled true or false: OmegaConf would also take yes/no/on/off/y/n, which on the command
    line are more often a mistake (`parallel.compile=no` meant as a string, a typo) than a choice."""
    from omegaconf.nodes import BooleanNode

    for override in _parsed(overrides):
        if override.is_delete() or override.is_sweep_override() or isinstance(override.value(), bool):
            continue
        key = override.key_or_group
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node and isinstance(node._get_node(leaf), BooleanNode):
            value = override.value()
            raise OmegaConfBaseException(f"{key}={value}: a boolean is true or false, got {value!r}; write "
                                         f"{key}=true or {key}=false")


def launch(config_name: str, fn: Callable[[DictConfig], Any], lock_run_dir: bool = False) -> None:
    """The body of every `python -m gpt4_lightning.<entry>`: register the config schema and resolvers,
    pre-check the overrides and that the run directory can be made, then run `fn` on the composed config
    as a Hydra app (`conf/<config_name>.yaml`, which names the job), turning user errors into one line.
    `lock_run_dir` (train): one run per run directory (`run_lock`), taken before Hydra writes there; a sweep's
    jobs (whose directories Hydra picks per job) take theirs as each starts."""
    from hydra.core.plugins import Plugins

    from gpt4_lightning.cli.console import quiet_library_noise
    from gpt4_lightning.config import register_configs

    quiet_library_noise()
    register_configs()
    plugins = Plugins.instance()  # scans (and re-executes) Hydra's plugin modules: before importing one of them
    from gpt4_lightning.cli.sweep import CheckedSweeper

    plugins.register(CheckedSweeper)  # the scan misses an editable install's hydra_plugins
    check_renamed_keys(config_name, sys.argv[1:])
    cfg = check_overrides(config_name, sys.argv)
    guard = None
    lock = None
    if cfg is not None:
        try:
            check_writable_dir(str(cfg.hydra.run.dir), "hydra.run.dir",
                               "cannot create the run directory there; choose another run_name or hydra.run.dir")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        if cfg.hydra.output_subdir is not None and is_global_rank_zero():  # Hydra writes into the run directory
            guard = RunDirGuard(cfg)
        if lock_run_dir and is_global_rank_zero():
            lock = run_cli(RunLock.take, Path(str(cfg.hydra.run.dir)).absolute(), requeue_wait_s(),
                           on_error=guard.undo if guard is not None else None)

    @hydra.main(config_path="pkg://gpt4_lightning.conf", config_name=config_name, version_base=None)
    def main(cfg: DictConfig) -> None:
        undo = guard.undo if guard is not None else None
        job_lock = None
        if lock_run_dir and lock is None and is_global_rank_zero():  # a sweep's job: its own directory
            from hydra.core.hydra_config import HydraConfig

            job_lock = run_cli(RunLock.take, Path(HydraConfig.get().runtime.output_dir).absolute(),
                               requeue_wait_s(), on_error=undo)
        try:
            run_cli(fn, cfg, on_error=undo)
        finally:
            if job_lock is not None:
                job_lock.release()

    main()
