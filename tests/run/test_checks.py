"""The trainer checks (run/checks.py) against Lightning itself, in process."""


def test_precision_names_are_lightnings():
    """check_trainer writes Lightning's precision names out (importing them loads all of Lightning)."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from gpt4_lightning.run.checks import LIGHTNING_PRECISIONS

    assert set(LIGHTNING_PRECISIONS) == {*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)}
