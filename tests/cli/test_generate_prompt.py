"""`generate`'s prompt (cli/generate.py): quoted so that Hydra's override parser gives it back verbatim, in
process."""

import pytest


@pytest.mark.parametrize("prompt", ["def fib(n):", "it's", "a\\b", "end\\", 'say "hi"', "x='1'", "a\\'b", ""])
def test_prompt_is_passed_through_hydra_verbatim(prompt):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gpt4_lightning.cli.generate import quote_prompt

    (arg,) = quote_prompt([f"prompt={prompt}"])
    assert OverridesParser.create().parse_override(arg).value() == prompt
