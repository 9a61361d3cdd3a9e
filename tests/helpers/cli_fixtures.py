"""Fixtures of the CLI tests (a pytest plugin: test modules name it in ``pytest_plugins``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cli_helpers import Cli, isolated_env


@pytest.fixture
def cli(server, tmp_path: Path) -> Cli:
    """The CLI against the module's server, with a private cache."""
    return Cli(server.address, tmp_path, isolated_env(tmp_path))


@pytest.fixture
def prefix() -> str:
    """A fresh remote folder, so tests sharing a server never see each other's files."""
    return f"cli-{uuid.uuid4().hex[:10]}/"
