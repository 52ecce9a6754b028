"""Where the tests find the repository's files (bench/, launch/, the Dockerfile, pyproject.toml)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
