"""The package layout keeps its promises: the model is plain torch, the library's files stay under 400 lines (an AST
scan of gpt4_lightning/)."""

import ast
from pathlib import Path

import gpt4_lightning

PACKAGE = Path(gpt4_lightning.__file__).parent
FORBIDDEN_IN_MODEL = ("lightning", "torch.distributed", "hydra", "omegaconf", "gpt4_lightning.data")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its package (absolute names)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_model_imports_no_infrastructure():
    offenders = {}
    for path in sorted((PACKAGE / "model").glob("*.py")):
        bad = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in
                                                                 FORBIDDEN_IN_MODEL))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_import_scan_sees_relative_imports(tmp_path):
    """The scan resolves `from ..data import x` inside model/ (else the test above could not fail)."""
    probe = PACKAGE / "model" / "_probe_for_test.py"
    probe.write_text("from ..data.shards import Manifest\nimport torch.distributed as dist\n")
    try:
        found = imported_modules(probe)
    finally:
        probe.unlink()
    assert "gpt4_lightning.data.shards" in found and "torch.distributed" in found


def test_no_library_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
