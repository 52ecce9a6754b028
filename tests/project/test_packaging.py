"""What a wheel of the package carries (pyproject.toml's package list against the folders on disk)."""

from tests.helpers.paths import REPO


def test_every_subpackage_is_installed():
    """pyproject lists the packages a wheel carries: a folder missing there imports in an editable install and
    fails in a wheel."""
    import tomllib

    root = REPO
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for top in ("gpt4_lightning", "hydra_plugins")
             for p in (root / top).rglob("__init__.py")} | {"gpt4_lightning.conf"}
    assert listed == found
