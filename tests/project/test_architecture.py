"""The architecture contract (pyproject.toml `[tool.importlinter]`): `lint-imports` keeps it on the package, fails it
on a copy with an upward import injected (model/ importing training/, data/ importing cli/, streaming importing
preparation), no import cycle among the package's modules (function-level imports included, read with grimp), and
conf/train.yaml holds no defaults of its own (they live in the schema)."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

from tests.helpers.paths import REPO

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package found under `root` (its pyproject.toml), without the on-disk cache."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_the_contract():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("model/config.py", "    from gpt4_lightning.training import module  # injected\n", "layers: entry points"),
    ("data/shards.py", "    import gpt4_lightning.cli.launch  # injected\n", "layers: entry points"),
    ("data/stream/windows.py", "    from gpt4_lightning.data.prepare import corpus  # injected\n", "data: preparing"),
], ids=["model->training", "data->cli", "stream->prepare"])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, contract):
    """The injected import sits inside a function, where a top-of-file check would not see it."""
    shutil.copytree(REPO / "gpt4_lightning", tmp_path / "gpt4_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "hydra_plugins", tmp_path / "hydra_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "gpt4_lightning" / module
    target.write_text(target.read_text() + "\n\ndef _injected() -> None:\n" + line)
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = [row for row in proc.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), proc.stdout[-3000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_among_the_modules():
    graph = grimp.build_graph("gpt4_lightning", "hydra_plugins", include_external_packages=False)
    # a package's __init__ importing its own modules is not a cycle of the code
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith(module + "."):
                graph.remove_import(importer=module, imported=imported)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_train_yaml_holds_no_defaults_of_its_own():
    """Every default of `train` is the schema's (config/schema.py and the groups' dataclasses): the YAML holds the
    defaults list and Hydra's settings only, so there is no second copy to drift."""
    config = yaml.safe_load((REPO / "conf" / "train.yaml").read_text())
    assert set(config) == {"defaults", "hydra"}
