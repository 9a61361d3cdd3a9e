"""Fixtures of the CLI tests (a pytest plugin: test modules name it in ``pytest_plugins``).

``prefix`` (a fresh remote folder) and ``server`` come from ``server_fixtures``, loaded for every test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Cli, isolated_env


@pytest.fixture
def cli(server, tmp_path: Path) -> Cli:
    """The CLI against the module's server, with a private cache."""
    return Cli(server.address, tmp_path, isolated_env(tmp_path))
